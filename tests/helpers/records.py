"""MLflow records made by hand: a run written as a job writes it, and a record of task digits,
arch mlp, whose runs carry per-example results with known differences."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from quantbench.report.stats import EXAMPLES_FILE, Examples
from quantbench.report.tables import tables_from_mlflow
from quantbench.tracking import Tracker


def write_run(tracker, experiment_id: str, run_name: str, metrics: dict[str, float], tags: dict[str, str],
              artifacts: list[Path] = (), status: str = "FINISHED") -> str:
    """A complete run written as a job writes it: opened with its tags, closed with its outcome."""
    run_id = tracker.start_run(experiment_id, run_name, {}, tags)
    tracker.finish_run(run_id, metrics, [], {}, list(artifacts), status)
    return run_id


N = 360
SPLIT = {"task": "digits", "split": "test", "n": N, "order_sha256": "ab" * 32}


def correctness(accuracy: float, seed: int) -> np.ndarray:
    """``N`` examples, the first ``accuracy`` of them right (in a seeded order)."""
    right = np.zeros(N)
    right[: round(accuracy * N)] = 1
    return np.random.default_rng(seed).permutation(right)


class Record:
    """An MLflow record of task digits, arch mlp, with per-example results on every run."""

    def __init__(self, tmp_path, name="s"):
        self.uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        self.tracker = Tracker(self.uri)
        self.name, self.tmp = name, tmp_path
        self.exp = self.tracker.ensure_experiment(name, tmp_path / "artifacts")

    def run(self, method: str | None, budget: float | None, seed: int, right: np.ndarray, bpw: float = 2.0,
            split: dict = SPLIT, examples: bool = True, starts_from: str | None = None, sha256: bool = True) -> None:
        kind = "cell" if method else "reference"
        cell = f"digits/mlp/{method}/b{budget:g}/s{seed}" if method else f"digits/mlp/reference/s{seed}"
        tags = {"kind": kind, "cell_id": cell, "task": "digits", "arch": "mlp", "seed": str(seed),
                "metric": "accuracy", "higher_is_better": "true", "status": "ok"}
        if method:
            tags.update(method=method, budget=f"{budget:g}")
        if starts_from:
            tags["starts_from"] = starts_from
        files = []
        if examples:
            path = self.tmp / f"{cell.replace('/', '_')}" / EXAMPLES_FILE
            path.parent.mkdir(parents=True, exist_ok=True)
            Examples("classification", right, np.ones(N), split).save(path)
            files.append(path)
            if sha256:  # as the harness records it (runs made before it have none)
                tags["examples_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        metrics = {"accuracy": 100 * right.mean(), "bpw": bpw if method else 32.0,
                   "compression_ratio": 32.0 / bpw if method else 1.0}
        write_run(self.tracker, self.exp, cell, metrics, tags, files)

    def tables(self, alpha: float = 0.05, margins: dict | None = None) -> tuple[pd.DataFrame, str]:
        out = self.tmp / "tables"
        tables_from_mlflow(self.uri, self.name, out, alpha=alpha, margins=margins)
        return pd.read_csv(out / "digits.csv"), (out / "digits.md").read_text()
