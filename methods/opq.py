"""OPQ: one-shot pruning-quantization (Hu, Peng, Zhu, Aly & Lin, AAAI 2021), our derivation.

Model (derivation and assumptions in docs/methods/opq.md). Output channel c of layer ℓ has a
Laplace scale b_c = mean |w_c| (its maximum-likelihood estimate); normalised weights
v = w / b_c ~ Laplace(0, 1). A layer keeps the fraction p of largest |v| (t = −ln p is the
threshold under the model) and quantizes survivors with one codebook shared by all its
channels: ±(t + (i − ½)Δ), i = 1..2^(k−1), k bits per survivor. Since |v| − t | |v| > t ~ Exp(1)
(memorylessness), the expected squared error per weight of normalised units is

    E(p, k) = [2 − p (t² + 2t + 2)]  +  p · d*(k),      d*(k) = min_Δ D(Δ, 2^(k−1)),

D(Δ, M) = Σ_{i=1..M} ∫_{(i−1)Δ}^{iΔ} (e − (i − ½)Δ)² e^{−e} de + ∫_{MΔ}^∞ (e − (M − ½)Δ)² e^{−e} de
(closed form below), and in weight units the layer's error is Σ_c n_c b_c² · E(p, k).
Bits of a layer are the packed format's: mask min(N, 32 + kept ⌈log2 N⌉) (none when nothing is
pruned), kept · k code bits, 2^k codebook floats and C channel scales at 32 bits.
The allocation minimises Σ_ℓ error_ℓ s.t. Σ_ℓ bits_ℓ <= budget · Σ_ℓ N_ℓ: for a multiplier μ
each layer independently picks (k, p) minimising error_ℓ + μ bits_ℓ; μ is found by bisection.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from quantbench.errors import ConfigError
from quantbench.format import COUNT_BITS, Codebook, CompressedModel, QuantizedTensor
from quantbench.method import Budget, Method, QuantizedForward, RunContext, check_bits, check_model, compressible
from quantbench.registry import register_method
from quantbench.training.loop import Schedule, fit_trainer, straight_through

MAX_BITS = 10
P_GRID = np.unique(np.concatenate([np.geomspace(1e-3, 1.0, 600), np.linspace(0.01, 1.0, 400)]))


def _cell_integral(a: np.ndarray, width: float, centre: np.ndarray) -> np.ndarray:
    """∫_a^{a+width} (e − centre)² e^{−e} de, from the antiderivative −e^{−e}((e−c)² + 2(e−c) + 2)."""
    def anti(e):
        d = e - centre
        return -np.exp(-e) * (d * d + 2 * d + 2)
    return anti(a + width) - anti(a)


def survivor_distortion(step: float, levels: int) -> float:
    """D(Δ, M): expected squared error of quantizing e ~ Exp(1) on (i − ½)Δ, i = 1..M (clipped)."""
    i = np.arange(1, levels + 1, dtype=np.float64)
    granular = float(np.sum(_cell_integral((i - 1) * step, step, (i - 0.5) * step)))
    top = levels * step
    overload = math.exp(-top) * (step * step / 4 + step + 2)  # ∫_top^∞ (e − top + Δ/2)² e^{−e}
    return granular + overload


def optimal_step(levels: int) -> tuple[float, float]:
    """argmin_Δ D(Δ, M) and its value (golden-section search; D is unimodal in Δ)."""
    lo, hi = 1e-4, 8.0 / max(1, levels) + 2.0
    phi = (math.sqrt(5) - 1) / 2
    for _ in range(200):
        a, b = hi - phi * (hi - lo), lo + phi * (hi - lo)
        if survivor_distortion(a, levels) < survivor_distortion(b, levels):
            hi = b
        else:
            lo = a
    step = (lo + hi) / 2
    return step, survivor_distortion(step, levels)


_STEPS = {k: optimal_step(2 ** (k - 1)) for k in range(1, MAX_BITS + 1)}


def pruning_error(p: np.ndarray) -> np.ndarray:
    """E[v²; |v| <= t] for v ~ Laplace(0, 1), t = −ln p."""
    t = -np.log(p)
    return 2.0 - p * (t * t + 2 * t + 2)


def expected_error(p: np.ndarray, k: int) -> np.ndarray:
    """E(p, k) per weight in normalised units."""
    return pruning_error(p) + p * _STEPS[k][1]


def layer_bits(numel: int, channels: int, kept: np.ndarray, k: int) -> np.ndarray:
    """Bits of one layer in the packed format (mask, codes, codebook, channel scales)."""
    pos = COUNT_BITS + kept * max(1, math.ceil(math.log2(numel)))
    mask = np.where(kept >= numel, 0, np.minimum(numel, pos))
    return mask + kept * k + 32 * 2**k + 32 * channels


@dataclass
class LayerStats:
    name: str
    numel: int
    channels: int
    weight: float  # Σ_c n_c b_c²: converts normalised error to squared-weight error


@dataclass
class Allocation:
    bits: int  # k, bits per survivor
    keep: float  # p, fraction kept


def _tables(layer: LayerStats) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    kept = np.maximum(1, np.round(P_GRID * layer.numel)).astype(np.int64)
    p = kept / layer.numel
    err = np.stack([layer.weight * expected_error(p, k) for k in range(1, MAX_BITS + 1)])
    bits = np.stack([layer_bits(layer.numel, layer.channels, kept, k) for k in range(1, MAX_BITS + 1)])
    return err, bits.astype(np.float64), p


def allocate(layers: list[LayerStats], budget: float) -> list[Allocation]:
    """Minimise Σ error s.t. Σ bits <= budget · Σ N: per-layer choices for a multiplier μ, bisection on μ."""
    tables = [_tables(layer) for layer in layers]
    total = budget * sum(layer.numel for layer in layers)

    def choose(mu: float) -> tuple[list[tuple[int, int]], float]:
        picks, bits = [], 0.0
        for err, b, _ in tables:
            cost = err + mu * b
            k, j = np.unravel_index(int(np.argmin(cost)), cost.shape)
            picks.append((int(k), int(j)))
            bits += b[k, j]
        return picks, bits

    lo, hi = 0.0, 1.0
    while choose(hi)[1] > total and hi < 1e30:
        hi *= 10
    if choose(hi)[1] > total:
        raise ValueError(f"a {budget}-bit budget is below the smallest OPQ model (side information alone)")
    for _ in range(200):
        mid = math.sqrt(lo * hi) if lo > 0 else hi / 1e6
        if choose(mid)[1] > total:
            lo = mid
        else:
            hi = mid
    picks, used = choose(hi)
    # spend what the discrete choices left: each layer (largest first) takes its lowest-error
    # option whose extra bits fit in the room left
    for i in np.argsort([-layer.numel for layer in layers]):
        err, b, _ = tables[i]
        k, j = picks[i]
        fits = b - b[k, j] <= total - used
        masked = np.where(fits, err, np.inf)
        kk, jj = np.unravel_index(int(np.argmin(masked)), masked.shape)
        if masked[kk, jj] < err[k, j]:
            used += b[kk, jj] - b[k, j]
            picks[i] = (int(kk), int(jj))
    return [Allocation(k + 1, float(tables[i][2][j])) for i, (k, j) in enumerate(picks)]


def uniform_allocation(layers: list[LayerStats], budget: float) -> list[Allocation]:
    """The ablation: the same k and keep fraction in every layer, the best pair within the budget."""
    total = budget * sum(layer.numel for layer in layers)
    best, best_err = None, math.inf
    for k in range(1, MAX_BITS + 1):
        for p in P_GRID[::-1]:
            kept = [max(1, round(p * layer.numel)) for layer in layers]
            pairs = list(zip(layers, kept, strict=True))
            bits = sum(float(layer_bits(la.numel, la.channels, np.array(n), k)) for la, n in pairs)
            if bits <= total:
                err = sum(la.weight * float(expected_error(np.array(n / la.numel), k)) for la, n in pairs)
                if err < best_err:
                    best, best_err = (k, p), err
                break
    if best is None:
        raise ValueError(f"a {budget}-bit budget is below the smallest uniform pruning-quantization model")
    return [Allocation(best[0], best[1]) for _ in layers]


# --------------------------------------------------------------------------- applying an allocation
def channel_scales(w: torch.Tensor) -> torch.Tensor:
    """b_c = mean |w_c| over each output channel (Laplace MLE); 1 for an all-zero channel."""
    b = w.detach().abs().reshape(w.shape[0], -1).mean(dim=1).double()
    return torch.where(b > 0, b, torch.ones_like(b))


def shared_codebook(alloc: Allocation) -> np.ndarray:
    """±(t + (i − ½)Δ*(k)), i = 1..2^(k−1), t = −ln p: the layer's codebook in normalised units."""
    t = -math.log(alloc.keep) if alloc.keep < 1 else 0.0
    half = t + (np.arange(1, 2 ** (alloc.bits - 1) + 1) - 0.5) * _STEPS[alloc.bits][0]
    return np.concatenate([-half[::-1], half])


