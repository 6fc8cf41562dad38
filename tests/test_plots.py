"""Plots: the Pareto front against brute force, and the files the tables command writes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from quantbench.method import StepCurve
from quantbench.report.plots import pareto_front, size_plot, steps_plot
from quantbench.report.summary import SIZE_TOLERANCE


@pytest.mark.parametrize("higher", [True, False])
def test_pareto_front_is_the_set_no_point_dominates(higher):
    """Without a tolerance: the classic front (no other point both no larger and better, or as good
    and smaller)."""
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(1, 30))
        size = rng.integers(1, 10, n).astype(float)  # ties in size on purpose
        metric = rng.integers(0, 10, n).astype(float)
        better = (lambda a, b: a > b) if higher else (lambda a, b: a < b)
        brute = set()
        for i in range(n):
            dominated = any(size[j] <= size[i] and (better(metric[j], metric[i]) or
                                                   (metric[j] == metric[i] and size[j] < size[i]))
                            for j in range(n) if j != i)
            if not dominated:
                brute.add((size[i], metric[i]))
        front = pareto_front(size, metric, higher, tolerance=0)
        assert {(size[i], metric[i]) for i in front} == brute
        assert list(size[front]) == sorted(size[front])


def brute_front(size, metric, higher, tolerance):
    """The points no other point dominates, O(n²): j dominates i when size_j <= size_i * (1 + tol)
    and j's metric is better, or the same with size_j < size_i."""
    out = set()
    for i in range(len(size)):
        for j in range(len(size)):
            if j == i or size[j] > size[i] * (1 + tolerance):
                continue
            strictly = metric[j] > metric[i] if higher else metric[j] < metric[i]
            if strictly or (metric[j] == metric[i] and size[j] < size[i]):
                break
        else:
            out.add((size[i], metric[i]))
    return out


@pytest.mark.parametrize("higher", [True, False])
@pytest.mark.parametrize("tolerance", [0.001, 0.01, 0.05])
def test_sizes_within_the_tolerance_count_as_equal_on_the_pareto_front(higher, tolerance):
    rng = np.random.default_rng(1)
    for _ in range(200):
        n = int(rng.integers(1, 25))
        budgets = rng.choice([1.0, 1.58, 2.0, 4.0], n)
        size = budgets * (1 + rng.choice([0, -1, 1], n) * rng.uniform(0, 3 * tolerance, n))  # near-equal sizes
        size[rng.random(n) < 0.2] = budgets[0]  # and some exactly equal
        metric = rng.integers(0, 6, n).astype(float)  # ties in the metric too
        front = pareto_front(size, metric, higher, tolerance)
        assert {(size[i], metric[i]) for i in front} == brute_front(size, metric, higher, tolerance)
        assert len(front) == len({(size[i], metric[i]) for i in front}) >= 1  # each point once, never empty
        # a staircase: by increasing size, strictly better
        assert all(size[a] <= size[b] for a, b in zip(front, front[1:], strict=False))
        score = metric[front] if higher else -metric[front]
        assert all(np.diff(score) > 0)


def test_a_point_about_as_small_and_far_worse_is_not_on_the_front():
    """OPQ at 0.99999 bpw and 10 % beside cells at 1.0007 bpw and 94 %: 1.0007 is within 1 %."""
    size, metric = np.array([0.99999, 1.0007, 1.0007, 2.0]), np.array([10.0, 94.0, 93.0, 96.0])
    assert list(pareto_front(size, metric, True, SIZE_TOLERANCE)) == [1, 3]
    assert list(pareto_front(size, metric, True, tolerance=1e-6)) == [0, 1, 3]  # tighter: 0.99999 is smaller
    assert list(pareto_front(size, -metric, False, SIZE_TOLERANCE)) == [1, 3]


