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


def grid_parameters(w: torch.Tensor, bits: int, scheme: Scheme = "minmax", per_channel: bool = False
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, zero)`` of the b-bit grid (module docstring), one per channel, in ``w``'s dtype and device."""
    if scheme == "symmetric" and bits < 2:
        raise ValueError("the symmetric grid needs at least 2 bits (2**b - 1 levels)")
    flat = w.detach().reshape(w.shape[0] if per_channel else 1, -1)
    if scheme == "minmax":
        lo, hi = torch.aminmax(flat, dim=1)
        scale = (hi - lo) / (2**bits - 1)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        return scale, -lo / scale
    half = 2 ** (bits - 1) - 1
    scale = flat.abs().amax(dim=1) / half
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return scale, torch.full_like(scale, float(half))


def nearest_code(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, qmax: int) -> torch.Tensor:
    """``clamp(round(w / scale_c + zero_c), 0, qmax)`` with one (scale, zero) per channel (axis 0) or one in all."""
    shape = (scale.numel(),) + (1,) * (w.dim() - 1) if w.dim() else ()
    return torch.div(w, scale.reshape(shape)).add_(zero.reshape(shape)).round_().clamp_(0, qmax)


def uniform_grid(w: torch.Tensor, bits: int, scheme: Scheme = "minmax", per_channel: bool = False,
                 float_dtype: str = "float32") -> AffineGrid:
    """The b-bit grid for ``w`` (see module docstring), computed in float64, rounded to its storage precision."""
    scale, zero = grid_parameters(w.detach().double(), bits, scheme, per_channel)
    grid = AffineGrid(scale.cpu().numpy(), zero.cpu().numpy())
    grid.round_to_storage(float_dtype)
    return grid


def round_to_grid(w: torch.Tensor, grid: AffineGrid, qmax: int) -> torch.Tensor:
    """Nearest code on ``grid`` for every element of ``w`` (int64, same shape), in float64."""
    scale, zero = (torch.from_numpy(v).to(w.device) for v in (grid.scale, grid.zero))
    return nearest_code(w.detach().double(), scale, zero, qmax).long()


def quantize_uniform(w: torch.Tensor, bits: int, scheme: Scheme = "minmax", per_channel: bool = False,
                     float_dtype: str = "float32") -> QuantizedTensor:
    """Round-to-nearest quantization of ``w`` to its b-bit uniform grid, as a format record (host, float64)."""
    grid = uniform_grid(w, bits, scheme, per_channel, float_dtype)
    codes = round_to_grid(w, grid, max_code(bits, scheme))
    return QuantizedTensor(tuple(w.shape), codes.cpu().numpy(), grid, bits=bits, float_dtype=float_dtype)


@torch.no_grad()
def fake_quantize_uniform(w: torch.Tensor, bits: int, scheme: Scheme = "minmax", per_channel: bool = False
                          ) -> torch.Tensor:
    """``quantize_uniform(w).dequantize()`` for training: ``scale_c (code − zero_c)`` computed on ``w``'s
    device in ``w``'s dtype, no gradient (wrap it in the STE). It equals the record's values up to the
    rounding of that dtype (a code can differ only where ``w / scale + zero`` is within an ulp of a tie)."""
    scale, zero = grid_parameters(w, bits, scheme, per_channel)
    shape = (scale.numel(),) + (1,) * (w.dim() - 1)
    return nearest_code(w, scale, zero, max_code(bits, scheme)).sub_(zero.reshape(shape)).mul_(scale.reshape(shape))
