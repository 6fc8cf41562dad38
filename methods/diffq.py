"""DiffQ (Défossez, Adi & Synnaeve): differentiable quantization with pseudo-quantization noise
and learned per-group bit widths, with a budget controller. (The paper's baselines QAT and LSQ:
:mod:`quantbench.methods.qat`.)

Each quantized tensor w is split into groups of g consecutive weights (g = 0: one group); group
j has a bit width b_j = b_min + σ(ℓ_j)(b_max − b_min), logits ℓ initialised at ``init_bits``.

* training forward:  w̃ = w + Δ_j ε,  Δ_j = (max w − min w) / (2^b_j − 1) (range over the tensor),
  ε ~ U[−½, ½] (the paper) or N(0, ¼) (the authors' code);
* eval forward and the artifact: true quantization with b_j rounded, on the tensor's range:
  code = round((w − min w)/(max w − min w) · (2^b_j − 1)), w = min w + code (max w − min w)/(2^b_j − 1);
* loss = task loss + λ · size, size in MB, differentiable in b:
  size = Σ_j n_j b_j + 4 · #groups + 2 · 32 (per quantized tensor: codes, group widths, range)
         + 32 · (every weight kept dense), / (8 · 2^20) — the packed format's own accounting;
* budget controller (ours): after every step a dual update λ ← λ · exp(η (bpw − target) / target),
  with bpw the expected bits per quantized weight (side information included); and at the end
  of every epoch a projection onto the budget: one common shift δ of all logits, found by
  bisection, the largest with bpw(round(b(ℓ + δ))) <= target. The shift keeps the relative
  allocation DiffQ learned, and the last one makes the artifact meet the budget (with rounded
  widths). ``budget_control: false`` keeps λ fixed at ``size_penalty`` and never shifts;
* final widths (ours): the last ⌊``final_fraction`` · epochs + ½⌋ epochs train at the widths
  frozen after the last projection, without the size term; their forward is ``quantized``, the
  eval forward ŵ with the straight-through estimator (∂ŵ/∂w := 1), or ``noise`` (w̃ at the frozen
  widths). At 2 bpw pseudo-quantization noise does not prepare the weights for rounding — the
  authors' package loses as much to its own QAT (docs/methods/diffq.md) — so ``diffq`` learns
  the allocation with noise and finishes at it quantized; ``diffq_fixed`` is the paper's DiffQ
  (fixed λ, noise to the end).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn
from torch.nn.utils import parametrize

from quantbench.format import GROUP_WIDTH_BITS, CompressedModel, QuantizedTensor, RangeGrid
from quantbench.method import (
    DATA_ORDER,
    GENERATOR,
    Budget,
    ConfigError,
    Method,
    RunContext,
    StepCurve,
    Trainer,
    assemble,
    check_bits,
    check_model,
    compressible,
    derive_seed,
)
from quantbench.registry import register_method
from quantbench.training.loop import Schedule, make_optimizer, make_schedule, straight_through, train_epoch

RANGE_BITS = 2 * 32  # min and max of the tensor, fp32


def range_codes(flat: torch.Tensor, lo: torch.Tensor | float, hi: torch.Tensor | float, levels: torch.Tensor
                ) -> torch.Tensor:
    """``min(max(round((w − lo) / (hi − lo) · L), 0), L)`` with ``L = 2^b − 1`` per element (a float tensor)."""
    span = torch.where(torch.as_tensor(hi > lo), torch.as_tensor(hi - lo, dtype=flat.dtype), 1.0)
    return torch.minimum(torch.round((flat - lo) / span * levels).clamp(min=0), levels)


def group_levels(bits: torch.Tensor, group_size: int, numel: int, like: torch.Tensor) -> torch.Tensor:
    """``2^b_j − 1`` of every element's group j, in ``like``'s dtype and device."""
    return 2.0 ** torch.repeat_interleave(bits.to(like), group_size)[:numel] - 1


def range_record(w: torch.Tensor, bits: torch.Tensor, group_size: int) -> QuantizedTensor:
    """True quantization of ``w`` on its [min, max] range with integer per-group widths ``bits`` (host, float64)."""
    flat = w.detach().reshape(-1).double().cpu()
    grid = RangeGrid(float(flat.min()), float(flat.max()))
    grid.round_to_storage("float32")
    codes = range_codes(flat, grid.lo, grid.hi, group_levels(bits, group_size, flat.numel(), flat))
    return QuantizedTensor(tuple(w.shape), codes.long().numpy(), grid, group_size=group_size,
                           group_bits=bits.long().cpu().numpy())


@torch.no_grad()
def range_dequantize(w: torch.Tensor, bits: torch.Tensor, group_size: int) -> torch.Tensor:
    """``range_record(w, bits, g).dequantize()`` on ``w``'s device in ``w``'s dtype:
    ``lo + code (hi − lo) / (2^b − 1)`` (equal up to that dtype's rounding)."""
    flat = w.reshape(-1)
    lo, hi = torch.aminmax(flat)
    levels = group_levels(bits, group_size, flat.numel(), flat)
    return (lo + range_codes(flat, lo, hi, levels) * ((hi - lo) / levels)).view_as(w)


def _groups(x: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` (flat) as full groups of ``group_size`` (rows) and the shorter last group (one row, maybe empty)."""
    full = x.numel() // group_size * group_size
    return x[:full].view(-1, group_size), x[full:].view(1, -1)


def add_per_group(x: torch.Tensor, y: torch.Tensor, values: torch.Tensor, group_size: int) -> torch.Tensor:
    """``x_i + y_i · values_j`` with j the group of element i (flat ``x`` and ``y``, one value per group),
    in one pass."""
    out = torch.empty_like(x)
    (x_full, x_last), (y_full, y_last), (o_full, o_last) = (_groups(t, group_size) for t in (x, y, out))
    torch.addcmul(x_full, y_full, values[: x_full.shape[0], None], out=o_full)
    torch.addcmul(x_last, y_last, values[x_full.shape[0]:, None], out=o_last)
    return out


def group_sums(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """``Σ_{i ∈ j} x_i`` for every group j."""
    full, last = _groups(x, group_size)
    return torch.cat([full.sum(dim=1), last.sum(dim=1)]) if last.numel() else full.sum(dim=1)


def arg_extremes(flat: torch.Tensor, row: int = 1024, direct_below: int = 1 << 16) -> torch.Tensor:
    """``[argmin, argmax]`` of a flat tensor, on its device. From ``direct_below`` elements on, reduced
    over rows of ``row`` elements first, then over the rows' extremes (the CPU's flat argmin/argmax is
    several times slower than that on millions of weights; below, the extra operations cost more)."""
    full = flat.numel() // row * row
    if flat.numel() < direct_below or full == 0:
        return torch.stack([flat.argmin(), flat.argmax()])
    rows = flat[:full].view(-1, row)
    (mins, at_min), (maxs, at_max) = rows.min(dim=1), rows.max(dim=1)
    lo, hi = mins.argmin().view(1), maxs.argmax().view(1)
    ends = torch.cat([lo * row + at_min.index_select(0, lo), hi * row + at_max.index_select(0, hi)])
    if full < flat.numel():  # the tail, shorter than a row
        tail = flat[full:]
        candidates = torch.stack([tail.argmin(), tail.argmax()]) + full
        now, then = flat.index_select(0, ends), flat.index_select(0, candidates)
        ends = torch.where(torch.stack([then[0] < now[0], then[1] > now[1]]), candidates, ends)
    return ends


class _RangeNoise(torch.autograd.Function):
    """``w̃_i = w_i + ε_i (max w − min w) / L_j`` on a flat ``w``, with its gradients written out, so a
    step costs one pass for the noise, one for its gradient in L, and no dense masks for max/min:

    ∂/∂w = g + (e_argmax − e_argmin) Σ_j (Σ_{i∈j} g_i ε_i) / L_j,
    ∂/∂L_j = −(max w − min w) (Σ_{i∈j} g_i ε_i) / L_j².
    """

    @staticmethod
    def forward(ctx, flat: torch.Tensor, levels: torch.Tensor, eps: torch.Tensor, group_size: int) -> torch.Tensor:
        ends = arg_extremes(flat)  # kept on the device: no index read on the host
        lo_value, hi_value = flat.index_select(0, ends)
        span = hi_value - lo_value
        ctx.save_for_backward(levels, eps, span, ends)
        ctx.group_size = group_size
        return add_per_group(flat, eps, span / levels, group_size)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        levels, eps, span, ends = ctx.saved_tensors
        sums = group_sums(grad * eps, ctx.group_size)
        d_span = (sums / levels).sum()
        grad_w = grad.index_add(0, ends, torch.stack([-d_span, d_span]))
        return grad_w, -span * sums / levels**2, None, None


class PseudoQuantizer(nn.Module):
    """The parametrization of one weight: pseudo-quantization noise in training, true quantization in eval."""

    def __init__(self, numel: int, group_size: int, min_bits: float, max_bits: float, init_bits: float,
                 noise: str, generator: torch.Generator) -> None:
        super().__init__()
        self.numel = numel
        self.group_size = group_size if group_size > 0 else numel
        self.n_groups = math.ceil(numel / self.group_size)
        self.min_bits, self.max_bits, self.noise, self.generator = min_bits, max_bits, noise, generator
        t = (init_bits - min_bits) / (max_bits - min_bits)
        self.logit = nn.Parameter(torch.full((self.n_groups,), math.log(t / (1 - t))))
        sizes = torch.full((self.n_groups,), float(self.group_size))
        sizes[-1] = numel - self.group_size * (self.n_groups - 1)
        self.register_buffer("group_sizes", sizes, persistent=False)
        self.frozen: torch.Tensor | None = None  # the integer widths once ``freeze`` was called
        self.quantized_training = False  # with frozen widths: train through true quantization (STE)

    def bits(self, shift: float = 0.0) -> torch.Tensor:
        """b = b_min + σ(ℓ + shift) (b_max − b_min), per group (once frozen: the frozen widths)."""
        if self.frozen is not None:
            return self.frozen
        return self.min_bits + torch.sigmoid(self.logit + shift) * (self.max_bits - self.min_bits)

    def rounded_bits(self, shift: float = 0.0) -> torch.Tensor:
        """The stored widths: b rounded, clamped to [max(1, ⌈b_min⌉), min(16, b_max)]."""
        return self.bits(shift).detach().round().clamp(max(1, math.ceil(self.min_bits)), min(16, int(self.max_bits)))

    def freeze(self, quantized_training: bool) -> None:
        """From now on train and store the current rounded widths (the logits stop mattering); with
        ``quantized_training`` the training forward is the eval forward, w → ŵ, with the STE."""
        self.frozen = self.rounded_bits()
        self.logit.requires_grad_(False)
        self.quantized_training = quantized_training

    def size_bits(self) -> torch.Tensor:
        """Differentiable size of this tensor in the packed format: codes, group widths, range."""
        return (self.group_sizes * self.bits()).sum() + GROUP_WIDTH_BITS * self.n_groups + RANGE_BITS

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return range_dequantize(w, self.rounded_bits(), self.group_size)
        if self.quantized_training:
            return straight_through(w, range_dequantize(w, self.rounded_bits(), self.group_size))
        if self.noise == "uniform":
            eps = torch.rand(w.numel(), generator=self.generator, device=w.device, dtype=w.dtype).sub_(0.5)
        else:
            eps = torch.randn(w.numel(), generator=self.generator, device=w.device, dtype=w.dtype).div_(2)
        levels = 2 ** self.bits().to(w.dtype) - 1
        return _RangeNoise.apply(w.reshape(-1), levels, eps, self.group_size).view_as(w)


def expected_bpw(quantizers: dict[str, PseudoQuantizer]) -> torch.Tensor:
    """Bits per quantized weight of the current (continuous) widths, side information included."""
    return sum(q.size_bits() for q in quantizers.values()) / sum(q.numel for q in quantizers.values())


def rounded_bpw(quantizers: dict[str, PseudoQuantizer], shift: float = 0.0) -> float:
    """Bits per quantized weight of the artifact if the logits were shifted by ``shift``."""
    total = 0.0
    for q in quantizers.values():
        bits = q.rounded_bits(shift)
        total += float((q.group_sizes * bits).sum()) + GROUP_WIDTH_BITS * q.n_groups + RANGE_BITS
    return total / sum(q.numel for q in quantizers.values())


@torch.no_grad()
def project_to_budget(quantizers: dict[str, PseudoQuantizer], target: float, iterations: int = 60) -> float:
    """Shift all logits by the largest δ with rounded bpw <= target (bisection); returns δ."""
    lo, hi = -40.0, 40.0
    if rounded_bpw(quantizers, lo) > target:
        hi = lo  # even the narrowest widths exceed the budget: take them
    for _ in range(iterations):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if rounded_bpw(quantizers, mid) <= target else (lo, mid)
    for q in quantizers.values():
        q.logit.add_(lo)
    return lo


class DiffQTraining(Trainer):
    """DiffQ on ``model``, trained in place by one's own loop: a :class:`PseudoQuantizer`
    parametrization on every compressible weight of at least ``min_size`` MB (smaller ones stay
    dense), so ``model(x)`` is w̃ = w + Δ ε in training mode and true quantization in eval mode;
    :meth:`penalty` is λ · size in MB (λ = ``size_penalty``; :class:`SizeController` steers it to a
    budget). Train :attr:`weights` with your optimizer and :attr:`logits` (the bit widths) with
    their own (the authors: Adam). The noise is drawn from ``seed`` as a grid's cell of that seed
    draws it. Build it on the model's device."""

    def __init__(self, model: nn.Module, group_size: int = 16, min_bits: float = 1.0, max_bits: float = 15.0,
                 init_bits: float = 8.0, noise: Literal["uniform", "gaussian"] = "uniform", min_size: float = 0.0,
                 size_penalty: float = 1.0, seed: int = 0) -> None:
        check_model("DiffQ", model)
        if not 0 < min_bits < init_bits < max_bits:
            raise ConfigError(f"DiffQ(min_bits={min_bits!r}, init_bits={init_bits!r}, max_bits={max_bits!r}): "
                              f"expected 0 < min_bits < init_bits < max_bits")
        if noise not in ("uniform", "gaussian"):
            raise ConfigError(f"DiffQ(noise={noise!r}): expected 'uniform' or 'gaussian'")
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 0:
            raise ConfigError(f"DiffQ(group_size={group_size!r}): expected an integer >= 0 (0: one width per tensor)")
        super().__init__(model)
        model.train()  # registering a parametrization runs it: in training mode, whatever the model's mode
        params = dict(model.named_parameters())
        names = [n for n in compressible(model) if params[n].numel() * 4 / 2**20 >= min_size]
        if not names:
            raise ConfigError(f"DiffQ(min_size={min_size!r}): no weight of {type(model).__name__} is that large")
        self.dense_bits = 32 * sum(par.numel() for n, par in params.items() if n not in names)
        device = params[names[0]].device
        gen = torch.Generator(device=device).manual_seed(derive_seed(seed, GENERATOR, 17))
        self.quantizers: dict[str, PseudoQuantizer] = {}
        for n in names:
            mod = model.get_submodule(n.rpartition(".")[0])
            quantizer = PseudoQuantizer(mod.weight.numel(), group_size, min_bits, max_bits, init_bits, noise,
                                        gen).to(mod.weight.device)
            parametrize.register_parametrization(mod, "weight", quantizer)
            self.quantizers[n] = mod.parametrizations.weight[0]
        self.logits = [q.logit for q in self.quantizers.values()]
        self.weights = [par for n, par in model.named_parameters() if not n.endswith(".logit")]
        self.lam = torch.tensor(size_penalty, device=device)  # λ stays on the device: no sync per step

    def penalty(self) -> torch.Tensor:
        """λ · size in MB: Σ of the quantized tensors' :meth:`PseudoQuantizer.size_bits` and 32 bits
        per dense weight, / (8 · 2^20)."""
        return self.lam * (sum(q.size_bits() for q in self.quantizers.values()) + self.dense_bits) / (8 * 2**20)

    def expected_bpw(self) -> torch.Tensor:
        """Bits per quantized weight of the current widths, side information included."""
        return expected_bpw(self.quantizers)

    def freeze(self, quantized_training: bool = True) -> None:
        """Train at the current rounded widths from now on (:meth:`PseudoQuantizer.freeze`); leave
        the size term out of the loss then."""
        for q in self.quantizers.values():
            q.freeze(quantized_training)

    def records(self) -> dict[str, QuantizedTensor]:
        """True quantization of each weight at its rounded widths (puts the model in eval mode)."""
        self.model.eval()
        return {n: range_record(self.model.get_submodule(n.rpartition(".")[0]).parametrizations.weight.original,
                                q.rounded_bits(), q.group_size) for n, q in self.quantizers.items()}

    def finalize(self) -> CompressedModel:
        """The compressed model; the parametrizations are removed, the model keeps the quantized
        weights (what the packed file gives, up to float32 rounding)."""
        records = self.records()
        for n in self.quantizers:
            parametrize.remove_parametrizations(self.model.get_submodule(n.rpartition(".")[0]), "weight",
                                                leave_parametrized=True)
        return assemble(self.model, records)


class SizeController:
    """Our budget controller for :class:`DiffQTraining` at ``bits`` per quantized weight:
    :meth:`step` after every optimizer step, λ ← λ · exp(η (bpw − target) / target), with bpw the
    expected bits per quantized weight; :meth:`project` at the end of every epoch shifts all logits
    by the largest common δ with rounded bpw <= target (bisection), so the widths meet the budget."""

    def __init__(self, diffq: DiffQTraining, bits: float, rate: float = 0.05) -> None:
        check_bits("SizeController", bits)
        if not rate >= 0:
            raise ConfigError(f"SizeController(rate={rate!r}): expected a rate >= 0 (0: λ stays)")
        self.diffq, self.target, self.rate = diffq, float(bits), rate

    @torch.no_grad()
    def step(self) -> None:
        """λ ← λ · exp(η (bpw − target) / target)"""
        self.diffq.lam.mul_(torch.exp(self.rate * (self.diffq.expected_bpw() - self.target) / self.target))

    def project(self) -> float:
        """Shift the logits onto the budget; returns δ."""
        return project_to_budget(self.diffq.quantizers, self.target)


@dataclass
class DiffQParams(Schedule):
    group_size: int = 16  # g consecutive weights share a bit width (0: one per tensor)
    min_bits: float = 1.0
    max_bits: float = 15.0
    init_bits: float = 8.0
    noise: Literal["uniform", "gaussian"] = "uniform"  # the paper: uniform; authors' code: gaussian
    min_size: float = 0.0  # MB: smaller weights stay dense (fp32)
    epochs: int = 20
    optimizer: Literal["sgd", "adam", "adamw"] = "adam"
    lr: float = 1e-3
    bits_lr: float = 0.05  # Adam learning rate of the bit-width logits
    size_penalty: float = 1.0  # λ (initial λ when the controller is on), per MB
    budget_control: bool = True  # steer λ so the final bpw meets the budget
    control_rate: float = 0.05  # η of the controller
    final_fraction: float = 0.5  # the last ⌊fraction · epochs + ½⌋ epochs train at the frozen widths
    final_forward: Literal["quantized", "noise"] = "quantized"  # their training forward (see the module doc)


@register_method("diffq")
class DiffQ(Method):
    """DiffQ with the budget controller (``budget_control: false``: fixed λ = ``size_penalty``)."""

    family = "DiffQ"
    trains = True
    starts_from = "rtn"  # quantization-aware training from the reference; RTN at the same bits is its floor
    step_curves = (StepCurve("diffq/bpw", "DiffQ epoch", "expected bits per weight"),)
    Params = DiffQParams

    @classmethod
    def serves(cls, budget: Budget, params: DiffQParams) -> bool:
        side = GROUP_WIDTH_BITS / params.group_size if params.group_size > 0 else 0.0  # g = 0: one width per tensor
        return params.min_bits + side <= budget.bits <= params.max_bits

    def compress(self, ref: nn.Module, budget: Budget, ctx: RunContext) -> CompressedModel:
        p = self.params
        if not 0.0 <= p.final_fraction <= 1.0:
            raise ConfigError(f"diffq.final_fraction: expected a fraction in [0, 1], got {p.final_fraction}")
        dq = DiffQTraining(copy.deepcopy(ref).to(ctx.device), p.group_size, p.min_bits, p.max_bits, p.init_bits,
                           p.noise, p.min_size, p.size_penalty, ctx.seed)
        control = SizeController(dq, budget.bits, p.control_rate) if p.budget_control else None
        opt = p.make_optimizer(dq.weights)
        sched = make_schedule(opt, p)
        opt_bits = make_optimizer(dq.logits, "adam", p.bits_lr)
        first_final = p.epochs - math.floor(p.final_fraction * p.epochs + 0.5)
        for epoch in ctx.progress(range(p.epochs), desc="DiffQ epochs"):
            frozen = epoch >= first_final
            if epoch == first_final:
                if control is not None and epoch == 0:
                    control.project()  # no epoch has projected yet
                dq.freeze(p.final_forward == "quantized")
            loss = train_epoch(dq.model, ctx.task, [opt] if frozen else [opt, opt_bits], p.batch_size,
                               derive_seed(ctx.seed, DATA_ORDER, epoch), ctx.device,
                               penalty=None if frozen else dq.penalty,
                               after_step=control.step if control is not None and not frozen else None,
                               grad_clip=p.grad_clip, epoch=epoch)
            sched.step()
            if control is not None and not frozen:
                ctx.log_metric("diffq/shift", control.project(), epoch)
            with torch.no_grad():
                ctx.log_metric("diffq/train_loss", loss, epoch)
                ctx.log_metric("diffq/lambda", float(dq.lam), epoch)
                ctx.log_metric("diffq/bpw", float(dq.expected_bpw()), epoch)
                for n, q in dq.quantizers.items():
                    ctx.log_metric(f"diffq/bits/{n}", float(q.bits().mean()), epoch)
        return ctx.as_cell(dq.finalize())


@dataclass
class DiffQFixedParams(DiffQParams):
    budget_control: bool = False
    final_fraction: float = 0.0  # the paper: learned widths and noise to the end
    penalties: dict = field(default_factory=lambda: {2: 20.0, 3: 4.0, 4: 1.5, 8: 0.3})  # budget column -> λ


@register_method("diffq_fixed")
class DiffQFixed(DiffQ):
    """DiffQ as in the paper: a fixed λ (``penalties[budget]``) and no controller. The budget only
    names the table column and picks λ; the achieved bpw is whatever that λ gives."""

    Params = DiffQFixedParams

    @classmethod
    def serves(cls, budget: Budget, params: DiffQFixedParams) -> bool:
        return any(abs(float(b) - budget.bits) < 1e-9 for b in params.penalties)

    def compress(self, ref: nn.Module, budget: Budget, ctx: RunContext) -> CompressedModel:
        lam = next(v for b, v in self.params.penalties.items() if abs(float(b) - budget.bits) < 1e-9)
        self.params = dataclasses.replace(self.params, size_penalty=float(lam), budget_control=False)
        return super().compress(ref, budget, ctx)
