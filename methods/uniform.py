"""Uniform (affine) K-level quantization: the grid and round-to-nearest, shared by methods.

A b-bit budget pays for K = 2**b levels (``Budget.levels``; K = 3 at log2 3 = 1.58 bits). Two
ranges, per tensor or per output channel c (axis 0):

* ``minmax``     ``scale_c = (max w - min w) / (K - 1)``, ``zero_c = -min w / scale_c``,
                 codes 0 .. K - 1 (K levels spanning [min w, max w]);
* ``symmetric``  K odd, ``scale_c = max|w| / ((K - 1) / 2)``, ``zero_c = (K - 1) / 2``,
                 codes 0 .. K - 1 (K levels, symmetric, 0 exactly representable).

Round to nearest: ``code = clamp(round(w / scale + zero), 0, K - 1)``; ``w_hat = scale * (code - zero)``.
The record stores the codes at what K levels cost: log2 K bits when K is a power of two, base-K
packing otherwise (:func:`quantbench.format.code_width`).
"""

from __future__ import annotations

from typing import Literal

import torch

from quantbench.format import AffineGrid, QuantizedTensor, code_width

Scheme = Literal["minmax", "symmetric"]


def scheme_allows(levels: int, scheme: Scheme) -> bool:
    """Whether ``scheme`` has a K-level grid: minmax any K >= 2, symmetric an odd K >= 3."""
    return levels >= 2 and (scheme == "minmax" or levels % 2 == 1)


def grid_parameters(w: torch.Tensor, levels: int, scheme: Scheme = "minmax", per_channel: bool = False
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, zero)`` of the K-level grid (module docstring), one per channel, in ``w``'s dtype and device."""
    if not scheme_allows(levels, scheme):
        raise ValueError(f"the {scheme} grid has no {levels}-level form (symmetric needs an odd K >= 3, minmax K >= 2)")
    flat = w.detach().reshape(w.shape[0] if per_channel else 1, -1)
    if scheme == "minmax":
        lo, hi = torch.aminmax(flat, dim=1)
        scale = (hi - lo) / (levels - 1)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        return scale, -lo / scale
    half = (levels - 1) // 2
    scale = flat.abs().amax(dim=1) / half
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return scale, torch.full_like(scale, float(half))


def nearest_code(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, qmax: int) -> torch.Tensor:
    """``clamp(round(w / scale_c + zero_c), 0, qmax)`` with one (scale, zero) per channel (axis 0) or one in all."""
    shape = (scale.numel(),) + (1,) * (w.dim() - 1) if w.dim() else ()
    return torch.div(w, scale.reshape(shape)).add_(zero.reshape(shape)).round_().clamp_(0, qmax)


def uniform_grid(w: torch.Tensor, levels: int, scheme: Scheme = "minmax", per_channel: bool = False,
                 float_dtype: str = "float32") -> AffineGrid:
    """The K-level grid for ``w`` (see module docstring), computed in float64, rounded to its storage precision."""
    scale, zero = grid_parameters(w.detach().double(), levels, scheme, per_channel)
    grid = AffineGrid(scale.cpu().numpy(), zero.cpu().numpy())
    grid.round_to_storage(float_dtype)
    return grid


def round_to_grid(w: torch.Tensor, grid: AffineGrid, qmax: int) -> torch.Tensor:
    """Nearest code on ``grid`` for every element of ``w`` (int64, same shape), in float64."""
    scale, zero = (torch.from_numpy(v).to(w.device) for v in (grid.scale, grid.zero))
    return nearest_code(w.detach().double(), scale, zero, qmax).long()


def quantize_uniform(w: torch.Tensor, levels: int, scheme: Scheme = "minmax", per_channel: bool = False,
                     float_dtype: str = "float32") -> QuantizedTensor:
    """Round-to-nearest quantization of ``w`` to its K-level uniform grid, as a format record (host, float64)."""
    grid = uniform_grid(w, levels, scheme, per_channel, float_dtype)
    codes = round_to_grid(w, grid, levels - 1)
    return QuantizedTensor(tuple(w.shape), codes.cpu().numpy(), grid, float_dtype=float_dtype, **code_width(levels))


@torch.no_grad()
def fake_quantize_uniform(w: torch.Tensor, levels: int, scheme: Scheme = "minmax", per_channel: bool = False
                          ) -> torch.Tensor:
    """``quantize_uniform(w).dequantize()`` for training: ``scale_c (code − zero_c)`` computed on ``w``'s
    device in ``w``'s dtype, no gradient (wrap it in the STE). It equals the record's values up to the
    rounding of that dtype (a code can differ only where ``w / scale + zero`` is within an ulp of a tie)."""
    scale, zero = grid_parameters(w, levels, scheme, per_channel)
    shape = (scale.numel(),) + (1,) * (w.dim() - 1)
    return nearest_code(w, scale, zero, levels - 1).sub_(zero.reshape(shape)).mul_(scale.reshape(shape))
