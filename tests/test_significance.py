"""Intervals, bold and ``quantbench compare`` on hand-made MLflow records whose per-example
results have known differences: a clearly better cell is bold alone, two equal cells are both bold."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
from helpers.records import SPLIT, N, Record, correctness

from quantbench.cli import main
from quantbench.report.stats import CI_EXAMPLES, EXAMPLES_FILE, EXAMPLES_ONLY, SEED_RANGE, Examples, paired_difference


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
    assert "bootstrap over the test examples" in md and "Bonferroni" in md and "more than 0.5 points" in md


def test_bonferroni_keeps_a_column_of_small_differences_bold(tmp_path):
    """Three cells each a little below the best (13 examples lost, 4 gained: 2.5 points; one-sided
    p of "worse by more than the 0.5-point margin" below 0.05 uncorrected): multiple comparisons
    with the best multiply by the column's k − 1 = 3 comparisons, so they stay bold; at α = 0.5
    none of them does."""
    rec = Record(tmp_path)
    best = correctness(0.9, 5)
    rec.run("best", 2, 0, best)
    hits, misses = np.flatnonzero(best), np.flatnonzero(best == 0)
    cells = {}
    for k, name in enumerate(("a", "b", "c")):
        worse = best.copy()
        worse[hits[13 * k:13 * k + 13]] = 0
        worse[misses[4 * k:4 * k + 4]] = 1
        rec.run(name, 2, 0, worse)
        cells[name] = worse
    uncorrected = [paired_difference("accuracy", [_examples(cells[n])], [_examples(best)]).p_below(-0.5)
                   for n in "abc"]
    assert max(uncorrected) < 0.05 and 3 * min(uncorrected) >= 0.05
    csv, _ = rec.tables()
    marks = csv.set_index("method")
    assert all(marks.loc[n, "best"] and marks.loc[n, "p_vs_best"] >= 0.05 for n in "abc")
    csv, _ = rec.tables(alpha=0.5)
    assert list(csv[csv["best"]]["method"]) == ["best"]


def test_a_cell_is_plain_when_shown_worse_than_any_other_by_the_margin_as_scipy_tests_it(tmp_path):
    """Multiple comparisons with the best over three seeds: p_vs_best is the smallest one-sided
    paired t p-value (scipy's) of "worse than a better cell by more than m", times k − 1."""
    from scipy.stats import ttest_rel

    rec = Record(tmp_path)
    acc = {"top": [0.95, 0.93, 0.96], "mid": [0.90, 0.89, 0.93], "low": [0.80, 0.84, 0.83]}
    for name, values in acc.items():
        for seed, a in enumerate(values):
            rec.run(name, 2, seed, correctness(a, seed))  # the same order per seed: paired by seed
    for margin in (0.0, 0.5, 2.0):
        marks = rec.tables(margins={"accuracy": margin})[0].set_index("method")
        points = {name: 100 * np.array([correctness(a, s).mean() for s, a in enumerate(v)]) for name, v in acc.items()}
        for name, better in (("mid", ["top"]), ("low", ["top", "mid"])):
            p = min(ttest_rel(points[name] + margin, points[b], alternative="less").pvalue for b in better)
            assert marks.loc[name, "p_vs_best"] == pytest.approx(min(1.0, 2 * p), rel=1e-9)
            assert marks.loc[name, "best"] == (min(1.0, 2 * p) >= 0.05)
        assert marks.loc["top", "best"] and math.isnan(marks.loc["top", "p_vs_best"])
    assert not marks.loc["low", "best"]


def _examples(right: np.ndarray) -> Examples:
    return Examples("classification", right, np.ones(N), SPLIT)


def test_three_seeds_get_their_range_and_are_paired_by_seed(tmp_path):
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
    assert cells.loc["same", "ci_kind"] == SEED_RANGE and cells.loc["same", "n_seeds"] == 3
    values = [100 * correctness(0.90 + 0.01 * seed, 10 + seed).mean() for seed in range(3)]
    assert (cells.loc["same", "ci_low"], cells.loc["same", "ci_high"]) == (min(values), max(values))
    assert cells.loc["same", "seed_values"] == " ".join(f"{s}:{v:.6g}" for s, v in enumerate(values))
    # copy is one example (0.28 points) below same at every seed: within the 0.5-point margin, not tested
    assert cells.loc["same", "best"] and cells.loc["copy", "best"] and math.isnan(cells.loc["copy", "p_vs_best"])
    # with no margin: no spread, so the exact sign-flip, one-sided p = 1/2^3 (× k − 1 = 1): not called
    cells = rec.tables(margins={"accuracy": 0.0})[0].set_index("method")
    assert cells.loc["copy", "best"] and cells.loc["copy", "p_vs_best"] == 0.125
    assert "[min, max]: the range of the seeds' values" in md


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
    assert f"{EXAMPLES_ONLY}: 1 seed(s), each on 360 test examples" in out
    assert "not on another seed's (run 2 or more seeds for a verdict about the method)" in out
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


def test_a_damaged_or_rewritten_examples_file_is_refused_naming_it_and_the_tables_still_come(tmp_path, caplog):
    """Truncated (unreadable, in a run that recorded no sha256), rewritten with valid arrays that
    make every example right (its sha256 is no longer the run's), and rewritten where the run
    recorded no sha256 (its arrays no longer give the logged metric): each refused, naming the run
    and the file; the rest stands."""
    rec = Record(tmp_path)
    rec.run(None, None, 0, correctness(0.97, 0))
    rec.run("good", 2, 0, correctness(0.90, 1))
    for method, sha in (("truncated", False), ("rewritten", True), ("unhashed", False)):
        rec.run(method, 2, 0, correctness(0.30, 2), sha256=sha)
    runs = rec.tracker.runs("s").set_index("tags.method")

    def recorded_file(method: str) -> Path:
        return Path(runs.loc[method, "artifact_uri"].removeprefix("file://")) / EXAMPLES_FILE

    data = recorded_file("truncated").read_bytes()
    recorded_file("truncated").write_bytes(data[: len(data) // 2])
    for method in ("rewritten", "unhashed"):
        Examples("classification", np.ones(N), np.ones(N), SPLIT).save(recorded_file(method))
    with caplog.at_level(logging.WARNING, logger="quantbench"):
        csv, md = rec.tables()
    refused = {m: [r.getMessage() for r in caplog.records if runs.loc[m, "run_id"] in r.getMessage()]
               for m in ("truncated", "rewritten", "unhashed")}
    assert "BadZipFile" in refused["truncated"][0] and str(recorded_file("truncated")) in refused["truncated"][0]
    assert "sha256 is not the" in refused["rewritten"][0] and str(recorded_file("rewritten")) in refused["rewritten"][0]
    assert "its arrays give accuracy 100, the run logged 30" in refused["unhashed"][0]
    cells = csv.set_index("method")
    assert cells.loc["good", "best"], csv
    assert not any(cells.loc[m, "best"] for m in ("truncated", "rewritten", "unhashed"))  # none bolded by a forgery
    assert "| 30.00 (2.00 bpw" in md  # shown, without an interval: no per-example results it can trust


def _three_seed_record(tmp_path) -> tuple[Record, dict[str, np.ndarray]]:
    """Methods top, mid and low at 2 bits over seeds 0-2 (the same example order per seed) and
    a copy one example below top at every seed; their accuracies in points, by method."""
    rec = Record(tmp_path)
    acc = {"top": [0.95, 0.93, 0.96], "mid": [0.90, 0.89, 0.93], "low": [0.80, 0.84, 0.83]}
    points = {}
    for name, values in acc.items():
        for seed, a in enumerate(values):
            rec.run(name, 2, seed, correctness(a, seed))
        points[name] = 100 * np.array([correctness(a, s).mean() for s, a in enumerate(values)])
    for seed, a in enumerate(acc["top"]):
        right = correctness(a, seed)
        right[np.flatnonzero(right)[0]] = 0
        rec.run("copy", 2, seed, right)
    points["copy"] = points["top"] - 100 / N
    return rec, points


def test_compare_margin_gives_non_inferiority_and_tost_as_scipys_one_sided_t_tests(tmp_path, capsys):
    from scipy.stats import ttest_rel

    from quantbench.report.stats import detectable_difference, seeds_needed

    rec, points = _three_seed_record(tmp_path)
    args = ["compare", "--experiment", "s", "--tracking-uri", rec.uri, "--task", "digits", "--arch", "mlp",
            "--budget", "2", "mid", "top"]
    assert main(args + ["--margin", "4", "--power", "2"]) == 0
    out = capsys.readouterr().out
    mid, top = points["mid"], points["top"]
    not_worse = ttest_rel(mid + 4, top, alternative="greater").pvalue  # mid − top > −4
    top_not_worse = ttest_rel(top + 4, mid, alternative="greater").pvalue
    equivalent = max(not_worse, ttest_rel(mid - 4, top, alternative="less").pvalue)
    assert f"mid not worse than top by more than m (non-inferiority, one-sided): p = {not_worse:.3g}" in out
    assert f"top not worse than mid by more than m (non-inferiority, one-sided): p = {top_not_worse:.3g}" in out
    assert f"equivalent within ±m (two one-sided tests): p = {equivalent:.3g}" in out
    sd = np.std(mid - top, ddof=1)
    assert f"detectable with 3 seeds: {detectable_difference(sd, 3):.4g}" in out
    assert f"seeds needed to detect a true difference of 2: {seeds_needed(2.0, sd)}" in out


def test_compare_says_when_three_seeds_cannot_call_a_difference(tmp_path, capsys):
    rec, _ = _three_seed_record(tmp_path)
    args = ["compare", "--experiment", "s", "--tracking-uri", rec.uri, "--task", "digits", "--arch", "mlp",
            "--budget", "2", "copy", "top"]
    assert main(args + ["--power", "0.5"]) == 0
    out = capsys.readouterr().out  # copy is one example below top at every seed: no spread
    assert "3 seeds: no difference can be called at α = 0.05 by this test" in out and "6 seeds needed" in out
    assert "detectable with 3 seeds: ∞" in out and "seeds needed to detect a true difference of 0.5: 6" in out


@pytest.mark.parametrize("flags, message", [
    (["--power"], "--power needs the difference to detect"),
    (["--power", "0"], "argument --power: --power: 0 is not a difference to detect"),
    (["--margin", "-1"], "argument --margin: -1.0 is not a margin"),
    (["--margin", "nan"], "argument --margin: nan is not a margin"),
])
def test_compare_refuses_a_bad_margin_or_power_naming_the_flag(tmp_path, capsys, flags, message):
    rec, _ = _three_seed_record(tmp_path)
    args = ["compare", "--experiment", "s", "--tracking-uri", rec.uri, "--task", "digits", "--arch", "mlp",
            "--budget", "2", "mid", "top"]
    try:
        status = main(args + flags)
    except SystemExit as e:  # argparse's refusal
        status = e.code
    assert status == 2 and message in capsys.readouterr().err


def test_variance_splits_the_seeds_variance_as_the_two_way_layout_does(tmp_path, capsys):
    from quantbench.report.stats import seed_components

    rec, points = _three_seed_record(tmp_path)
    assert main(["variance", "--experiment", "s", "--tracking-uri", rec.uri]) == 0
    out = capsys.readouterr().out
    parts = seed_components(np.array([points[m] for m in ("copy", "low", "mid", "top")]))
    row = next(line for line in out.splitlines() if line.startswith("| digits | mlp    | 2 "))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[4:8] == ["4", "3", f"{math.sqrt(parts.shared):.3g}", f"{math.sqrt(parts.own):.3g}"]
    assert cells[-1] == f"{100 * parts.shared / (parts.shared + parts.own):.0f}"


def test_variance_refuses_a_record_or_grid_with_one_seed(tmp_path, capsys):
    rec = Record(tmp_path)
    rec.run("a", 2, 0, correctness(0.9, 1))
    rec.run("b", 2, 0, correctness(0.8, 1))
    assert main(["variance", "--experiment", "s", "--tracking-uri", rec.uri]) == 2
    assert "needs 2 or more seeds" in capsys.readouterr().err
    grid = tmp_path / "grid.yaml"
    grid.write_text("name: s\nseeds: [0]\n")
    assert main(["variance", "--grid", str(grid), "--tracking-uri", rec.uri]) == 2
    assert "config.seeds is [0]: a variance decomposition needs 2 or more seeds" in capsys.readouterr().err
