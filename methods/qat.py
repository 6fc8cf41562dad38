"""Quantization-aware training baselines: QAT with the straight-through estimator (Bengio et al.
2013; Jacob et al. 2018) and LSQ (Esser et al., arXiv 1902.08153), both at b bits per weight.

Both train from the reference for ``epochs`` epochs with every linear/conv weight w replaced, in
the forward pass, by a quantized ŵ (:func:`quantbench.train.train_quantized`):

* ``qat``: ŵ = the min-max round-to-nearest weights of ``rtn`` (2^b levels on [min w, max w],
  per tensor or per output channel), recomputed every step; ∂ŵ/∂w := 1 (STE);
* ``lsq``: ŵ = round(clamp(w/s, −Q_N, Q_P)) · s with a learned step s per tensor,
  Q_N = 2^(b−1), Q_P = 2^(b−1) − 1, s initialised to 2 mean|w| / √Q_P; ∂ŵ/∂w = 1 inside
  [−Q_N, Q_P] and 0 outside, ∂ŵ/∂s = g · (round(v) − v inside, the clamped bound outside),
  v = w/s, g = 1/√(numel · Q_P).

Each logs ``<name>/train_loss`` (the mean task loss per epoch). Their table group is the DiffQ
paper's, whose baselines they are (``family``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from quantbench.format import AffineGrid, CompressedModel, QuantizedTensor
from quantbench.method import Budget, Method, RunContext, compressible
from quantbench.registry import register_method
from quantbench.train import straight_through, train_quantized
from quantbench.uniform import fake_quantize_uniform, quantize_uniform, round_to_grid


@dataclass
class TrainingParams:
    """The training schedule both share."""

    epochs: int = 10
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    batch_size: int = 64


@dataclass
class QATParams(TrainingParams):
    per_channel: bool = False  # one min-max range per output channel (default: per tensor)


class _QuantizedTraining(Method):
    """Training through quantized weights from the reference, at an integer budget of ``low``..16 bits."""

    family = "DiffQ"
    trains = True
    starts_from = "rtn"
    low: ClassVar[int] = 2  # the fewest bits it serves

    @classmethod
    def serves(cls, budget: Budget, params: TrainingParams) -> bool:
        return budget.int_bits is not None and cls.low <= budget.int_bits <= 16

    def train_through(self, model: nn.Module, ctx: RunContext,
                      forward_weights: Callable[[str, torch.Tensor], torch.Tensor],
                      extra_params: Iterable[torch.Tensor] = ()) -> None:
        """The method's epochs through ``forward_weights``; the bar reads "<NAME> epochs" and the
        mean task loss of each epoch is logged as ``<name>/train_loss``."""
        p, name = self.params, self.name
        train_quantized(model, ctx.task, forward_weights, compressible(model), epochs=p.epochs, optimizer=p.optimizer,
                        lr=p.lr, momentum=p.momentum, batch_size=p.batch_size, seed=ctx.seed, device=ctx.device,
                        extra_params=extra_params, progress=lambda it: ctx.progress(it, desc=f"{name.upper()} epochs"),
                        log=lambda loss, epoch: ctx.log_metric(f"{name}/train_loss", loss, epoch))


@register_method("qat")
class QAT(_QuantizedTraining):
    """Uniform quantization-aware training at b bits (min-max range, straight-through estimator)."""

    Params = QATParams
    low = 1

    def compress(self, ref: nn.Module, budget: Budget, ctx: RunContext) -> CompressedModel:
        p, bits = self.params, budget.int_bits
        model = copy.deepcopy(ref).to(ctx.device)

        def fake(name: str, w: torch.Tensor) -> torch.Tensor:
            return straight_through(w, fake_quantize_uniform(w, 2**bits, "minmax", p.per_channel))

        self.train_through(model, ctx, fake)
        state = model.state_dict()
        return ctx.assemble(model, {n: quantize_uniform(state[n].cpu(), 2**bits, "minmax", p.per_channel)
                                    for n in compressible(model)})


class _LSQ(torch.autograd.Function):
    """``ŵ = round(clamp(w/s, −Q_N, Q_P)) · s`` with LSQ's gradients (Esser et al., eq. 3 and the STE):
    ∂/∂w = 1 inside [−Q_N, Q_P], 0 outside; ∂/∂s = g · (round(v) − v inside, the clamped bound outside),
    v = w/s. Written out so a step costs a few passes over the weights instead of autograd's chain."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, s: torch.Tensor, qn: int, qp: int, grad_scale: float) -> torch.Tensor:
        v = w / s
        ctx.save_for_backward(v, s)
        ctx.qn, ctx.qp, ctx.grad_scale = qn, qp, grad_scale
        return v.clamp(-qn, qp).round_().mul_(s)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        v, s = ctx.saved_tensors
        clamped = v.clamp(-ctx.qn, ctx.qp)
        inside = clamped == v
        rounded = clamped.round()
        d_s = torch.where(inside, rounded - v, rounded)
        grad_s = (grad.reshape(-1) @ d_s.reshape(-1)) * ctx.grad_scale
        return torch.where(inside, grad, 0), grad_s.reshape(s.shape), None, None, None


def lsq_quantize(w: torch.Tensor, s: torch.Tensor, bits: int, grad_scale: float) -> torch.Tensor:
    """LSQ (Esser et al.): ŵ = round(clamp(w/s, −Q_N, Q_P)) · s with the step's gradient scaled by
    ``grad_scale`` (the paper's g = 1/sqrt(numel · Q_P)); Q_N = 2^(b−1), Q_P = 2^(b−1) − 1."""
    return _LSQ.apply(w, s, 2 ** (bits - 1), 2 ** (bits - 1) - 1, grad_scale)


@register_method("lsq")
class LSQ(_QuantizedTraining):
    """Learned step-size quantization (Esser et al., arXiv 1902.08153) at b bits, per tensor."""

    Params = TrainingParams

    def compress(self, ref: nn.Module, budget: Budget, ctx: RunContext) -> CompressedModel:
        bits = budget.int_bits
        model = copy.deepcopy(ref).to(ctx.device)
        names = compressible(model)
        params = dict(model.named_parameters())
        qp = 2 ** (bits - 1) - 1
        steps = {n: nn.Parameter(2 * params[n].detach().abs().mean() / math.sqrt(qp)) for n in names}
        scales = {n: 1 / math.sqrt(params[n].numel() * qp) for n in names}
        self.train_through(model, ctx, lambda n, w: lsq_quantize(w, steps[n], bits, scales[n]),
                           extra_params=steps.values())
        records = {}
        for n in names:  # codes round(clamp(w/s, −Q_N, Q_P)) + Q_N on the grid s · (code − Q_N)
            grid = AffineGrid([float(steps[n].detach())], [2 ** (bits - 1)])
            grid.round_to_storage("float32")
            records[n] = QuantizedTensor(tuple(params[n].shape), round_to_grid(params[n].cpu(), grid, 2**bits - 1),
                                         grid, bits=bits)
        return ctx.assemble(model, records)