def make_record(w: torch.Tensor, alloc: Allocation, mask: np.ndarray | None = None,
                scales: torch.Tensor | None = None) -> QuantizedTensor:
    """Prune (the kept fraction by normalised magnitude, unless ``mask`` is given) and quantize
    survivors to the shared codebook; per-channel scales b_c in the record."""
    scales = (channel_scales(w) if scales is None else scales).detach().double().cpu()
    v = (w.detach().double().cpu().reshape(w.shape[0], -1) / scales[:, None]).reshape(-1).numpy()
    if mask is None:
        kept = max(1, round(alloc.keep * v.size))
        order = np.argsort(-np.abs(v), kind="stable")
        mask = np.zeros(v.size, dtype=bool)
        mask[order[:kept]] = True
    values = shared_codebook(alloc)
    mid = (values[1:] + values[:-1]) / 2
    codes = np.searchsorted(mid, v[mask])
    return QuantizedTensor(tuple(w.shape), codes, Codebook(values), bits=alloc.bits,
                           mask=None if mask.all() else mask, channel_scale=scales.numpy())


def layer_stats(model: nn.Module) -> list[LayerStats]:
    params = dict(model.named_parameters())
    out = []
    for n in compressible(model):
        w = params[n].detach()
        b = channel_scales(w)
        per_channel = w[0].numel()
        out.append(LayerStats(n, w.numel(), w.shape[0], float((b**2).sum()) * per_channel))
    return out


