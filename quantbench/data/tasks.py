"""Tasks and their loaders: what a task is (:class:`Task`, :class:`LanguageModelingTask`: a dataset
split, its loss and its metric), how its batches are made (:class:`Pipeline`, :class:`EpochOrder`,
per-sample seeded augmentation) and the one entry point, :func:`build_task`.

The builders themselves are in :mod:`quantbench.data.datasets`, registered on ``import quantbench.data``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from quantbench.examples import Examples, split_identity
from quantbench.method import SAMPLE, derive_seed
from quantbench.registry import TASKS, check_kwargs


@dataclass(frozen=True)
class Pipeline:
    """How a task's batches are made (config ``loaders.<task>``; not part of a job's identity: the
    batches are the same whatever these are). ``workers``: loader processes (0: in the training
    process); ``pin_memory``: page-locked batches for non-blocking copies to a GPU (used only when
    one is present); ``persistent_workers``: keep the worker processes from epoch to epoch."""

    workers: int = 0
    pin_memory: bool = True
    persistent_workers: bool = True


class EpochOrder(Sampler):
    """The sample order of one epoch, ``(seed, index)`` pairs: a permutation drawn from ``seed``
    (exactly the order of ``DataLoader(shuffle=True, generator=Generator().manual_seed(seed))``),
    or ``range(n)`` without a seed. The loader is kept across epochs; ``epoch(seed)`` sets the next
    one, and the seed travels with each index, so persistent workers see it too."""

    def __init__(self, n: int) -> None:
        self.n, self.seed = n, None

    def epoch(self, seed: int | None) -> EpochOrder:
        self.seed = seed
        return self

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        if self.seed is None:
            return iter((None, i) for i in range(self.n))
        gen = torch.Generator().manual_seed(self.seed)
        torch.empty((), dtype=torch.int64).random_(generator=gen)  # what DataLoader draws first from it
        return iter((self.seed, i) for i in torch.randperm(self.n, generator=gen).tolist())


class SeededSamples(Dataset):
    """``dataset[i]`` for ``(seed, i)``; with ``augmented``, the torch generator is seeded from
    (seed, i) while the sample is made (and restored after), so its random augmentation is the same
    in whichever process, worker or position it is loaded."""

    def __init__(self, dataset: Dataset, augmented: bool) -> None:
        self.dataset, self.augmented = dataset, augmented

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int | None, int]):
        seed, i = key
        if not self.augmented or seed is None:
            return self.dataset[i]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, SAMPLE, i))
            return self.dataset[i]


@dataclass
class Task:
    """Train/test data of a classification task, evaluated by top-1 accuracy (%)."""

    name: str
    train: Dataset
    test: Dataset
    input_shape: tuple[int, ...]
    num_classes: int
    metric: str = "accuracy"  # reported in percent; higher is better
    higher_is_better: bool = True
    augmented: bool = False  # the train split draws random augmentation (seeded per sample)
    pipeline: Pipeline = field(default_factory=Pipeline)
    _loaders: dict = field(default_factory=dict, repr=False, compare=False)

    def loader(self, split: str, batch_size: int, seed: int | None = None,
               shard: tuple[int, int] = (0, 1)) -> DataLoader:
        """Batches of ``split``; shuffled (by ``seed``) when a seed is given, in order otherwise.
        ``shard=(rank, world)`` with ``world > 1``: rank's share ``batch[rank::world]`` of each
        global batch of ``batch_size`` (:class:`~quantbench.distributed.ShardedBatches`).
        One loader per (split, batch size, shuffled or not, shard) is kept, so worker processes persist."""
        key = (split, batch_size, seed is not None, tuple(shard))
        if key not in self._loaders:
            data = {"train": self.train, "test": self.test}[split]
            p = self.pipeline
            extra = {"persistent_workers": p.persistent_workers} if p.workers > 0 else {}
            if shard[1] > 1:
                from quantbench.distributed import ShardedBatches

                batching = {"batch_sampler": ShardedBatches(EpochOrder(len(data)), batch_size, *shard)}
            else:
                batching = {"batch_size": batch_size, "sampler": EpochOrder(len(data))}
            self._loaders[key] = DataLoader(
                SeededSamples(data, self.augmented and split == "train"), **batching, num_workers=p.workers,
                pin_memory=p.pin_memory and torch.cuda.is_available(),
                generator=torch.Generator(),  # the loader's own draws never touch the global generator
                **extra)
        loader = self._loaders[key]
        (loader.batch_sampler if shard[1] > 1 else loader.sampler).epoch(seed)
        return loader

    def use_eval_transform(self, transform: Callable, what: str) -> None:
        """Preprocess the test split with ``transform`` instead of the task's own (``what`` names
        whose it is: a pretrained reference's, :mod:`quantbench.models.pretrained`); train is unchanged."""
        if not hasattr(self.test, "transform"):
            raise ValueError(f"task {self.name}: its test split ({type(self.test).__name__}) takes no image "
                             f"transform, so it cannot be preprocessed as {what} declare")
        self.test.transform = transform
        self._loaders = {key: loader for key, loader in self._loaders.items() if key[0] != "test"}

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy; class scores on the last axis (any leading shape)."""
        return torch.nn.functional.cross_entropy(output.reshape(-1, output.shape[-1]), target.reshape(-1))

    def evaluate(self, model: torch.nn.Module, batch_size: int = 512, device: str | torch.device = "cpu") -> dict:
        """``{"accuracy": %, "error": %, "loss": mean cross-entropy}`` on the test split."""
        return self.evaluate_examples(model, batch_size, device)[0]

    @torch.no_grad()
    def evaluate_examples(self, model: torch.nn.Module, batch_size: int = 512,
                          device: str | torch.device = "cpu") -> tuple[dict, Examples]:
        """The metrics of :meth:`evaluate` and the per-example outcomes behind them
        (:class:`~quantbench.report.stats.Examples`: correctness and loss of every test example, in order)."""
        model.eval()
        loss = 0.0
        hits, losses, targets = [], [], []
        for x, y in self.loader("test", batch_size):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            out = model(x)
            # the summed loss as it always was (the recorded metric, bit for bit); the per-example one beside it
            loss += torch.nn.functional.cross_entropy(out, y, reduction="sum").item()
            losses.append(torch.nn.functional.cross_entropy(out, y, reduction="none").float().cpu().numpy())
            hits.append((out.argmax(dim=1) == y).cpu().numpy())
            targets.append(y.cpu().numpy())
        hit_all = np.concatenate(hits).astype(np.float64)
        n = len(hit_all)
        acc = 100.0 * float(hit_all.sum()) / n  # a sum of 0/1 in float64 is the count, exactly
        examples = Examples("classification", hit_all, np.ones(n), split_identity(self.name, "test", targets),
                            np.concatenate(losses))
        return {"accuracy": acc, "error": 100.0 - acc, "loss": loss / n}, examples


@dataclass
class LanguageModelingTask(Task):
    """Next-token prediction on blocks of tokens; ``num_classes`` is the vocabulary size."""

    metric: str = "perplexity"
    higher_is_better: bool = False
    vocabulary: tuple[str, ...] = ()

    def evaluate(self, model: torch.nn.Module, batch_size: int = 64, device: str | torch.device = "cpu") -> dict:
        return self.evaluate_examples(model, batch_size, device)[0]

    @torch.no_grad()
    def evaluate_examples(self, model: torch.nn.Module, batch_size: int = 64,
                          device: str | torch.device = "cpu") -> tuple[dict, Examples]:
        """``{"perplexity": exp(loss), "loss": mean NLL per token (nats), "bits_per_token"}`` on
        test, and per block its summed loss and token count (:class:`~quantbench.report.stats.Examples`)."""
        model.eval()
        total, n = 0.0, 0
        sums, counts, targets = [], [], []
        for x, y in self.loader("test", batch_size):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            out = model(x)
            flat_out, flat_y = out.reshape(-1, out.shape[-1]), y.reshape(-1)
            # the summed loss as it always was (the recorded metric, bit for bit); the per-token one beside it
            total += torch.nn.functional.cross_entropy(flat_out, flat_y, reduction="sum").item()
            each = torch.nn.functional.cross_entropy(flat_out, flat_y, reduction="none")
            n += y.numel()
            sums.append(each.double().reshape(y.shape[0], -1).sum(dim=1).cpu().numpy())
            counts.append(np.full(y.shape[0], y[0].numel()))
            targets.append(y.reshape(y.shape[0], -1).cpu().numpy())
        loss = total / n
        examples = Examples("language_modeling", np.concatenate(sums), np.concatenate(counts),
                            split_identity(self.name, "test", targets))
        return {"perplexity": math.exp(min(loss, 700.0)), "loss": loss, "bits_per_token": loss / math.log(2)}, examples


def available_tasks() -> list[str]:
    return TASKS.names()


def build_task(name: str, root: str = "data", download: bool = False, **kwargs) -> Task:
    """The one place tasks are built; ``root``/``download`` are for tasks with files."""
    fn = TASKS.get(name)
    check_kwargs(fn, kwargs, f"task_params.{name}")
    return fn(root=root, download=download, **kwargs)
