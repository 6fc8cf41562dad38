"""GPFQ: greedy path-following post-training quantization (Lybrand & Saab; Zhang, Zhou & Saab),
its memoryless baseline MSQ, and stochastic rounding (SPFQ) as an option.

Layers are quantized in forward order. For layer ℓ, X is its input in the unquantized network
and X̃ its input in the network whose earlier layers are already quantized (same calibration
rows). For every neuron w ∈ R^N, with u_0 = 0:

    q_t = Q( ⟨X̃_t, u_{t−1} + w_t X_t⟩ / ‖X̃_t‖² ),   u_t = u_{t−1} + w_t X_t − q_t X̃_t

(‖X̃_t‖ = 0: q_t = Q(w_t)). Memory-bounded form: with G = X̃ᵀX and H = X̃ᵀX̃ (N × N,
accumulated over calibration batches, so memory does not grow with the number of rows),
⟨X̃_t, u_{t−1}⟩ = r_t = Σ_{s<t} G[t,s] w_s − H[t,s] q_s, and

    q_t = Q( (r_t + w_t G[t,t]) / H[t,t] ).

All neurons of a layer are quantized at once (r is an N × n_out matrix). Updates of r are lazy
in blocks of B columns: inside a block r is updated column by column; after the block the
remaining rows get one matrix product, r[rest] += G[rest, blk] W[:, blk]ᵀ − H[rest, blk] Q[:, blk]ᵀ.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from quantbench.format import AffineGrid, CompressedModel, QuantizedTensor
from quantbench.method import Budget, Method, Progress, RunContext, compressible, plain
from quantbench.methods import ptq
from quantbench.methods.uniform import round_to_grid
from quantbench.registry import register_method


@dataclass
class GPFQParams:
    scale_factor: float = 1.0  # C: the alphabet's largest level is C · max|w| (per layer or channel)
    per_channel: bool = False  # one alphabet per output channel instead of per layer
    rounding: Literal["nearest", "stochastic"] = "nearest"  # stochastic: SPFQ
    calib_samples: int = 1024  # rows of the training split used for calibration (seeded sample)
    calib_batch: int = 256
    block: int = 128  # columns per lazy update of r


MAX_LEVELS = 256


def alphabet(w: torch.Tensor, levels: int, scale_factor: float, per_channel: bool) -> tuple[AffineGrid, int]:
    """The authors' alphabet: K equispaced levels from −C·max|w| to C·max|w| (``C · linspace(−1, 1, K)``),
    i.e. ``δ (code − (K−1)/2)`` with δ = 2C·max|w| / (K − 1), codes 0..K−1. An odd K holds 0
    (K = 3: ternary {−δ, 0, δ}), an even K does not. Returns the grid and the largest code."""
    m = w.detach().double().abs().reshape(w.shape[0] if per_channel else 1, -1).max(dim=1).values.cpu()
    top = scale_factor * torch.where(m > 0, m, torch.ones_like(m))
    half = (levels - 1) / 2
    grid = AffineGrid((top / half).numpy(), np.full(m.numel(), half))
    grid.round_to_storage("float32")
    return grid, levels - 1


def gpfq_layer(w: torch.Tensor, g: torch.Tensor, h: torch.Tensor, grid: AffineGrid, qmax: int,
               rounding: str = "nearest", gen: torch.Generator | None = None, block: int = 128) -> torch.Tensor:
    """Codes (n_out × N) of GPFQ for the weights ``w`` (n_out × N) given G = X̃ᵀX and H = X̃ᵀX̃.

    Runs on the device of ``w``; ``gen`` (stochastic rounding) is a CPU generator, so the draws
    do not depend on the device."""
    device = w.device
    wt = w.detach().double().T.contiguous()  # row t = the t-th weight of every neuron
    n, n_out = wt.shape
    g, h = g.to(device, torch.float64), h.to(device, torch.float64)
    gt, ht = g.T.contiguous(), h.T.contiguous()  # row t of gt = column t of G
    diag_g, diag_h = torch.diagonal(g), torch.diagonal(h)
    has_h = (diag_h > 0).tolist()  # host-side, so the loop does not wait on the device per weight
    r = torch.zeros(n, n_out, dtype=torch.float64, device=device)  # r[t] = ⟨X̃_t, u_{t−1}⟩ for every neuron
    qt = torch.zeros(n, n_out, dtype=torch.float64, device=device)
    codes = torch.zeros(n, n_out, dtype=torch.long, device=device)
    scale = torch.from_numpy(grid.scale).to(device)  # one value, or one per neuron
    zero = torch.from_numpy(grid.zero).to(device)
    for b0 in range(0, n, block):
        b1 = min(n, b0 + block)
        for t in range(b0, b1):
            v = (r[t] + wt[t] * diag_g[t]) / diag_h[t] if has_h[t] else wt[t]
            if rounding == "stochastic":
                pos = v / scale + zero
                low = torch.floor(pos)
                draw = torch.rand(n_out, generator=gen, dtype=torch.float64).to(device)
                c = low + (draw < pos - low).double()
            else:
                c = torch.round(v / scale + zero)
            c = torch.clamp(c, 0, qmax)
            codes[t] = c.long()
            qt[t] = scale * (c - zero)
            if t + 1 < b1:
                r[t + 1:b1].addr_(gt[t, t + 1:b1], wt[t]).addr_(ht[t, t + 1:b1], qt[t], alpha=-1)
        if b1 < n:
            r[b1:] += g[b1:, b0:b1] @ wt[b0:b1] - h[b1:, b0:b1] @ qt[b0:b1]
    return codes.T.contiguous()


@torch.no_grad()
def quantize_network(ref: nn.Module, levels: int, p: GPFQParams, batches: list[torch.Tensor], gen: torch.Generator,
                     memoryless: bool, progress: Progress = plain) -> dict[str, QuantizedTensor]:
    """GPFQ (or MSQ when ``memoryless``) of every linear/conv weight of ``ref`` (not changed), in
    forward order, from the calibration input ``batches`` (MSQ: none needed); ``gen`` draws SPFQ's
    stochastic rounding."""
    original = copy.deepcopy(ref).eval()
    quant = copy.deepcopy(ref).eval()
    modules, orig_modules = dict(quant.named_modules()), dict(original.named_modules())
    layers = ptq.quantizable_layers(quant, compressible(quant))
    order = ptq.forward_order(quant, layers, batches[0][:1]) if batches else layers  # MSQ needs no data
    records = {}
    for mod_name in progress(order, desc="GPFQ layers" if not memoryless else "MSQ layers"):
        module = modules[mod_name]
        w = module.weight.detach().double()
        grid, qmax = alphabet(w, levels, p.scale_factor, p.per_channel)
        if memoryless:
            codes = round_to_grid(w, grid, qmax)
        else:
            groups = ptq.groups(module)
            flat = w.reshape(w.shape[0], -1)
            codes = torch.zeros_like(flat, dtype=torch.long)
            n = flat.shape[1]
            g_mats = torch.zeros(groups, n, n, dtype=torch.float64, device=w.device)  # one pass serves every group
            h_mats = torch.zeros(groups, n, n, dtype=torch.float64, device=w.device)
            inputs = zip(ptq.layer_inputs(original, orig_modules[mod_name], batches),
                         ptq.layer_inputs(quant, module, batches), strict=True)
            for x, xt in inputs:
                for xs, xts in zip(ptq.row_blocks(module, x), ptq.row_blocks(module, xt), strict=True):
                    for gi in range(groups):
                        rows = ptq.layer_rows(module, xs.double(), gi)
                        rows_t = ptq.layer_rows(module, xts.double(), gi)
                        g_mats[gi] += rows_t.T @ rows
                        h_mats[gi] += rows_t.T @ rows_t
            for gi, sl, sub in ptq.group_grids(grid, groups, w.shape[0]):
                codes[sl] = gpfq_layer(flat[sl], g_mats[gi], h_mats[gi], sub, qmax, p.rounding, gen, p.block)
        records[f"{mod_name}.weight" if mod_name else "weight"] = ptq.quantized_weight(module, codes, grid, levels)
    return records


def _from_context(ref: nn.Module, budget: Budget, p: GPFQParams, ctx: RunContext, memoryless: bool
                  ) -> dict[str, QuantizedTensor]:
    """The harness's call: the cell's calibration draw, its generator, its progress bars."""
    batches = ptq.calibration_batches(ctx, p.calib_samples, p.calib_batch)
    return quantize_network(ref, budget.levels, p, batches, ctx.generator(1), memoryless, ctx.progress)


class _Alphabet(Method):
    family = "post-training"
    Params = GPFQParams

    @classmethod
    def serves(cls, budget: Budget, params: GPFQParams) -> bool:
        """A b-bit budget is K = 2^b levels (``Budget.levels``: 3 at 1.58, the ternary alphabet), up to 256."""
        return budget.levels is not None and budget.levels <= MAX_LEVELS


@register_method("gpfq")
class GPFQ(_Alphabet):
    """Greedy path-following quantization; ``rounding: stochastic`` gives SPFQ."""

    starts_from = "msq"  # the same alphabet, each weight rounded on its own
    calibrated = True

    def compress(self, ref: nn.Module, budget: Budget, ctx: RunContext) -> CompressedModel:
        return ctx.assemble(ref, _from_context(ref, budget, self.params, ctx, memoryless=False))


@register_method("msq")
class MSQ(_Alphabet):
    """Memoryless scalar quantization: every weight rounded to the GPFQ alphabet."""

    def compress(self, ref: nn.Module, budget: Budget, ctx: RunContext) -> CompressedModel:
        return ctx.assemble(ref, _from_context(ref, budget, self.params, ctx, memoryless=True))
