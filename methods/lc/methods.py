"""The LC family in the grid: lc_* (LC with each codebook), dc and idc (the paper's baselines), each
an adapter from the cell to the library's trainer (:mod:`quantbench.methods.lc.algorithm`)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from torch import nn

from quantbench.format import CompressedModel
from quantbench.method import Budget, Method, RunContext, StepCurve
from quantbench.methods.lc.algorithm import (
    IDCTraining,
    LCTraining,
    direct_compression,
    iterated_direct_compression,
    learning_compression,
)
from quantbench.methods.lc.csteps import CodebookKind, serves
from quantbench.registry import register_method
from quantbench.training.loop import Schedule


@dataclass
class ViewParams:
    shared_codebook: bool = False  # one codebook for all compressed layers (default: one per layer)
    kmeans: Literal["auto", "exact", "lloyd"] = "auto"  # adaptive codebook: exact DP, Lloyd warm-started, or by size


@dataclass
class TrainParams(ViewParams, Schedule):
    """``steps`` LC (or iDC) steps, each training on the schedule (``epochs`` epochs) at lr · lr_decay^k."""

    steps: int = 20
    epochs: int = 2  # epochs of each L step
    lr: float = 0.05
    lr_decay: float = 0.95


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

    def codebook_args(self) -> dict:
        """The trainer's codebook arguments from the cell's params."""
        p = self.params
        return {"codebook": self.kind(p), "shared_codebook": p.shared_codebook, "kmeans": p.kmeans,
                "unit_codebook": getattr(p, "unit_codebook", None)}


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
        lc = LCTraining(_copy(ref), budget.bits, mu=p.mu0, multipliers=p.multipliers, **self.codebook_args())
        learning_compression(lc, ctx, p, steps=p.steps, mu0=p.mu0, mu_growth=p.mu_growth, lr_decay=p.lr_decay)
        return ctx.as_cell(lc.finalize())


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
        return ctx.as_cell(direct_compression(ref, budget.bits, **self.codebook_args()))


@register_method("idc")
class IteratedDirectCompression(_CodebookMethod):
    """iDC: alternate training from the quantized weights and quantizing (no μ, no λ)."""

    Params = IDCParams
    trains = True
    starts_from = "dc"

    def compress(self, ref: nn.Module, budget: Budget, ctx: RunContext) -> CompressedModel:
        p = self.params
        idc = IDCTraining(_copy(ref), budget.bits, **self.codebook_args())
        iterated_direct_compression(idc, ctx, p, steps=p.steps, lr_decay=p.lr_decay)
        return ctx.as_cell(idc.finalize())
