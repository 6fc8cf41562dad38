"""Plots: the Pareto front against brute force, and the files the tables command writes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from quantbench.method import StepCurve
from quantbench.plots import pareto_front, size_plot, steps_plot


@pytest.mark.parametrize("higher", [True, False])
def test_pareto_front_is_the_set_no_point_dominates(higher):
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
        front = pareto_front(size, metric, higher)
        assert {(size[i], metric[i]) for i in front} == brute
        assert list(size[front]) == sorted(size[front])


def test_plots_are_written_as_png_and_pdf(tmp_path):
    long = pd.DataFrame({
        "task": "digits", "arch": ["mlp"] * 4, "method": ["reference", "a", "a", "b"], "budget": [np.nan, 1, 2, 2],
        "metric": "accuracy", "mean": [97.0, 80.0, 95.0, 90.0], "status": "ok", "size_kib": [100.0, 4.0, 7.0, 7.5],
        "bpw": [32.0, 1.0, 2.0, 2.1], "family": ["reference", "LC", "LC", "DiffQ"], "higher_is_better": True})
    paths = size_plot(long, "digits", tmp_path)
    assert sorted(p.name for p in paths) == ["digits_size.pdf", "digits_size.png"]
    assert all(p.stat().st_size > 1000 for p in paths)
    histories = pd.DataFrame({"task": "digits", "cell_id": "digits/mlp/lc/b1/s0", "key": "lc/accuracy",
                              "step": [0, 1, 2], "value": [50.0, 80.0, 90.0]})
    curves = [StepCurve("lc/{metric}", "LC step", "{metric}"), StepCurve("mine/x", "my step", "x")]
    assert sorted(p.name for p in steps_plot(histories, "digits", "accuracy", curves, tmp_path)) == [
        "digits_steps.pdf", "digits_steps.png"]
    empty = steps_plot(histories.iloc[:0], "other", "accuracy", curves, tmp_path)
    assert sorted(p.name for p in empty) == ["other_steps.pdf", "other_steps.png"]
