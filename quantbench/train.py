"""Training loop and the content-addressed reference cache."""

from __future__ import annotations

import hashlib
import math
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from quantbench import distributed
from quantbench.data import Task
from quantbench.files import write_atomic
from quantbench.method import DATA_ORDER, REFERENCE_DATA_ORDER, derive_seed


@dataclass
class TrainSettings:
    """Reference training recipe (config: ``reference``, per (task, arch) ``recipes``).

    ``lr_schedule``: cosine to 0 over ``epochs``, constant, or step (× ``gamma`` at each epoch in
    ``milestones``), after ``warmup_epochs`` of linear warm-up. ``amp``: mixed precision on CUDA
    (bfloat16 autocast where the GPU has it; float16 autocast with loss scaling, ``GradScaler``, where
    it does not: V100, T4), none on CPU. ``grad_clip``: max global gradient norm (0: none). ``pretrained``: published
    weights to load instead of training (``torchvision:<Enum>.<name>``, ``timm:<model>.<tag>``, or a
    path / URL with ``pretrained_sha256``; :mod:`quantbench.models.pretrained`); the other keys are then unused.
    """

    epochs: int = 30
    batch_size: int = 64
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0005
    lr_schedule: Literal["cosine", "constant", "step"] = "cosine"
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    warmup_epochs: int = 0
    amp: bool = True
    grad_clip: float = 0.0
    pretrained: str = ""
    pretrained_sha256: str = ""


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch; where CUDA is present, also ask for deterministic kernels.

    The CPU kernels used here are deterministic for a fixed thread count already, and
    ``torch.use_deterministic_algorithms`` costs 2-3 s of imports (torch._dynamo) in every job,
    so it is only switched on where it matters (CUDA; set CUBLAS_WORKSPACE_CONFIG=:4096:8 there).
    With ``warn_only`` (needed: e.g. adaptive pooling has no deterministic CUDA backward) the fused
    attention kernels (flash, memory-efficient, cuDNN) keep their non-deterministic backward, so
    scaled-dot-product attention is restricted to its math kernel there (deterministic, slower).
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cuda.enable_flash_sdp(False)
        torch.backends.cuda.enable_mem_efficient_sdp(False)
        torch.backends.cuda.enable_cudnn_sdp(False)


def make_optimizer(params, name: str, lr: float, momentum: float = 0.9, weight_decay: float = 0.0
                   ) -> torch.optim.Optimizer:
    """SGD (with momentum), Adam or AdamW. Adam and AdamW are fused (one kernel per tensor instead of
    a Python loop of ~10 operations per tensor) on CPU and CUDA: a ResNet-18 step on this CPU spent
    48 ms in the default Adam and 10 ms in the fused one (issue #17). SGD keeps PyTorch's default
    implementation: fused SGD gains ~5 ms but does not reproduce its bits (2.4e-7 apart after 11
    steps of ResNet-20), which would change every SGD-trained reference."""
    params = list(params)
    groups = params if params and isinstance(params[0], dict) else [{"params": params}]
    devices = {p.device.type for g in groups for p in g["params"]}
    fused = bool(devices) and devices <= {"cpu", "cuda"}
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=fused)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused)
    raise ValueError(f"unknown optimizer {name!r}; allowed: ['sgd', 'adam', 'adamw']")


def make_schedule(opt: torch.optim.Optimizer, s: TrainSettings) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-epoch learning-rate factor: linear warm-up, then cosine / constant / step decay."""
    def factor(epoch: int) -> float:
        if epoch < s.warmup_epochs:
            return (epoch + 1) / (s.warmup_epochs + 1)
        if s.lr_schedule == "cosine":
            t = (epoch - s.warmup_epochs) / max(1, s.epochs - s.warmup_epochs)
            return 0.5 * (1 + math.cos(math.pi * t))
        if s.lr_schedule == "step":
            return s.gamma ** sum(epoch >= m for m in s.milestones)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """The autocast dtype of mixed precision: on CUDA bfloat16 where supported, else float16 (which
    :func:`train_step` only runs with a ``GradScaler``); None (full precision) on CPU, so CPU runs stay exact."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def grad_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler | None:
    """Loss scaling for float16 autocast (its gradients underflow without it); none for bfloat16
    (float32's exponent range) or full precision. One per training, kept across its epochs."""
    return torch.amp.GradScaler(device.type) if dtype == torch.float16 else None


