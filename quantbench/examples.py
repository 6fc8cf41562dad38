"""The per-example record of one evaluation (``examples.npz``): what a paired test over test
examples needs (:class:`Examples`), with the identity of the split it saw (:func:`split_identity`).
Each metric is a ratio of sums over examples, ``metric = f(Σ_i w_i·num_i / Σ_i w_i·den_i)``
(:func:`metric_from_ratio`); :mod:`quantbench.report.stats` draws its intervals and tests from it."""

from __future__ import annotations

import hashlib
import io
import json
import math
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from quantbench.errors import ExamplesError

EXAMPLES_FILE = "examples.npz"


@dataclass(frozen=True)
class Examples:
    """Per-example outcomes of one evaluation. ``numerator``/``denominator``: per example
    (classification: ``correct`` in 0/1 and 1; language modelling: per block, the summed loss in
    nats and the token count); ``loss``: per-example cross-entropy (classification only, else
    None); ``split``: what was evaluated, in order (two results are paired only when equal)."""

    kind: str  # "classification" or "language_modeling"
    numerator: np.ndarray
    denominator: np.ndarray
    split: dict
    loss: np.ndarray | None = None

    @property
    def n(self) -> int:
        return len(self.numerator)

    def metric(self, name: str, weights: np.ndarray | None = None) -> np.ndarray | float:
        """The task metric ``name`` from the examples (``weights``: one row of counts per bootstrap
        replicate, shape (B, n); None: every example once, a float)."""
        num, den = self._terms(name)
        if weights is None:
            return float(metric_from_ratio(name, np.array([num.sum() / den.sum()]))[0])
        return metric_from_ratio(name, (weights @ num) / (weights @ den))

    def _terms(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        num, den = self.numerator.astype(np.float64), self.denominator.astype(np.float64)
        if self.kind == "classification" and name == "loss":
            if self.loss is None:
                raise ExamplesError("these per-example results carry no per-example loss")
            return self.loss.astype(np.float64), den
        if self.kind == "classification" and name not in ("accuracy", "error"):
            raise ExamplesError(f"no per-example form of the classification metric {name!r}")
        if self.kind == "language_modeling" and name not in ("perplexity", "loss", "bits_per_token"):
            raise ExamplesError(f"no per-example form of the language-modelling metric {name!r}")
        return num, den

    def save(self, path: str | Path) -> Path:
        """``path`` (an ``.npz``): correctness as a bitmap, losses as float32, counts as int32."""
        arrays = {"split": np.array(json.dumps(self.split, sort_keys=True)), "kind": np.array(self.kind)}
        if self.kind == "classification":
            arrays["correct_bits"] = np.packbits(self.numerator.astype(bool))
            arrays["n"] = np.array(self.n)
            if self.loss is not None:
                arrays["loss"] = self.loss.astype(np.float32)
        else:
            arrays["loss_sum"] = self.numerator.astype(np.float32)
            arrays["tokens"] = self.denominator.astype(np.int32)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        Path(path).write_bytes(buffer.getvalue())
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> Examples:
        """Read what :meth:`save` wrote; an :class:`ExamplesError` naming the file otherwise."""
        try:
            with np.load(path, allow_pickle=False) as f:
                kind, split = str(f["kind"]), json.loads(str(f["split"]))
                if kind == "classification":
                    n = int(f["n"])
                    correct = np.unpackbits(f["correct_bits"], count=n).astype(np.float64)
                    loss = f["loss"].astype(np.float64) if "loss" in f else None
                    out = cls(kind, correct, np.ones(n), split, loss)
                elif kind == "language_modeling":
                    out = cls(kind, f["loss_sum"].astype(np.float64), f["tokens"].astype(np.float64), split)
                else:
                    raise ValueError(f"unknown kind {kind!r}")
        except (OSError, EOFError, zipfile.BadZipFile, KeyError, ValueError, TypeError) as e:  # truncated, garbled
            raise ExamplesError(f"{path}: not a per-example results file ({EXAMPLES_FILE}): "
                                f"{type(e).__name__}: {e}") from None
        if not isinstance(split, dict) or split.get("n") != out.n or len(out.denominator) != out.n:
            raise ExamplesError(f"{path}: its split says {split.get('n') if isinstance(split, dict) else split!r} "
                                f"examples, its arrays hold {out.n}")
        return out


def split_identity(task: str, split: str, targets: Iterable) -> dict:
    """What an evaluation saw: ``task``, ``split``, ``n`` (examples or blocks) and the sha256 of
    the targets in order (``targets``: one array-like per batch; the first axis counts)."""
    digest, n = hashlib.sha256(), 0
    for t in targets:
        t = np.ascontiguousarray(np.asarray(t, dtype=np.int64))
        digest.update(t.tobytes())
        n += len(t)
    return {"task": task, "split": split, "n": n, "order_sha256": digest.hexdigest()}


def metric_from_ratio(name: str, ratio: np.ndarray) -> np.ndarray:
    """``f(Σ num / Σ den)`` for the metric ``name`` (see the module docstring)."""
    if name == "error":
        return 100.0 - 100.0 * ratio
    if name == "accuracy":
        return 100.0 * ratio
    if name == "perplexity":
        return np.exp(np.minimum(ratio, 700.0))
    if name == "bits_per_token":
        return ratio / math.log(2)
    return ratio  # loss


def chance_level(metric: str, classes: int) -> float:
    """The metric of a uniform guess over ``classes`` (a task's classes, or an LM's vocabulary):
    accuracy 100/K, error 100 − 100/K, perplexity K, loss ln K, bits per token log2 K."""
    return {"accuracy": 100.0 / classes, "error": 100.0 - 100.0 / classes, "perplexity": float(classes),
            "loss": math.log(classes), "bits_per_token": math.log2(classes)}.get(metric, math.nan)
