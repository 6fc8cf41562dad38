"""GPTQ (OPTQ): post-training quantization with second-order error feedback (Frantar, Ashkboos,
Hoefler & Alistarh, ICLR 2023, arXiv 2210.17323).

Layers are quantized in forward order; layer ℓ's input X̃ is its input in the network whose
earlier layers are already quantized (the calibration rows, as GPFQ's sequential mode). Per
layer, with the K-level grid of :mod:`quantbench.methods.uniform` fixed from the original weights (RTN's
grid: per tensor or per output channel, minmax or symmetric), and all neurons (rows of W) at once:

    H = 2 X̃ᵀX̃ (accumulated over calibration batches),  dead inputs (H_jj = 0): H_jj = 1, W_:j = 0,
    H += λ · mean(diag H) · I                                           (dampening, ``damp`` = λ)
    for j = 1..N (or in order of decreasing H_jj with ``act_order``):
        q_j = Q(w_j),   e_j = (w_j − q_j) / [H⁻¹]_jj,   w_k −= e_j [H⁻¹]_jk  for k > j,
        H⁻¹ ← H⁻¹ − H⁻¹_:j H⁻¹_j: / [H⁻¹]_jj                              (j leaves the problem)

The successive H⁻¹ rows are those of the upper Cholesky factor U of H⁻¹ (U_jk = [H⁻¹_j]_jk /
sqrt([H⁻¹_j]_jj)), so the loop uses U: ``e_j = (w_j − q_j) / U_jj``, ``w_k −= e_j U_jk``; and the
updates of columns past a block of B columns are applied lazily, once per block:
``W[:, rest] −= E[:, blk] U[blk, rest]``. Biases and other parameters stay as they are.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from quantbench.format import AffineGrid, CompressedModel, QuantizedTensor
from quantbench.method import Budget, Method, Progress, RunContext, compressible, plain
from quantbench.methods import ptq
from quantbench.methods.rtn import RTN
from quantbench.methods.uniform import Scheme, nearest_code, uniform_grid
from quantbench.registry import register_method


@dataclass
class GPTQParams:
    scheme: Scheme = "minmax"  # the grid, as rtn's: minmax [min w, max w] or symmetric (odd K, 0 on it)
    per_channel: bool = False  # one grid per output channel (axis 0) instead of per tensor
    act_order: bool = False  # quantize the inputs in order of decreasing H_jj (the paper's "act-order")
    damp: float = 0.01  # λ: H += λ · mean(diag H) · I
    calib_samples: int = 1024  # rows of the training split used for calibration (seeded sample)
    calib_batch: int = 256
    block: int = 128  # columns per lazy update


class SingularHessian(ValueError):
    """A layer's dampened H is not positive definite (its message names the layer)."""


def gptq_layer(w: torch.Tensor, h: torch.Tensor, grid: AffineGrid, qmax: int, damp: float = 0.01,
               block: int = 128, act_order: bool = False, name: str = "layer") -> torch.Tensor:
    """Codes (n_out × N) of GPTQ for the weights ``w`` (n_out × N) given H = 2 X̃ᵀX̃ (N × N); computed
    in float64 on ``w``'s device (module docstring). ``grid`` holds one (scale, zero) or one per row."""
    device = w.device
    w = w.detach().to(torch.float64).clone()
    h = h.to(device, torch.float64).clone()
    n = w.shape[1]
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    perm = torch.argsort(torch.diagonal(h), descending=True, stable=True) if act_order else torch.arange(n)
    perm = perm.to(device)
    w, h = w[:, perm], h[perm][:, perm]
    h += damp * torch.diagonal(h).mean() * torch.eye(n, dtype=torch.float64, device=device)
    chol, info = torch.linalg.cholesky_ex(h)
    if info.item() == 0:
        chol, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(chol), upper=True)
    if info.item() != 0:
        raise SingularHessian(f"{name}: H (from the calibration inputs) is not positive definite after dampening "
                              f"with damp {damp}; raise method_params.gptq.damp or calib_samples")
    u = chol  # upper Cholesky factor of H⁻¹
    scale, zero = (torch.from_numpy(v).to(device) for v in (grid.scale, grid.zero))  # 1 or n_out values
    codes = torch.zeros_like(w, dtype=torch.long)
    for b0 in range(0, n, block):
        b1 = min(n, b0 + block)
        wb = w[:, b0:b1].clone()
        err = torch.zeros_like(wb)
        ub = u[b0:b1, b0:b1]
        for j in range(b1 - b0):
            col = wb[:, j]
            c = nearest_code(col, scale, zero, qmax)
            codes[:, b0 + j] = c.long()
            e = (col - scale * (c - zero)) / ub[j, j]
            wb[:, j:].sub_(e[:, None] * ub[j, j:][None, :])
            err[:, j] = e
        if b1 < n:
            w[:, b1:].sub_(err @ u[b0:b1, b1:])
    out = torch.empty_like(codes)
    out[:, perm] = codes
    return out


@torch.no_grad()
def quantize_network(ref: nn.Module, levels: int, p: GPTQParams, batches: list[torch.Tensor],
                     progress: Progress = plain) -> dict[str, QuantizedTensor]:
    """GPTQ of every linear/conv weight of ``ref`` (not changed), in forward order, each on its
    K-level uniform grid, from the calibration input ``batches``."""
    quant = copy.deepcopy(ref).eval()
    modules = dict(quant.named_modules())
    order = ptq.forward_order(quant, ptq.quantizable_layers(quant, compressible(quant)), batches[0][:1])
    records = {}
    for mod_name in progress(order, desc="GPTQ layers"):
        module = modules[mod_name]
        w = module.weight.detach().double()
        grid = uniform_grid(w, levels, p.scheme, p.per_channel)
        groups = ptq.groups(module)
        flat = w.reshape(w.shape[0], -1)
        n = flat.shape[1]
        hessians = torch.zeros(groups, n, n, dtype=torch.float64, device=w.device)
        for x in ptq.layer_inputs(quant, module, batches):
            for xs in ptq.row_blocks(module, x):
                for gi in range(groups):
                    rows = ptq.layer_rows(module, xs.double(), gi)
                    hessians[gi].addmm_(rows.T, rows, alpha=2.0)
        codes = torch.zeros_like(flat, dtype=torch.long)
        for gi, sl, sub in ptq.group_grids(grid, groups, w.shape[0]):
            where = mod_name if groups == 1 else f"{mod_name} (group {gi})"
            codes[sl] = gptq_layer(flat[sl], hessians[gi], sub, levels - 1, p.damp, p.block, p.act_order, where)
        records[f"{mod_name}.weight" if mod_name else "weight"] = ptq.quantized_weight(module, codes, grid, levels)
    return records


@register_method("gptq")
class GPTQ(Method):
    """GPTQ on RTN's K-level uniform grid; ``act_order: true`` quantizes inputs by decreasing H_jj."""

    family = "post-training"
    Params = GPTQParams
    starts_from = "rtn"  # the same grid, each weight rounded on its own
    calibrated = True

    @classmethod
    def serves(cls, budget: Budget, params: GPTQParams) -> bool:
        """RTN's budgets (:meth:`RTN.serves`): its grid has the same levels."""
        return RTN.serves(budget, params)

    def compress(self, ref: nn.Module, budget: Budget, ctx: RunContext) -> CompressedModel:
        batches = ptq.calibration_batches(ctx, self.params.calib_samples, self.params.calib_batch)
        return ctx.assemble(ref, quantize_network(ref, budget.levels, self.params, batches, ctx.progress))