def train_step(model: nn.Module, task: Task, optimizers: Sequence[torch.optim.Optimizer], x: torch.Tensor,
               y: torch.Tensor, forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
               penalty: Callable[[], torch.Tensor] | None = None, after_step: Callable[[], None] | None = None,
               amp: torch.dtype | None = None, grad_clip: float = 0.0, loss_weight: float | None = None,
               sync: Callable[[], None] | None = None, scaler: torch.amp.GradScaler | None = None) -> torch.Tensor:
    """One step on the objective ``task.loss(forward(x), y) + penalty()``, then ``after_step()``; returns
    the task loss, detached, on the device (reading it would synchronise the device, so the caller does
    that once per epoch). Distributed: ``loss_weight`` multiplies the task loss (this rank's share of
    the global batch) and ``sync()`` averages the gradients DDP does not, after the backward pass.

    ``amp``: the autocast dtype (:func:`amp_dtype`; None: full precision). float16 needs ``scaler``
    (:func:`grad_scaler`): the objective is multiplied by its scale before the backward pass, the
    gradients are unscaled before clipping, and a step whose gradients overflowed is skipped."""
    if amp == torch.float16 and scaler is None:
        raise ValueError("float16 autocast needs a GradScaler (its gradients underflow without loss scaling)")
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    with torch.autocast(device_type=x.device.type, dtype=amp or torch.float32, enabled=amp is not None):
        loss = task.loss((forward or model)(x), y)
    objective = loss if loss_weight is None else loss * loss_weight
    objective = objective if penalty is None else objective + penalty()
    (objective if scaler is None else scaler.scale(objective)).backward()
    if sync is not None:
        sync()
    if grad_clip > 0:
        if scaler is not None:
            for opt in optimizers:
                scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    for opt in optimizers:
        if scaler is None:
            opt.step()
        else:
            scaler.step(opt)
    if scaler is not None:
        scaler.update()
    if after_step is not None:
        after_step()
    return loss.detach()


def train_epoch(model: nn.Module, task: Task, optimizers: torch.optim.Optimizer | Sequence[torch.optim.Optimizer],
                batch_size: int, seed: int, device: torch.device, *,
                forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
                penalty: Callable[[], torch.Tensor] | None = None, after_step: Callable[[], None] | None = None,
                amp: torch.dtype | None = None, grad_clip: float = 0.0, epoch: int | None = None,
                scaler: torch.amp.GradScaler | None = None) -> float:
    """One pass over the training split (order fixed by ``seed``), the one epoch loop of every
    training-based method; returns the mean task loss.

    Each batch is one :func:`train_step` (``forward`` replaces ``model(x)``, e.g. with fake-quantized
    weights; ``penalty()`` is added to the objective, e.g. LC's quadratic term or DiffQ's λ · size),
    then ``after_step()`` (e.g. DiffQ's budget controller). Everything per step stays on ``device``:
    the loss is summed there and read once, at the end of the epoch, which raises
    :class:`FloatingPointError` when it is NaN/inf (a diverged run), naming ``epoch`` when given
    (with ``all_ranks`` true in a job of several processes: every rank raises it at that point).

    In a job of several processes (:mod:`quantbench.distributed`) each rank computes its share
    ``batch[rank::world]`` of every global batch of ``batch_size`` and the gradients are averaged:
    by :class:`~torch.nn.parallel.DistributedDataParallel` when the forward is ``model(x)``, by an
    all-reduce of the same average (:func:`~quantbench.distributed.average_gradients`) for a
    ``forward`` that calls the bare module (``torch.func.functional_call`` bypasses a DDP wrapper's
    forward, which is where DDP arms its gradient hooks) and for optimized tensors that are not the
    module's parameters (LSQ's step sizes). Every rank returns the global batch's mean loss.
    """
    optimizers = [optimizers] if isinstance(optimizers, torch.optim.Optimizer) else list(optimizers)
    model.train()
    rank, world = distributed.rank(), distributed.world_size()
    step_model, sync, n = model, None, len(task.train)
    if world > 1:
        in_module = {id(p) for p in model.parameters()}
        optimized = [p for opt in optimizers for g in opt.param_groups for p in g["params"]]
        if forward is None:
            step_model = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
            outside = [p for p in optimized if id(p) not in in_module]
        else:
            outside = optimized
        if outside:
            def sync() -> None:
                distributed.average_gradients(outside)
    total, count = torch.zeros((), device=device), 0
    for k, (x, y) in enumerate(task.loader("train", batch_size, seed=seed, shard=(rank, world))):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        weight, samples = None, y.numel()
        if world > 1:  # this rank's share of the global batch: W · n_r / n, 0 for a placeholder sample
            batch_len = min(batch_size, n - k * batch_size)
            mine = distributed.share(batch_len, rank, world)
            weight, samples = world * mine / batch_len, y.numel() if mine else 0
        loss = train_step(step_model, task, optimizers, x, y, forward, penalty, after_step, amp, grad_clip,
                          weight, sync, scaler)
        total += loss.float() * samples
        count += samples
    if world > 1:
        sums = distributed.all_sum(torch.stack([total, torch.tensor(float(count), device=device)]))
        total, count = sums[0], int(sums[1])
    mean = float(total) / count
    if not math.isfinite(mean):
        error = FloatingPointError(f"training loss is {mean}" + ("" if epoch is None else f" at epoch {epoch}"))
        error.all_ranks = world > 1  # the mean is summed over the ranks: every rank raises it here
        raise error
    return mean


