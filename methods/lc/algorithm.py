"""The LC algorithm (Carreira-Perpiñán & Idelbayev) and its baselines DC and iDC.

Problem: min_w L(w) s.t. w = Δ(Θ). Augmented Lagrangian, for k = 0, 1, ..., steps − 1:

    μ_k = μ0 · a^k
    L step:  w ← argmin_w L(w) + μ_k/2 ‖w − Δ(Θ) − λ/μ_k‖²      (a few epochs of SGD)
    C step:  Θ ← argmin_Θ ‖(w − λ/μ_k) − Δ(Θ)‖²                   (the codebook's projection)
    λ       ← λ − μ_k (w − Δ(Θ))                                   (λ ≡ 0: quadratic penalty)

initialised by direct compression (Θ = Π(w_ref), λ = 0); the result is Δ(Θ).
The three parts are separate objects, as in the LC toolkit: the algorithm (here), the
compression type (:mod:`quantbench.methods.lc.csteps`) and the view of parameters (:class:`ParamView`).
"""

from __future__ import annotations

import copy
import math
import typing
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from quantbench import distributed
from quantbench.errors import ConfigError
from quantbench.format import Codebook, CompressedModel, QuantizedTensor, code_width
from quantbench.method import RunContext, Trainer, assemble, check_bits, check_model, compressible
from quantbench.methods.lc.csteps import CodebookKind, CStep, Projection, make_cstep, serves
from quantbench.training.loop import Schedule, fit


class ParamView:
    """Which tensors are compressed, and which share a codebook (one group = one C step)."""

    def __init__(self, model: nn.Module, shared_codebook: bool = False) -> None:
        self.names = compressible(model)
        self.groups = [self.names] if shared_codebook else [[n] for n in self.names]

    def flat(self, tensors: dict[str, torch.Tensor], group: list[str]) -> np.ndarray:
        return np.concatenate([tensors[n].detach().cpu().double().reshape(-1).numpy() for n in group])

    def split(self, flat: np.ndarray, group: list[str], shapes: dict[str, torch.Size]) -> dict[str, np.ndarray]:
        out, start = {}, 0
        for n in group:
            size = math.prod(shapes[n])
            out[n] = flat[start:start + size].reshape(shapes[n])
            start += size
        return out


def c_step(view: ParamView, csteps: list[CStep], targets: dict[str, torch.Tensor]) -> list[Projection]:
    """Θ = argmin ‖targets − Δ(Θ)‖², group by group. In a job of several processes it is computed
    once, on rank 0, and broadcast (the projections are NumPy arrays): every rank continues from the
    same Θ, whatever its k-means would give."""
    return distributed.on_main(
        lambda: [cs.project(view.flat(targets, g)) for cs, g in zip(csteps, view.groups, strict=True)])


