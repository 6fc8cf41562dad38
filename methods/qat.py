"""Quantization-aware training baselines: QAT with the straight-through estimator (Bengio et al.
2013; Jacob et al. 2018) and LSQ (Esser et al., arXiv 1902.08153), both at b bits per weight.

Both train from the reference on their :class:`~quantbench.training.loop.Schedule` with every linear/conv
weight w replaced, in the forward pass, by a quantized ŵ (:class:`QuantizedForward`; the library's
``QAT`` and ``LSQ`` trainers, docs/library.md):

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
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from quantbench.errors import ConfigError
from quantbench.format import AffineGrid, CompressedModel, QuantizedTensor
from quantbench.method import Budget, Method, QuantizedForward, RunContext, check_bits, check_model
from quantbench.methods.uniform import fake_quantize_uniform, quantize_uniform, round_to_grid
from quantbench.registry import register_method
from quantbench.training.loop import Schedule, fit_trainer, straight_through


def whole_bits(call: str, model: nn.Module, bits: int, low: int) -> int:
    """``bits`` checked for a call that serves whole ``low``..16 bits (else ConfigError)."""
    check_model(call, model)
    budget = check_bits(call, bits)
    if budget.int_bits is None or not low <= budget.int_bits <= 16:
        raise ConfigError(f"{call}(bits={bits!r}): expected a whole number of bits in [{low}, 16]")
    return budget.int_bits


class QATTraining(QuantizedForward):
    """QAT: ŵ = the min-max round-to-nearest weights (2^b levels, per tensor or per output channel),
    recomputed every step, ∂ŵ/∂w := 1 (STE). :meth:`records` are ``rtn``'s of the trained weights."""

    low: ClassVar[int] = 1

    def __init__(self, model: nn.Module, bits: int, per_channel: bool = False) -> None:
        bits = whole_bits("QAT", model, bits, self.low)
        super().__init__(model)
        self.bits = bits
        self.per_channel = per_channel

    def quantize(self, name: str, w: torch.Tensor) -> torch.Tensor:
        return straight_through(w, fake_quantize_uniform(w, 2**self.bits, "minmax", self.per_channel))

    def records(self) -> dict[str, QuantizedTensor]:
        state = self.model.state_dict()
        return {n: quantize_uniform(state[n].cpu(), 2**self.bits, "minmax", self.per_channel) for n in self.names}


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


class LSQTraining(QuantizedForward):
    """LSQ: a learned step s per tensor, initialised to 2 mean|w| / √Q_P, trained with the weights
    (:meth:`parameters` holds the steps after the model's). :meth:`records` store
    round(clamp(w/s, −Q_N, Q_P)) + Q_N on the grid s · (code − Q_N)."""

    low: ClassVar[int] = 2

    def __init__(self, model: nn.Module, bits: int) -> None:
        bits = whole_bits("LSQ", model, bits, self.low)
        super().__init__(model)
        self.bits = bits
        qp = 2 ** (self.bits - 1) - 1
        self.steps = nn.ParameterList(
            [nn.Parameter(2 * self._params[n].detach().abs().mean() / math.sqrt(qp)) for n in self.names])
        self.scales = [1 / math.sqrt(self._params[n].numel() * qp) for n in self.names]
        self._index = {n: i for i, n in enumerate(self.names)}

    def quantize(self, name: str, w: torch.Tensor) -> torch.Tensor:
        i = self._index[name]
        return lsq_quantize(w, self.steps[i], self.bits, self.scales[i])

    def records(self) -> dict[str, QuantizedTensor]:
        out = {}
        for n, step in zip(self.names, self.steps, strict=True):
            grid = AffineGrid([float(step.detach())], [2 ** (self.bits - 1)])
            grid.round_to_storage("float32")
            out[n] = QuantizedTensor(tuple(self._params[n].shape),
                                     round_to_grid(self._params[n].detach().cpu(), grid, 2**self.bits - 1),
                                     grid, bits=self.bits)
        return out


@dataclass
class QATParams(Schedule):
    per_channel: bool = False  # one min-max range per output channel (default: per tensor)


class _QuantizedTraining(Method):
    """Training through quantized weights from the reference, at an integer budget of ``low``..16 bits."""

    family = "DiffQ"
    trains = True
    starts_from = "rtn"
    Params = Schedule
    trainer: ClassVar[type[QATTraining] | type[LSQTraining]]

    @classmethod
    def serves(cls, budget: Budget, params: Schedule) -> bool:
        return budget.int_bits is not None and cls.trainer.low <= budget.int_bits <= 16

    def compress(self, ref: nn.Module, budget: Budget, ctx: RunContext) -> CompressedModel:
        options = {"per_channel": self.params.per_channel} if isinstance(self.params, QATParams) else {}
        trainer = self.trainer(copy.deepcopy(ref).to(ctx.device), budget.int_bits, **options)
        fit_trainer(trainer, ctx, self.params, self.name, forward=trainer)
        return ctx.as_cell(trainer.finalize())


@register_method("qat")
class QAT(_QuantizedTraining):
    """Uniform quantization-aware training at b bits (min-max range, straight-through estimator)."""

    Params = QATParams
    trainer = QATTraining


@register_method("lsq")
class LSQ(_QuantizedTraining):
    """Learned step-size quantization (Esser et al., arXiv 1902.08153) at b bits, per tensor."""

    trainer = LSQTraining
