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
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from quantbench import distributed
from quantbench.format import Codebook, QuantizedTensor, code_width
from quantbench.method import DATA_ORDER, RunContext, compressible, derive_seed
from quantbench.methods.lc.csteps import CStep, Projection
from quantbench.train import make_optimizer, train_epoch


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


@torch.no_grad()
def evaluate_with(model: nn.Module, weights: dict[str, torch.Tensor], ctx: RunContext) -> dict:
    """Task metrics of ``model`` with ``weights`` substituted (the model is left unchanged)."""
    probe = copy.deepcopy(model)
    state = probe.state_dict()
    state.update(weights)
    probe.load_state_dict(state)
    return ctx.task.evaluate(probe, device=ctx.device)


def _log_step(ctx: RunContext, model: nn.Module, view: ParamView, q: dict[str, torch.Tensor], step: int,
              **extra: float) -> None:
    params = dict(model.named_parameters())
    distortion = sum(float(torch.sum((params[n].detach() - q[n]) ** 2)) for n in view.names)
    ctx.log_metric("lc/distortion", distortion, step)
    for key, value in extra.items():
        ctx.log_metric(f"lc/{key}", value, step)
    metric = ctx.task.metric
    ctx.log_metric(f"lc/{metric}", evaluate_with(model, q, ctx)[metric], step)


@contextmanager
def _diverged_at(where: str) -> Iterator[None]:
    """A divergence inside says where: "training loss is nan at epoch 0 of LC step 11 (mu 4.1)"."""
    try:
        yield
    except FloatingPointError as e:
        e.args = (f"{e} of {where}",)
        raise


def learning_compression(model: nn.Module, view: ParamView, csteps: list[CStep], ctx: RunContext, *, steps: int,
                         epochs_per_step: int, mu0: float, mu_growth: float, multipliers: bool, optimizer: str,
                         lr: float, momentum: float, lr_decay: float, batch_size: int, grad_clip: float = 0.0
                         ) -> tuple[list[Projection], dict[str, torch.Tensor]]:
    """Run LC on ``model`` in place; returns the final Θ (projections) and λ. ``grad_clip``: the L
    step's updates clip the global gradient norm of L(w) + μ/2‖w − Δ(Θ) − λ/μ‖² at it (0: none).
    With a codebook whose magnitude is fixed (binary {−1, +1}) and a network without normalization
    layers, L's gradient near Δ(Θ) is orders of magnitude above the reference's, and an unclipped
    step lr · ∇ throws w past the codebook, where the next gradient is larger still (LeNet5 on
    digits: a loss of 1e34 by step 11, NaN on another CPU; docs/methods/lc.md)."""
    params = dict(model.named_parameters())
    w = {n: params[n] for n in view.names}
    projections = c_step(view, csteps, w)  # direct compression: μ → 0, λ = 0
    q = decompress(view, projections, w)
    lam = {n: torch.zeros_like(w[n]) for n in view.names}
    for k in ctx.progress(range(steps), desc="LC steps"):
        mu = mu0 * mu_growth**k
        loss = float("nan")
        if epochs_per_step:
            opt = make_optimizer(model.parameters(), optimizer, lr * lr_decay**k, momentum)

            with torch.no_grad():
                lam_over_mu = {n: lam[n] / mu for n in view.names}

            def lc_penalty(mu: float = mu, q: dict = q, lam_over_mu: dict = lam_over_mu) -> torch.Tensor:
                return sum(penalty(w[n], q[n], lam_over_mu[n], mu) for n in view.names)

            for epoch in range(epochs_per_step):
                order = derive_seed(ctx.seed, DATA_ORDER, k * 101 + epoch)
                with _diverged_at(f"LC step {k} (mu {mu:.3g})"):
                    loss = train_epoch(model, ctx.task, opt, batch_size, order, ctx.device, penalty=lc_penalty,
                                       grad_clip=grad_clip, epoch=epoch)
        with torch.no_grad():
            projections = c_step(view, csteps, {n: w[n] - lam[n] / mu for n in view.names})
            q = decompress(view, projections, w)
            if multipliers:
                lam = {n: update_multipliers(lam[n], w[n].detach(), q[n], mu) for n in view.names}
        _log_step(ctx, model, view, q, k, mu=mu, train_loss=loss)
    return projections, lam


def iterated_direct_compression(model: nn.Module, view: ParamView, csteps: list[CStep], ctx: RunContext, *,
                                steps: int, epochs_per_step: int, optimizer: str, lr: float, momentum: float,
                                lr_decay: float, batch_size: int, grad_clip: float = 0.0) -> list[Projection]:
    """iDC: quantize, then train from the quantized weights, repeatedly (no μ, no λ)."""
    params = dict(model.named_parameters())
    w = {n: params[n] for n in view.names}
    projections = c_step(view, csteps, w)
    for k in ctx.progress(range(steps), desc="iDC steps"):
        with torch.no_grad():
            for n, t in decompress(view, projections, w).items():
                w[n].copy_(t)
        opt = make_optimizer(model.parameters(), optimizer, lr * lr_decay**k, momentum)
        loss = float("nan")
        for epoch in range(epochs_per_step):
            order = derive_seed(ctx.seed, DATA_ORDER, k * 101 + epoch)
            with _diverged_at(f"iDC step {k}"):
                loss = train_epoch(model, ctx.task, opt, batch_size, order, ctx.device, grad_clip=grad_clip,
                                   epoch=epoch)
        projections = c_step(view, csteps, w)
        _log_step(ctx, model, view, decompress(view, projections, w), k, train_loss=loss)
    return projections


