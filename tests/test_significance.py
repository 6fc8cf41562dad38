"""Intervals, bold and ``quantbench compare`` on hand-made MLflow records whose per-example
results have known differences: a clearly better cell is bold alone, two equal cells are both bold."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from conftest import write_run

from quantbench.cli import main
from quantbench.stats import CI_EXAMPLES, CI_SEEDS, EXAMPLES_FILE, Examples, paired_difference
from quantbench.tables import tables_from_mlflow
from quantbench.tracking import Tracker

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
            split: dict = SPLIT, examples: bool = True, starts_from: str | None = None) -> None:
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
        metrics = {"accuracy": 100 * right.mean(), "bpw": bpw if method else 32.0,
                   "compression_ratio": 32.0 / bpw if method else 1.0}
        write_run(self.tracker, self.exp, cell, metrics, tags, files)

    def tables(self, alpha: float = 0.05) -> tuple[pd.DataFrame, str]:
        out = self.tmp / "tables"
        tables_from_mlflow(self.uri, self.name, out, alpha=alpha)
        return pd.read_csv(out / "digits.csv"), (out / "digits.md").read_text()


def test_a_clearly_better_cell_is_bold_alone_and_equal_cells_share_it(tmp_path):
    rec = Record(tmp_path)
    rec.run(None, None, 0, correctness(0.97, 0))
    good = correctness(0.92, 1)
    twin = good.copy()
    twin[np.flatnonzero(good)[:2]] = 0  # two examples fewer: 91.39 vs 91.94, one image is 0.28 points
    rec.run("good", 2, 0, good)
    rec.run("twin", 2, 0, twin)
    rec.run("bad", 2, 0, np.where(np.arange(N) % 3 == 0, 0.0, good))  # loses a third of good's hits
    rec.run("alone", 4, 0, correctness(0.95, 2), bpw=4.0)
    rec.run("far", 4, 0, correctness(0.50, 3), bpw=4.0)
    csv, md = rec.tables()
    cells = csv.set_index(["method", "budget"])
    assert cells.loc[("good", 2), "best"] and cells.loc[("twin", 2), "best"]
    assert not cells.loc[("bad", 2), "best"] and cells.loc[("bad", 2), "p_vs_best"] < 0.05
    assert cells.loc[("twin", 2), "p_vs_best"] >= 0.05
    assert cells.loc[("alone", 4), "best"] and not cells.loc[("far", 4), "best"]
    assert (cells["ci_kind"].dropna() == CI_EXAMPLES).all() and (cells["n_seeds"] == 1).all()
    # the interval of one run: test-set noise, about ±2.8 points for 92 % of 360 examples
    half = (cells.loc[("good", 2), "ci_high"] - cells.loc[("good", 2), "ci_low"]) / 2
    assert 100 * 1.96 * math.sqrt(0.92 * 0.08 / N) == pytest.approx(half, rel=0.15)
    rows = {line.split("|")[3].strip(): line for line in md.splitlines() if line.startswith("| mlp")}
    assert f"**91.94** ± {half:.2f} (2.00 bpw" in rows["good"] and "**91.39** ±" in rows["twin"]
    assert "| 61.39 ±" in rows["bad"]
    assert "bootstrap over the test examples" in md and "Holm" in md


def test_holm_keeps_a_column_of_small_differences_bold(tmp_path):
    """Three cells each a little below the best (12 examples lost, 4 gained: uncorrected p below
    0.05): Holm over the column's three comparisons lifts them above 0.05, so they stay bold;
    at α = 0.5 none of them does."""
    rec = Record(tmp_path)
    best = correctness(0.9, 5)
    rec.run("best", 2, 0, best)
    hits, misses = np.flatnonzero(best), np.flatnonzero(best == 0)
    cells = {}
    for k, name in enumerate(("a", "b", "c")):
        worse = best.copy()
        worse[hits[12 * k:12 * k + 12]] = 0
        worse[misses[4 * k:4 * k + 4]] = 1
        rec.run(name, 2, 0, worse)
        cells[name] = worse
    uncorrected = [paired_difference("accuracy", [_examples(cells[n])], [_examples(best)]).p_value for n in "abc"]
    assert max(uncorrected) < 0.05 and 3 * min(uncorrected) >= 0.05
    csv, _ = rec.tables()
    marks = csv.set_index("method")
    assert all(marks.loc[n, "best"] and marks.loc[n, "p_vs_best"] >= 0.05 for n in "abc")
    csv, _ = rec.tables(alpha=0.5)
    assert list(csv[csv["best"]]["method"]) == ["best"]


def _examples(right: np.ndarray) -> Examples:
    return Examples("classification", right, np.ones(N), SPLIT)


def test_three_seeds_get_a_t_interval_and_are_paired_by_seed(tmp_path):
    rec = Record(tmp_path)
    for seed in range(3):
        base = correctness(0.90 + 0.01 * seed, 10 + seed)
        rec.run(None, None, seed, base)
        rec.run("same", 2, seed, base)
        copy = base.copy()
        copy[np.flatnonzero(base)[:1]] = 0
        rec.run("copy", 2, seed, copy)
    csv, md = rec.tables()
    cells = csv.set_index("method")
    assert cells.loc["same", "ci_kind"] == CI_SEEDS and cells.loc["same", "n_seeds"] == 3
    assert cells.loc["same", "best"] and cells.loc["copy", "best"]
    assert "t interval over the seeds" in md


def test_cells_without_per_example_results_are_bold_only_as_the_best(tmp_path):
    rec = Record(tmp_path)
    rec.run("old", 2, 0, correctness(0.9, 1), examples=False)
    rec.run("older", 2, 0, correctness(0.89, 2), examples=False)
    csv, md = rec.tables()
    cells = csv.set_index("method")
    assert cells.loc["old", "best"] and not cells.loc["older", "best"] and math.isnan(cells.loc["older", "p_vs_best"])
    assert "no interval" in md


def test_compare_prints_the_difference_its_interval_and_a_verdict(tmp_path, capsys):
    rec = Record(tmp_path)
    good = correctness(0.92, 1)
    rec.run("good", 2, 0, good)
    rec.run("bad", 2, 0, np.where(np.arange(N) % 3 == 0, 0.0, good))
    rec.run("twin", 2, 0, good)
    args = ["compare", "--experiment", "s", "--tracking-uri", rec.uri, "--task", "digits", "--arch", "mlp",
            "--budget", "2"]
    assert main(args + ["good", "bad"]) == 0
    out = capsys.readouterr().out
    hits = good.sum()
    lost = good[np.arange(N) % 3 == 0].sum()
    assert f"{100 * lost / N:+.4g}" in out and "verdict: good better" in out
    assert "1 seed(s) × 360 test examples" in out
    assert main(args + ["bad", "good"]) == 0 and "verdict: good better" in capsys.readouterr().out
    assert main(args + ["good", "twin"]) == 0
    out = capsys.readouterr().out
    assert "verdict: no detectable difference" in out and "p = 1" in out
    assert hits > lost


def test_compare_names_a_cell_that_was_not_run(tmp_path, capsys):
    rec = Record(tmp_path)
    rec.run("good", 2, 0, correctness(0.9, 1))
    args = ["compare", "--experiment", "s", "--tracking-uri", rec.uri, "--task", "digits", "--arch", "mlp",
            "--budget", "2", "good"]
    assert main(args + ["missing"]) != 0
    assert "digits/mlp missing at 2 bits: not run" in capsys.readouterr().err


def test_compare_refuses_cells_evaluated_on_different_examples(tmp_path, capsys):
    rec = Record(tmp_path)
    rec.run("good", 2, 0, correctness(0.9, 1))
    rec.run("other", 2, 0, correctness(0.9, 2), split={**SPLIT, "order_sha256": "cd" * 32})
    args = ["compare", "--experiment", "s", "--tracking-uri", rec.uri, "--task", "digits", "--arch", "mlp",
            "--budget", "2", "good", "other"]
    assert main(args) != 0
    assert "not evaluated on the same examples" in capsys.readouterr().err
