"""Uniform (affine) b-bit quantization: the grid and round-to-nearest, shared by methods.

Two ranges, per tensor or per output channel c (axis 0):

* ``minmax``     ``scale_c = (max w - min w) / (2**b - 1)``, ``zero_c = -min w / scale_c``,
                 codes 0 .. 2**b - 1 (2**b levels spanning [min w, max w]);
* ``symmetric``  ``scale_c = max|w| / (2**(b-1) - 1)``, ``zero_c = 2**(b-1) - 1``,
                 codes 0 .. 2**b - 2 (2**b - 1 levels, symmetric, 0 exactly representable).

Round to nearest: ``code = clamp(round(w / scale + zero), 0, qmax)``; ``w_hat = scale * (code - zero)``.
"""

from __future__ import annotations

from typing import Literal

import torch

from quantbench.format import AffineGrid, QuantizedTensor

Scheme = Literal["minmax", "symmetric"]


def max_code(bits: int, scheme: Scheme) -> int:
    return 2**bits - (2 if scheme == "symmetric" else 1)


def uniform_grid(w: torch.Tensor, bits: int, scheme: Scheme = "minmax", per_channel: bool = False,
                 float_dtype: str = "float32") -> AffineGrid:
    """The b-bit grid for ``w`` (see module docstring), rounded to its storage precision."""
    if scheme == "symmetric" and bits < 2:
        raise ValueError("the symmetric grid needs at least 2 bits (2**b - 1 levels)")
    flat = w.detach().double().reshape(w.shape[0] if per_channel else 1, -1)
    if scheme == "minmax":
        lo, hi = flat.min(dim=1).values, flat.max(dim=1).values
        scale = (hi - lo) / (2**bits - 1)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        zero = -lo / scale
    else:
        half = 2 ** (bits - 1) - 1
        scale = flat.abs().max(dim=1).values / half
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        zero = torch.full_like(scale, float(half))
    grid = AffineGrid(scale.cpu().numpy(), zero.cpu().numpy())
    grid.round_to_storage(float_dtype)
    return grid


def round_to_grid(w: torch.Tensor, grid: AffineGrid, qmax: int) -> torch.Tensor:
    """Nearest code on ``grid`` for every element of ``w`` (int64, same shape)."""
    c = grid.channels
    scale = torch.from_numpy(grid.scale).to(w.device).reshape((c,) + (1,) * (w.dim() - 1))
    zero = torch.from_numpy(grid.zero).to(w.device).reshape((c,) + (1,) * (w.dim() - 1))
    return torch.clamp(torch.round(w.detach().double() / scale + zero), 0, qmax).long()


def quantize_uniform(w: torch.Tensor, bits: int, scheme: Scheme = "minmax", per_channel: bool = False,
                     float_dtype: str = "float32") -> QuantizedTensor:
    """Round-to-nearest quantization of ``w`` to its b-bit uniform grid, as a format record."""
    grid = uniform_grid(w, bits, scheme, per_channel, float_dtype)
    codes = round_to_grid(w, grid, max_code(bits, scheme))
    return QuantizedTensor(tuple(w.shape), codes.cpu().numpy(), grid, bits=bits, float_dtype=float_dtype)