class _StraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, q):
        return q

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def straight_through(w: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Forward ``q`` (a quantized ``w``), backward the identity to ``w`` (the STE)."""
    return _StraightThrough.apply(w, q)


def train_quantized(model: nn.Module, task: Task, forward_weights: Callable[[str, torch.Tensor], torch.Tensor],
                    names: list[str], *, epochs: int, optimizer: str, lr: float, momentum: float, batch_size: int,
                    seed: int, device: torch.device, extra_params=(), progress=range,
                    log: Callable[[float, int], None] | None = None) -> None:
    """Train ``model`` with each parameter in ``names`` replaced, in the forward pass, by
    ``forward_weights(name, parameter)`` (a fake-quantized weight, usually via the STE)."""
    params = dict(model.named_parameters())
    opt = make_optimizer(list(model.parameters()) + list(extra_params), optimizer, lr, momentum)

    def forward(x: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(model, {n: forward_weights(n, params[n]) for n in names}, (x,))

    for epoch in progress(range(epochs)):
        loss = train_epoch(model, task, opt, batch_size, derive_seed(seed, DATA_ORDER, epoch), device,
                           forward=forward, epoch=epoch)
        if log is not None:
            log(loss, epoch)


def train(model: nn.Module, task: Task, s: TrainSettings, seed: int, device: torch.device,
          show_progress: bool = True) -> list[float]:
    """Train ``model`` in place (the reference recipe); returns the mean training loss per epoch."""
    model.to(device)
    opt = make_optimizer(model.parameters(), s.optimizer, s.lr, s.momentum, s.weight_decay)
    sched = make_schedule(opt, s)
    amp = amp_dtype(device, s.amp)
    scaler = grad_scaler(device, amp)
    history = []
    bar = tqdm(range(s.epochs), desc="train", disable=not show_progress, mininterval=2.0)
    for epoch in bar:
        order = derive_seed(seed, REFERENCE_DATA_ORDER, epoch)
        history.append(train_epoch(model, task, opt, s.batch_size, order, device, amp=amp, grad_clip=s.grad_clip,
                                   epoch=epoch, scaler=scaler))
        bar.set_postfix(loss=f"{history[-1]:.4f}")
        sched.step()
    return history


def reference_key(task: str, task_params: dict, arch: str, arch_params: dict, seed: int,
                  settings: TrainSettings) -> dict:
    """Everything a reference checkpoint depends on."""
    return {"task": task, "task_params": task_params, "arch": arch, "arch_params": arch_params,
            "seed": seed, "train": asdict(settings), "torch": torch.__version__.split("+")[0]}


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes (checkpoint and artifact integrity)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def save_checkpoint(state: dict, path: Path) -> None:
    """Write atomically (a temp file, then rename) so an interrupted job leaves nothing half-written."""
    write_atomic(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path, model: nn.Module) -> nn.Module:
    if not path.is_file():
        raise FileNotFoundError(f"reference checkpoint {path} does not exist; rerun the reference rule")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as e:  # a damaged or foreign file
        raise ValueError(f"reference checkpoint {path} cannot be loaded into {type(model).__name__}: {e}") from e
    return model
