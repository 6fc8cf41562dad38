"""The LC family in the grid: lc_* (LC with each codebook), dc and idc (the paper's baselines)."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from torch import nn

from quantbench.format import CompressedModel
from quantbench.method import Budget, Method, RunContext, StepCurve
from quantbench.methods.lc.algorithm import ParamView, iterated_direct_compression, learning_compression, records
from quantbench.methods.lc.csteps import (
    AdaptiveCodebook,
    Binary,
    CStep,
    PowersOfTwo,
    ScaledBinary,
    ScaledCodebook,
    ScaledTernary,
)
from quantbench.registry import register_method

CodebookKind = Literal["adaptive", "binary", "scaled_binary", "ternary", "pow2"]
MAX_ADAPTIVE_BITS = 8


def _near(bits: float, target: float) -> bool:
    return abs(bits - target) < 0.01


def serves(kind: str, budget: Budget, unit_codebook: list[float] | None = None) -> bool:
    """Budgets each codebook serves, b = log2 K: K = 2^b (adaptive), 2 (binary), 3 (ternary: 1.58),
    an odd K = 2^b (pow2: 3, 7, 15 levels at 1.58, 2.81, 3.91 bits), K = |U| (scaled). Base-K packing gives
    log2 K + <1%."""
    b = budget.int_bits
    if kind == "adaptive":
        return b is not None and 1 <= b <= MAX_ADAPTIVE_BITS
    if kind in ("binary", "scaled_binary"):
        return b == 1
    if kind == "ternary":
        return _near(budget.bits, math.log2(3))
    if kind == "pow2":
        k = budget.levels
        return k is not None and k % 2 == 1 and 3 <= k < 2**MAX_ADAPTIVE_BITS
    if kind == "scaled":
        k = len(set(unit_codebook or []))
        return k >= 2 and _near(budget.bits, math.log2(k))
    raise ValueError(f"unknown codebook kind {kind!r}")


def make_cstep(kind: str, budget: Budget, kmeans: str = "auto", unit_codebook: list[float] | None = None) -> CStep:
    if kind == "adaptive":
        return AdaptiveCodebook(2 ** budget.int_bits, kmeans)
    if kind == "pow2":
        return PowersOfTwo(budget.levels)
    if kind == "scaled":
        return ScaledCodebook(unit_codebook)
    return {"binary": Binary, "scaled_binary": ScaledBinary, "ternary": ScaledTernary}[kind]()


@dataclass
class ViewParams:
    shared_codebook: bool = False  # one codebook for all compressed layers (default: one per layer)
    kmeans: Literal["auto", "exact", "lloyd"] = "auto"  # adaptive codebook: exact DP, Lloyd warm-started, or by size


@dataclass
class TrainParams(ViewParams):
    steps: int = 20  # LC (or iDC) steps
    epochs_per_step: int = 2  # epochs of the L step
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = 0.05  # lr at step k is lr · lr_decay^k
    lr_decay: float = 0.95
    momentum: float = 0.9
    batch_size: int = 64
    grad_clip: float = 0.0  # max global gradient norm of an L-step update (0: none)


@dataclass
class LCParams(TrainParams):
    mu0: float = 1e-3  # μ_k = mu0 · mu_growth^k
    mu_growth: float = 1.5
    multipliers: bool = True  # augmented Lagrangian; false: quadratic penalty (λ ≡ 0)


@dataclass
class LCScaledParams(LCParams):
    unit_codebook: list[float] = field(default_factory=lambda: [-1.0, -0.5, 0.0, 0.5, 1.0])


@dataclass
class DCParams(ViewParams):
    codebook: CodebookKind = "adaptive"


@dataclass
class IDCParams(TrainParams):
    codebook: CodebookKind = "adaptive"


class _CodebookMethod(Method):
    family = "LC"
    step_curves = (StepCurve("lc/{metric}", "LC step", "{metric} of Δ(Θ)"),)
    codebook: ClassVar[str] = "adaptive"

    @classmethod
    def kind(cls, params) -> str:
        return getattr(params, "codebook", cls.codebook)

    @classmethod
    def serves(cls, budget: Budget, params) -> bool:
        return serves(cls.kind(params), budget, getattr(params, "unit_codebook", None))

    def setup(self, ref: nn.Module, budget: Budget) -> tuple[nn.Module, ParamView, list[CStep]]:
        p = self.params
        model = _copy(ref)
        view = ParamView(model, p.shared_codebook)
        csteps = [make_cstep(self.kind(p), budget, p.kmeans, getattr(p, "unit_codebook", None)) for _ in view.groups]
        return model, view, csteps

    def finish(self, model: nn.Module, view: ParamView, csteps, projections, ctx: RunContext) -> CompressedModel:
        shapes = {n: p.shape for n, p in model.named_parameters()}
        return ctx.assemble(model, records(view, csteps, projections, shapes))


def _copy(ref: nn.Module) -> nn.Module:
    model = copy.deepcopy(ref)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


class _LC(_CodebookMethod):
    Params = LCParams
    trains = True

    def compress(self, ref: nn.Module, budget: Budget, ctx: RunContext) -> CompressedModel:
        p = self.params
        model, view, csteps = self.setup(ref, budget)
        projections, _ = learning_compression(
            model, view, csteps, ctx, steps=p.steps, epochs_per_step=p.epochs_per_step, mu0=p.mu0,
            mu_growth=p.mu_growth, multipliers=p.multipliers, optimizer=p.optimizer, lr=p.lr, momentum=p.momentum,
            lr_decay=p.lr_decay, batch_size=p.batch_size, grad_clip=p.grad_clip)
        return self.finish(model, view, csteps, projections, ctx)


@register_method("lc_adaptive")
class LCAdaptive(_LC):
    """LC with an adaptive codebook of K = 2^b centroids per layer."""

    codebook = "adaptive"
    starts_from = "dc"  # LC's first C step is DC (μ → 0)


@register_method("lc_binary")
class LCBinary(_LC):
    """LC with the fixed binary codebook {−1, +1} (1 bit)."""

    codebook = "binary"


@register_method("lc_scaled_binary")
class LCScaledBinary(_LC):
    """LC with the binary codebook {−a, +a}, a learned per layer (1 bit)."""

    codebook = "scaled_binary"


@register_method("lc_ternary")
class LCTernary(_LC):
    """LC with the ternary codebook {−a, 0, +a}, a learned per layer (log2 3 bits)."""

    codebook = "ternary"


@register_method("lc_pow2")
class LCPowersOfTwo(_LC):
    """LC with a powers-of-two codebook {0, ±a·2^−k}, a learned per layer."""

    codebook = "pow2"


@register_method("lc_scaled")
class LCScaled(_LC):
    """LC with a fixed codebook up to a learned scale (``unit_codebook``)."""

    codebook = "scaled"
    Params = LCScaledParams


@register_method("dc")
class DirectCompression(_CodebookMethod):
    """DC: the C step applied to the reference; no retraining."""

    Params = DCParams

    def compress(self, ref: nn.Module, budget: Budget, ctx: RunContext) -> CompressedModel:
        model, view, csteps = self.setup(ref, budget)
        with torch.no_grad():
            params = dict(model.named_parameters())
            projections = [cs.project(view.flat(params, g)) for cs, g in zip(csteps, view.groups, strict=True)]
        return self.finish(model, view, csteps, projections, ctx)


@register_method("idc")
class IteratedDirectCompression(_CodebookMethod):
    """iDC: alternate training from the quantized weights and quantizing (no μ, no λ)."""

    Params = IDCParams
    trains = True
    starts_from = "dc"

    def compress(self, ref: nn.Module, budget: Budget, ctx: RunContext) -> CompressedModel:
        p = self.params
        model, view, csteps = self.setup(ref, budget)
        projections = iterated_direct_compression(
            model, view, csteps, ctx, steps=p.steps, epochs_per_step=p.epochs_per_step, optimizer=p.optimizer,
            lr=p.lr, momentum=p.momentum, lr_decay=p.lr_decay, batch_size=p.batch_size, grad_clip=p.grad_clip)
        return self.finish(model, view, csteps, projections, ctx)
