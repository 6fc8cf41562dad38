"""Training loop and the content-addressed reference cache."""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from quantbench.data import Task


@dataclass
class TrainSettings:
    """Reference training recipe (config: ``reference``)."""

    epochs: int = 30
    batch_size: int = 64
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0005
    lr_schedule: Literal["cosine", "constant"] = "cosine"


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch, and ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def make_optimizer(params, s: TrainSettings) -> torch.optim.Optimizer:
    if s.optimizer == "sgd":
        return torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)
    return torch.optim.Adam(params, lr=s.lr, weight_decay=s.weight_decay)


def train(model: nn.Module, task: Task, s: TrainSettings, seed: int, device: torch.device,
          show_progress: bool = True) -> list[float]:
    """Train ``model`` in place; returns the mean training loss of every epoch.

    Raises :class:`FloatingPointError` when the loss becomes NaN/inf (a diverged run).
    """
    model.to(device).train()
    opt = make_optimizer(model.parameters(), s)
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, s.epochs))
             if s.lr_schedule == "cosine" else None)
    history = []
    bar = tqdm(range(s.epochs), desc="train", disable=not show_progress, mininterval=2.0)
    for epoch in bar:
        total, n = 0.0, 0
        for x, y in task.loader("train", s.batch_size, seed=seed * 10_007 + epoch):
            x, y = x.to(device), y.to(device)
            opt.zero_grad(set_to_none=True)
            loss = task.loss(model(x), y)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training loss is {loss.item()} at epoch {epoch}")
            loss.backward()
            opt.step()
            total += loss.item() * y.numel()
            n += y.numel()
        history.append(total / n)
        bar.set_postfix(loss=f"{history[-1]:.4f}")
        if sched is not None:
            sched.step()
    return history


def content_hash(obj: dict) -> str:
    """sha256 of the canonical JSON of ``obj`` (the reference cache key)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def reference_key(task: str, task_params: dict, arch: str, arch_params: dict, seed: int,
                  settings: TrainSettings) -> dict:
    """Everything a reference checkpoint depends on."""
    return {"task": task, "task_params": task_params, "arch": arch, "arch_params": arch_params,
            "seed": seed, "train": asdict(settings), "torch": torch.__version__.split("+")[0]}


def save_checkpoint(state: dict, path: Path) -> None:
    """Write atomically (a temp file, then rename) so an interrupted job leaves nothing half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, model: nn.Module) -> nn.Module:
    if not path.is_file():
        raise FileNotFoundError(f"reference checkpoint {path} does not exist; rerun the reference rule")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as e:  # a damaged or foreign file
        raise ValueError(f"reference checkpoint {path} cannot be loaded into {type(model).__name__}: {e}") from e
    return model
