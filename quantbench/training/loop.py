"""The one training schedule (:class:`Schedule`), the training loop, and the content-addressed reference cache."""

from __future__ import annotations

import hashlib
import math
import os
import random
from collections.abc import Callable, Iterable, Sequence
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
from quantbench.errors import ConfigError
from quantbench.files import write_atomic
from quantbench.method import DATA_ORDER, REFERENCE_DATA_ORDER, RunContext, Trainer, derive_seed


@dataclass
class Schedule:
    """A training schedule, the one of every training method and of the reference (config: the
    method's ``method_params.<method>`` keys, the reference's ``reference`` / ``recipes``).

    ``epochs`` over the training split in batches of ``batch_size``; ``optimizer`` SGD (with
    ``momentum``), Adam or AdamW at ``lr`` with ``weight_decay``; ``lr_schedule`` the per-epoch
    factor: constant, cosine to 0 over ``epochs``, or step (× ``gamma`` at each epoch in
    ``milestones``), after ``warmup_epochs`` of linear warm-up; ``grad_clip`` the max global gradient
    norm of an update (0: none). Checked when made: a value out of range is a ConfigError naming it.
    The defaults are the methods' (a short constant-rate finetune); the reference's are
    :class:`TrainSettings`'."""

    epochs: int = 10
    batch_size: int = 64
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_schedule: Literal["cosine", "constant", "step"] = "constant"
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    warmup_epochs: int = 0
    grad_clip: float = 0.0

    def __post_init__(self) -> None:
        checks = {
            "epochs": (self.epochs >= 0, "an integer >= 0"),
            "batch_size": (self.batch_size >= 1, "an integer >= 1"),
            "lr": (self.lr > 0, "a learning rate above 0"),
            "momentum": (0 <= self.momentum < 1, "a momentum in [0, 1)"),
            "weight_decay": (self.weight_decay >= 0, "a weight decay >= 0"),
            "gamma": (self.gamma > 0, "a factor above 0"),
            "warmup_epochs": (0 <= self.warmup_epochs <= self.epochs, f"an integer in [0, epochs = {self.epochs}]"),
            "milestones": (all(0 < m <= self.epochs for m in self.milestones)
                           and list(self.milestones) == sorted(set(self.milestones)),
                           f"increasing epochs in (0, epochs = {self.epochs}]"),
            "grad_clip": (self.grad_clip >= 0, "a norm >= 0 (0: no clipping)"),
        }
        for key, (ok, expected) in checks.items():
            if not ok:  # NaN fails every comparison, so it lands here too
                raise ConfigError(f"{key}: {getattr(self, key)!r} is out of range; expected {expected}")

    def make_optimizer(self, params, lr_scale: float = 1.0) -> torch.optim.Optimizer:
        """The optimizer at ``lr · lr_scale`` (:func:`make_optimizer`)."""
        return make_optimizer(params, self.optimizer, self.lr * lr_scale, self.momentum, self.weight_decay)


@dataclass
class TrainSettings(Schedule):
    """The reference's training recipe (config: ``reference``, per (task, arch) ``recipes``): a
    :class:`Schedule` with the reference's defaults (cosine, weight decay), and

    ``amp``: mixed precision on CUDA (bfloat16 autocast where the GPU has it; float16 autocast with
    loss scaling, ``GradScaler``, where it does not: V100, T4), none on CPU. ``pretrained``: published
    weights to load instead of training (``torchvision:<Enum>.<name>``, ``timm:<model>.<tag>``, or a
    path / URL with ``pretrained_sha256``; :mod:`quantbench.models.pretrained`); the other keys are then unused.
    """

    epochs: int = 30
    lr: float = 0.05
    weight_decay: float = 0.0005
    lr_schedule: Literal["cosine", "constant", "step"] = "cosine"
    amp: bool = True
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


def make_schedule(opt: torch.optim.Optimizer, s: Schedule) -> torch.optim.lr_scheduler.LRScheduler:
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


def fit(model: nn.Module, task: Task, s: Schedule, seed: int, device: torch.device, *,
        params: Iterable[torch.Tensor] | None = None, forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
        penalty: Callable[[], torch.Tensor] | None = None, after_step: Callable[[], None] | None = None,
        stream: int = DATA_ORDER, order: Callable[[int], int] = lambda epoch: epoch, lr_scale: float = 1.0,
        amp: torch.dtype | None = None, progress: Callable[[Iterable], Iterable] = iter,
        log: Callable[[float, int], None] | None = None) -> list[float]:
    """Train ``model`` in place on the schedule ``s``: its optimizer over ``params`` (default: the
    model's) at ``lr · lr_scale``, its per-epoch learning-rate factor, its clipping; epoch e's batch
    order is ``derive_seed(seed, stream, order(e))``. ``forward``, ``penalty``, ``after_step`` and
    ``amp``: :func:`train_epoch`'s. Each epoch's mean task loss is passed to ``log(loss, epoch)``
    and returned."""
    opt = s.make_optimizer(model.parameters() if params is None else params, lr_scale)
    sched = make_schedule(opt, s)
    scaler = grad_scaler(device, amp)
    history = []
    for epoch in progress(range(s.epochs)):
        history.append(train_epoch(model, task, opt, s.batch_size, derive_seed(seed, stream, order(epoch)), device,
                                   forward=forward, penalty=penalty, after_step=after_step, amp=amp,
                                   grad_clip=s.grad_clip, epoch=epoch, scaler=scaler))
        sched.step()
        if log is not None:
            log(history[-1], epoch)
    return history


def fit_trainer(trainer: Trainer, ctx: RunContext, schedule: Schedule, name: str, *,
                desc: str | None = None, **kwargs) -> list[float]:
    """The harness's loop around a library :class:`~quantbench.method.Trainer`: :func:`fit` of
    ``schedule`` on the cell's training split and seed, over ``trainer.parameters()``; ``kwargs``
    go to :func:`fit` (``forward=trainer`` where its forward is not the model's own, ``penalty``,
    ...). The bar reads ``desc`` ("<NAME> epochs") and each epoch's mean task loss is logged as
    ``<name>/train_loss``."""
    return fit(trainer.model, ctx.task, schedule, ctx.seed, ctx.device, params=trainer.parameters(),
               progress=lambda it: ctx.progress(it, desc=desc or f"{name.upper()} epochs"),
               log=lambda loss, epoch: ctx.log_metric(f"{name}/train_loss", loss, epoch), **kwargs)


def train(model: nn.Module, task: Task, s: TrainSettings, seed: int, device: torch.device,
          show_progress: bool = True) -> list[float]:
    """Train ``model`` in place (the reference recipe); returns the mean training loss per epoch."""
    model.to(device)
    bar = tqdm(desc="train", total=s.epochs, disable=not show_progress, mininterval=2.0)

    def log(loss: float, epoch: int) -> None:
        bar.update()
        bar.set_postfix(loss=f"{loss:.4f}")

    history = fit(model, task, s, seed, device, stream=REFERENCE_DATA_ORDER, amp=amp_dtype(device, s.amp), log=log)
    bar.close()
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