def test_plots_are_written_as_png_and_pdf_and_draw_what_the_table_says(tmp_path, monkeypatch):
    import quantbench.report.plots as plots

    drawn, save = [], plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, *args: drawn.append(fig) or save(fig, *args))
    long = pd.DataFrame({
        "task": "digits", "arch": ["mlp"] * 4, "method": ["reference", "a", "a", "b"], "budget": [np.nan, 1, 2, 2],
        "metric": "accuracy", "mean": [97.0, 80.0, 95.0, 90.0], "status": "ok", "size_kib": [100.0, 4.0, 7.0, 7.5],
        "bpw": [32.0, 1.0, 2.0, 2.1], "family": ["reference", "LC", "LC", "DiffQ"], "higher_is_better": True,
        "ci_low": [96.0, 70.0, 94.0, 85.0], "ci_high": [98.0, 85.0, 96.0, 92.0]})
    paths = size_plot(long, "digits", tmp_path, SIZE_TOLERANCE)
    assert sorted(p.name for p in paths) == ["digits_size.pdf", "digits_size.png"]
    assert all(p.stat().st_size > 1000 for p in paths)
    ax = drawn[0].axes[0]
    methods = {c.get_label(): c for c in ax.containers}  # errorbar: (data line, caps, bars) per method
    lines = {line.get_label(): line for line in ax.get_lines()}
    # a line per method through its budgets, the reference dashed at its mean, and the front: b (2.1 bpw,
    # 90) is larger and worse than a at 2 bits
    a, b = methods["a"].lines[0], methods["b"].lines[0]
    assert (list(a.get_xdata()), list(a.get_ydata())) == ([1.0, 2.0], [80.0, 95.0])
    assert (list(b.get_xdata()), list(b.get_ydata())) == ([2.1], [90.0])
    assert list(lines["reference (fp32)"].get_ydata()) == [97.0, 97.0] and lines["reference (fp32)"].get_ls() == "--"
    assert (list(lines["Pareto front"].get_xdata()), list(lines["Pareto front"].get_ydata())) == ([1.0, 2.0],
                                                                                                  [80.0, 95.0])
    # each point's bar is the cell's spread, as the table prints it: a from 70 to 85 at 1 bit, 94 to 96 at 2
    bars = [seg[:, 1].tolist() for seg in methods["a"].lines[2][0].get_segments()]
    assert bars == [[70.0, 85.0], [94.0, 96.0]]
    histories = pd.DataFrame({"task": "digits", "cell_id": "digits/mlp/lc/b1/s0", "key": "lc/accuracy",
                              "step": [0, 1, 2], "value": [50.0, 80.0, 90.0]})
    curves = [StepCurve("lc/{metric}", "LC step", "{metric}"), StepCurve("mine/x", "my step", "x")]
    assert sorted(p.name for p in steps_plot(histories, "digits", "accuracy", curves, tmp_path)) == [
        "digits_steps.pdf", "digits_steps.png"]
    empty = steps_plot(histories.iloc[:0], "other", "accuracy", curves, tmp_path)
    assert sorted(p.name for p in empty) == ["other_steps.pdf", "other_steps.png"]


def test_the_front_passes_through_points_no_significantly_better_point_dominates():
    """Point 1 is larger and worse than point 0 on the means: dominated, unless the paired test
    cannot tell them apart (``separable[1, 0]`` false), when both are on the front; brute force
    over all separability patterns of three points."""
    import itertools

    size, metric = np.array([1.0, 2.0, 3.0]), np.array([90.0, 89.9, 95.0])
    assert list(pareto_front(size, metric, True, 0.0)) == [0, 2]
    apart = np.ones((3, 3), dtype=bool)
    apart[1, 0] = False
    assert list(pareto_front(size, metric, True, 0.0, apart)) == [0, 1, 2]
    for bits in itertools.product([False, True], repeat=9):
        sep = np.array(bits).reshape(3, 3)
        front = set(pareto_front(size, metric, True, 0.0, sep))
        for i in range(3):
            dominated = any(size[j] <= size[i] and metric[j] > metric[i] and sep[i, j] for j in range(3))
            assert (i not in front) == dominated


def test_the_size_plot_names_the_cells_it_has_no_point_for():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from quantbench.report.plots import _note_unplotted

    rows = pd.DataFrame({"method": ["rtn", "lc_binary", "raises", "qat", "ghost"], "budget": [2.0, 1.0, 2.0, 1.0, 3.0],
                         "status": ["ok", "diverged", "failed", "ok", "not run"], "diverged": [0, 3, 0, 1, 0],
                         "diverged_seeds": ["", "0 1 2", "", "2", ""]})
    fig, ax = plt.subplots()
    _note_unplotted(ax, rows)
    assert [t.get_text() for t in ax.texts] == [
        "diverged: lc_binary 1b\nfailed: raises 2b\nnot run: ghost 3b\n§ diverged at some seed: qat 1b (s2)"]
    fig, ax = plt.subplots()
    _note_unplotted(ax, rows[rows["method"] == "rtn"])
    assert not ax.texts
    plt.close("all")