class OPQTraining(QuantizedForward):
    """OPQ on ``model`` at ``bits`` per weight: the analytic allocation (``uniform``: the same k and
    keep fraction in every layer, the ablation), then, if trained, finetuning with masks, codebooks
    and channel scales fixed: the forward is the nearest codebook value times b_c, 0 where pruned,
    ∂/∂w := 1 (STE) on the kept weights. Build it on the model's device; :meth:`records` prune and
    quantize the current weights with the fixed masks (untrained: the one-shot result)."""

    def __init__(self, model: nn.Module, bits: float, uniform: bool = False) -> None:
        check_model("OPQ", model)
        budget = check_bits("OPQ", bits)
        if not serves(budget):
            raise ConfigError(f"OPQ(bits={bits!r}): expected bits per weight in [{MIN_BITS}, {MAX_BITS}]")
        super().__init__(model)
        stats = layer_stats(model)
        allocs = (uniform_allocation if uniform else allocate)(stats, budget.bits)
        self.allocations = {s.name: a for s, a in zip(stats, allocs, strict=True)}
        self.scales = {n: channel_scales(self._params[n]) for n in self.names}
        masks = {n: make_record(self._params[n], a, scales=self.scales[n]).mask for n, a in self.allocations.items()}
        self.masks = {n: np.ones(self._params[n].numel(), bool) if m is None else m for n, m in masks.items()}
        self._fixed: dict[str, tuple[torch.Tensor, ...]] = {}  # built once, on the weights' device and dtype
        for n in self.names:
            w = self._params[n]
            values = torch.as_tensor(shared_codebook(self.allocations[n])).to(w)
            self._fixed[n] = (values, (values[1:] + values[:-1]) / 2, self.scales[n].to(w)[:, None],
                              torch.as_tensor(self.masks[n]).reshape(w.shape).to(w))

    def quantize(self, name: str, w: torch.Tensor) -> torch.Tensor:
        """make_record's projection, on the weights' device: nearest codebook value times b_c, 0 where pruned."""
        values, mid, b, keep = self._fixed[name]
        v = (w.detach().reshape(w.shape[0], -1) / b).contiguous()
        q = (values[torch.searchsorted(mid, v)] * b).reshape(w.shape)
        return straight_through(w, q) * keep

    def records(self) -> dict[str, QuantizedTensor]:
        return {n: make_record(self._params[n], self.allocations[n], self.masks[n], self.scales[n])
                for n in self.names}


MIN_BITS = 0.05


def serves(budget: Budget) -> bool:
    """Budgets OPQ's allocation is searched over (a budget below its side information is refused by it)."""
    return MIN_BITS <= budget.bits <= MAX_BITS


@dataclass
class OPQParams(Schedule):
    """The finetuning schedule (opq, prune_quant_uniform)."""

    optimizer: Literal["sgd", "adam", "adamw"] = "adam"
    lr: float = 1e-3


class _OPQBase(Method):
    family = "OPQ"
    Params = OPQParams
    finetuned = True
    trains = True
    uniform = False

    @classmethod
    def serves(cls, budget: Budget, params: OPQParams) -> bool:
        return serves(budget)

    def compress(self, ref: nn.Module, budget: Budget, ctx: RunContext) -> CompressedModel:
        trainer = OPQTraining(copy.deepcopy(ref).to(ctx.device), budget.bits, self.uniform)
        for name, a in trainer.allocations.items():
            ctx.log_metric(f"opq/bits/{name}", a.bits, 0)
            ctx.log_metric(f"opq/keep/{name}", a.keep, 0)
        if self.finetuned:
            fit_trainer(trainer, ctx, self.params, "opq", desc="OPQ finetune", forward=trainer)
        return ctx.as_cell(trainer.finalize())


@register_method("opq")
class OPQ(_OPQBase):
    """Analytic one-shot allocation (pruning ratio and bits per layer), then finetuning."""

    starts_from = "opq_oneshot"


@register_method("opq_oneshot")
class OPQOneShot(_OPQBase):
    """The analytic allocation alone, no finetuning."""

    finetuned = False
    trains = False


@register_method("prune_quant_uniform")
class PruneQuantUniform(_OPQBase):
    """Ablation: the same pruning ratio and bits in every layer (same budget, same finetuning)."""

    uniform = True