def decompress(view: ParamView, projections: list[Projection],
               like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Δ(Θ) as tensors shaped, typed and placed like ``like``."""
    shapes = {n: like[n].shape for n in view.names}
    out = {}
    for proj, group in zip(projections, view.groups, strict=True):
        for n, arr in view.split(proj.dense(), group, shapes).items():
            out[n] = torch.as_tensor(arr, dtype=like[n].dtype, device=like[n].device)
    return out


def records(view: ParamView, csteps: list[CStep], projections: list[Projection],
            shapes: dict[str, torch.Size]) -> dict[str, QuantizedTensor]:
    """The format records of Δ(Θ); a shared codebook is stored with every tensor that uses it.

    Codes take log2 K bits when K is a power of two, else they are packed in base K (ternary:
    1.59 bits per weight).
    """
    out = {}
    for cs, proj, group in zip(csteps, projections, view.groups, strict=True):
        width = code_width(cs.levels)
        for n, codes in view.split(proj.codes, group, shapes).items():
            out[n] = QuantizedTensor(tuple(shapes[n]), codes, Codebook(proj.values), **width)
    return out


def penalty(w: torch.Tensor, q: torch.Tensor, lam_over_mu: torch.Tensor, mu: float) -> torch.Tensor:
    """μ/2 ‖w − q − λ/μ‖² (gradient μ(w − q) − λ), as one fused ``mse_loss`` of (w − q) against λ/μ;
    λ/μ is computed once per L step."""
    return 0.5 * mu * torch.nn.functional.mse_loss(w - q, lam_over_mu, reduction="sum")


def update_multipliers(lam: torch.Tensor, w: torch.Tensor, q: torch.Tensor, mu: float) -> torch.Tensor:
    """λ ← λ − μ (w − q)"""
    return lam - mu * (w - q)


def codebook_steps(call: str, model: nn.Module, bits: float, codebook: str, shared_codebook: bool = False,
                   kmeans: str = "auto", unit_codebook: list[float] | None = None) -> tuple[ParamView, list[CStep]]:
    """The view of ``model``'s compressible weights and one C step per group, each argument checked
    for the call ``call`` (ConfigError naming it)."""
    check_model(call, model)
    budget = check_bits(call, bits)
    kinds = [*typing.get_args(CodebookKind), "scaled"]
    if codebook not in kinds:
        raise ConfigError(f"{call}(codebook={codebook!r}): expected one of {kinds}")
    if codebook == "scaled" and unit_codebook is None:
        raise ConfigError(f"{call}(codebook='scaled'): give the unit codebook U (unit_codebook=[...])")
    if kmeans not in ("auto", "exact", "lloyd"):
        raise ConfigError(f"{call}(kmeans={kmeans!r}): expected 'auto', 'exact' or 'lloyd'")
    if not serves(codebook, budget, unit_codebook):
        raise ConfigError(f"{call}(bits={bits:g}): the {codebook} codebook does not serve {bits:g} bits per weight "
                          f"(docs/methods/lc.md)")
    view = ParamView(model, shared_codebook)
    return view, [make_cstep(codebook, budget, kmeans, unit_codebook) for _ in view.groups]


def direct_compression(model: nn.Module, bits: float, codebook: str = "adaptive", shared_codebook: bool = False,
                       kmeans: str = "auto", unit_codebook: list[float] | None = None) -> CompressedModel:
    """DC: the C step applied to ``model``'s weights, Θ = argmin ‖w − Δ(Θ)‖²; no training."""
    view, csteps = codebook_steps("dc", model, bits, codebook, shared_codebook, kmeans, unit_codebook)
    params = dict(model.named_parameters())
    shapes = {n: p.shape for n, p in params.items()}
    return assemble(model, records(view, csteps, c_step(view, csteps, params), shapes))


class _CodebookTraining(Trainer):
    """A model trained in place whose compressible weights w are compressed by a codebook's C step."""

    def __init__(self, call: str, model: nn.Module, bits: float, codebook: str, shared_codebook: bool, kmeans: str,
                 unit_codebook: list[float] | None) -> None:
        view, csteps = codebook_steps(call, model, bits, codebook, shared_codebook, kmeans, unit_codebook)
        super().__init__(model)
        self.view, self.csteps = view, csteps
        params = dict(model.named_parameters())
        self.w = {n: params[n] for n in view.names}
        self.projections = c_step(view, csteps, self.w)  # direct compression (LC: μ → 0, λ = 0)
        self.q = decompress(view, self.projections, self.w)

    def distortion(self) -> float:
        """‖w − Δ(Θ)‖² over the compressed weights."""
        return sum(float(torch.sum((self.w[n].detach() - self.q[n]) ** 2)) for n in self.view.names)

    def records(self) -> dict[str, QuantizedTensor]:
        """The records of Δ(Θ) of the last C step."""
        shapes = {n: p.shape for n, p in self.model.named_parameters()}
        return records(self.view, self.csteps, self.projections, shapes)


class LCTraining(_CodebookTraining):
    """Learning-compression (Carreira-Perpiñán & Idelbayev; docs/methods/lc.md) driven by one's own
    training loop: the L step is the loop, on its loss plus :meth:`penalty`; the C step is
    :meth:`c_step`::

        lc = library.LC(model, bits=2)            # Θ from direct compression of the weights, λ = 0
        for k in range(steps):
            lc.mu = mu0 * growth**k               # the penalty's μ for this step
            for x, y in data:                     # the L step: min L(w) + μ/2 ‖w − Δ(Θ) − λ/μ‖²
                loss = criterion(lc(x), y) + lc.penalty()
                opt.zero_grad(); loss.backward(); opt.step()
            lc.c_step()                           # Θ = argmin ‖w − λ/μ − Δ(Θ)‖²; λ ← λ − μ (w − Δ(Θ))
        packed = lc.finalize()                    # the records of Δ(Θ), every other tensor dense

    ``model`` is trained in place (its compressible weights are w); ``codebook``: adaptive (exact
    1-D k-means, 2^bits levels), binary, scaled_binary, ternary, pow2, or scaled (a learned scale
    of ``unit_codebook``); ``multipliers``: the augmented Lagrangian (λ) or the quadratic penalty
    alone; ``shared_codebook``: one codebook for all the weights. The grid's LC cell is this loop
    on its schedule (:func:`learning_compression`)."""

    def __init__(self, model: nn.Module, bits: float, codebook: str = "adaptive", mu: float = 1e-3,
                 multipliers: bool = True, shared_codebook: bool = False, kmeans: str = "auto",
                 unit_codebook: list[float] | None = None) -> None:
        super().__init__("LC", model, bits, codebook, shared_codebook, kmeans, unit_codebook)
        self.multipliers, self.mu = multipliers, mu
        self.lam = {n: torch.zeros_like(t) for n, t in self.w.items()}

    @property
    def mu(self) -> float:
        """The penalty's μ (set it before each L step; it grows from step to step)."""
        return self._mu

    @mu.setter
    def mu(self, value: float) -> None:
        if not value > 0:
            raise ConfigError(f"LC(mu={value!r}): expected μ above 0")
        self._mu, self._lam_over_mu = float(value), None

    def penalty(self) -> torch.Tensor:
        """μ/2 Σ ‖w − Δ(Θ) − λ/μ‖² over the compressed weights (add it to the loss of the L step);
        λ/μ is computed once per (μ, λ), not per batch."""
        if self._lam_over_mu is None:
            with torch.no_grad():
                self._lam_over_mu = {n: self.lam[n] / self.mu for n in self.view.names}
        return sum(penalty(self.w[n], self.q[n], self._lam_over_mu[n], self.mu) for n in self.view.names)

    @torch.no_grad()
    def c_step(self) -> None:
        """Θ = argmin ‖w − λ/μ − Δ(Θ)‖² (the codebook's exact projection), then λ ← λ − μ (w − Δ(Θ))."""
        self.projections = c_step(self.view, self.csteps,
                                  {n: self.w[n] - self.lam[n] / self.mu for n in self.view.names})
        self.q = decompress(self.view, self.projections, self.w)
        if self.multipliers:
            self.lam = {n: update_multipliers(self.lam[n], self.w[n].detach(), self.q[n], self.mu)
                        for n in self.view.names}
            self._lam_over_mu = None


class IDCTraining(_CodebookTraining):
    """iDC (LC's baseline): quantize, then train from the quantized weights, repeatedly (no μ, no λ)::

        idc = library.IDC(model, bits=2)          # Θ = Π(w); w ← Δ(Θ)
        for k in range(steps):
            train(idc, data)                      # your loop, on the loss alone
            idc.c_step()                          # Θ = Π(w); w ← Δ(Θ)
        packed = idc.finalize()"""

    def __init__(self, model: nn.Module, bits: float, codebook: str = "adaptive", shared_codebook: bool = False,
                 kmeans: str = "auto", unit_codebook: list[float] | None = None) -> None:
        super().__init__("IDC", model, bits, codebook, shared_codebook, kmeans, unit_codebook)
        self._load()

    @torch.no_grad()
    def _load(self) -> None:
        for n, t in self.q.items():
            self.w[n].copy_(t)

    @torch.no_grad()
    def c_step(self) -> float:
        """Θ = argmin ‖w − Δ(Θ)‖², then w ← Δ(Θ); returns ‖w − Δ(Θ)‖² of the weights as trained."""
        self.projections = c_step(self.view, self.csteps, self.w)
        self.q = decompress(self.view, self.projections, self.w)
        trained = self.distortion()
        self._load()
        return trained


# ---------------------------------------------------------------------- the grid's loops around them
@torch.no_grad()
def evaluate_with(model: nn.Module, weights: dict[str, torch.Tensor], ctx: RunContext) -> dict:
    """Task metrics of ``model`` with ``weights`` substituted (the model is left unchanged)."""
    probe = copy.deepcopy(model)
    state = probe.state_dict()
    state.update(weights)
    probe.load_state_dict(state)
    return ctx.task.evaluate(probe, device=ctx.device)


def _log_step(ctx: RunContext, trainer: _CodebookTraining, step: int, distortion: float, **extra: float) -> None:
    ctx.log_metric("lc/distortion", distortion, step)
    for key, value in extra.items():
        ctx.log_metric(f"lc/{key}", value, step)
    metric = ctx.task.metric
    ctx.log_metric(f"lc/{metric}", evaluate_with(trainer.model, trainer.q, ctx)[metric], step)


@contextmanager
def _diverged_at(where: str) -> Iterator[None]:
    """A divergence inside says where: "training loss is nan at epoch 0 of LC step 11 (mu 4.1)"."""
    try:
        yield
    except FloatingPointError as e:
        e.args = (f"{e} of {where}",)
        raise


def _l_step(trainer: Trainer, ctx: RunContext, schedule: Schedule, k: int, lr_decay: float, where: str,
            penalty=None) -> float:
    """Step k's training: ``schedule`` at lr · lr_decay^k, batch order of (k, epoch); its last epoch's loss."""
    with _diverged_at(where):
        history = fit(trainer.model, ctx.task, schedule, ctx.seed, ctx.device, params=trainer.parameters(),
                      penalty=penalty, order=lambda epoch: k * 101 + epoch, lr_scale=lr_decay**k)
    return history[-1] if history else float("nan")


def learning_compression(lc: LCTraining, ctx: RunContext, schedule: Schedule, *, steps: int, mu0: float,
                         mu_growth: float, lr_decay: float) -> None:
    """Run LC: ``steps`` L and C steps at μ_k = mu0 · mu_growth^k, each L step ``schedule`` at
    lr · lr_decay^k. ``schedule.grad_clip``: the L step's updates clip the global gradient norm of
    L(w) + μ/2‖w − Δ(Θ) − λ/μ‖² at it (0: none). With a codebook whose magnitude is fixed (binary
    {−1, +1}) and a network without normalization layers, L's gradient near Δ(Θ) is orders of
    magnitude above the reference's, and an unclipped step lr · ∇ throws w past the codebook, where
    the next gradient is larger still (LeNet5 on digits: a loss of 1e34 by step 11, NaN on another
    CPU; docs/methods/lc.md)."""
    for k in ctx.progress(range(steps), desc="LC steps"):
        lc.mu = mu0 * mu_growth**k
        loss = _l_step(lc, ctx, schedule, k, lr_decay, f"LC step {k} (mu {lc.mu:.3g})", penalty=lc.penalty)
        lc.c_step()
        _log_step(ctx, lc, k, lc.distortion(), mu=lc.mu, train_loss=loss)


def iterated_direct_compression(idc: IDCTraining, ctx: RunContext, schedule: Schedule, *, steps: int,
                                lr_decay: float) -> None:
    """Run iDC: ``steps`` times, ``schedule`` at lr · lr_decay^k from the quantized weights, then quantize."""
    for k in ctx.progress(range(steps), desc="iDC steps"):
        loss = _l_step(idc, ctx, schedule, k, lr_decay, f"iDC step {k}")
        _log_step(ctx, idc, k, idc.c_step(), train_loss=loss)
