"""Tasks: a dataset split, its loss and its metric. One registry, one builder per task.

``digits``: scikit-learn's 8x8 handwritten digits (1,797 images, ships with scikit-learn),
pixels scaled to [0, 1], a fixed stratified train/test split (``split_seed``, default 0) that
does not depend on the cell's seed, so every seed is evaluated on the same test images.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from quantbench.method import ConfigError


@dataclass
class Task:
    """Train/test data of a classification task, evaluated by top-1 accuracy (%)."""

    name: str
    train: TensorDataset
    test: TensorDataset
    input_shape: tuple[int, ...]
    num_classes: int
    metric: str = "accuracy"  # reported in percent; higher is better
    higher_is_better: bool = True

    def loader(self, split: str, batch_size: int, seed: int | None = None) -> DataLoader:
        """Batches of ``split``; shuffled (by ``seed``) when a seed is given, in order otherwise."""
        data = {"train": self.train, "test": self.test}[split]
        gen = None if seed is None else torch.Generator().manual_seed(seed)
        return DataLoader(data, batch_size=batch_size, shuffle=seed is not None, generator=gen)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(output, target)

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, batch_size: int = 512, device: str | torch.device = "cpu") -> dict:
        """``{"accuracy": %, "error": %, "loss": mean cross-entropy}`` on the test split."""
        model.eval()
        correct, loss, n = 0, 0.0, 0
        for x, y in self.loader("test", batch_size):
            x, y = x.to(device), y.to(device)
            out = model(x)
            loss += torch.nn.functional.cross_entropy(out, y, reduction="sum").item()
            correct += (out.argmax(dim=1) == y).sum().item()
            n += y.numel()
        acc = 100.0 * correct / n
        return {"accuracy": acc, "error": 100.0 - acc, "loss": loss / n}


_TASKS: dict[str, Callable[..., Task]] = {}


def register_task(fn: Callable[..., Task]) -> Callable[..., Task]:
    _TASKS[fn.__name__] = fn
    return fn


def available_tasks() -> list[str]:
    return sorted(_TASKS)


def build_task(name: str, root: str = "data", download: bool = False, **kwargs) -> Task:
    """The one place tasks are built; ``root``/``download`` are for tasks with files."""
    if name not in _TASKS:
        raise ConfigError(f"unknown task {name!r}; available: {available_tasks()}")
    try:
        return _TASKS[name](root=root, download=download, **kwargs)
    except TypeError as e:
        raise ConfigError(f"task_params.{name}: {e}") from e


@register_task
def digits(root: str = "data", download: bool = False, test_fraction: float = 0.2, split_seed: int = 0) -> Task:
    """scikit-learn's digits; offline (the data ships with scikit-learn)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None, :, :]
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_fraction, random_state=split_seed, stratify=y)
    return Task(
        name="digits",
        train=TensorDataset(torch.from_numpy(x_tr), torch.from_numpy(y_tr)),
        test=TensorDataset(torch.from_numpy(x_te), torch.from_numpy(y_te)),
        input_shape=(1, 8, 8),
        num_classes=10,
    )
