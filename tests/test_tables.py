"""Tables from the MLflow record: mean ± std over seeds, latest run per cell, failures marked."""

from __future__ import annotations

import statistics

import pandas as pd
import pytest

from quantbench.tables import tables_from_mlflow
from quantbench.tracking import Tracker


@pytest.fixture
def record(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri)
    exp = tracker.ensure_experiment("t", tmp_path / "artifacts")

    def run(kind, seed, acc, method=None, budget=None, status="ok", bpw=32.0, ratio=1.0):
        cell = f"digits/mlp/{method or 'reference'}/" + (f"b{budget}/" if budget else "") + f"s{seed}"
        tags = {"kind": kind, "cell_id": cell, "task": "digits", "arch": "mlp", "seed": str(seed),
                "metric": "accuracy", "status": status}
        if method:
            tags.update(method=method, budget=str(budget))
        metrics = {"accuracy": acc, "bpw": bpw, "compression_ratio": ratio} if status == "ok" else {}
        tracker.record_run(exp, cell, {}, metrics, [], tags, [], "FINISHED" if status == "ok" else "FAILED")

    run("reference", 0, 96.0)
    run("reference", 1, 98.0)
    run("cell", 0, 80.0, "rtn", 2, bpw=2.1, ratio=14.0)  # superseded by the rerun below
    run("cell", 0, 90.0, "rtn", 2, bpw=2.1, ratio=14.0)
    run("cell", 1, 92.0, "rtn", 2, bpw=2.1, ratio=14.0)
    run("cell", 0, 0.0, "rtn", 4, status="diverged")
    run("cell", 1, 95.5, "rtn", 4, bpw=4.1, ratio=7.5)
    run("cell", 0, 70.0, "other", 2, bpw=2.5, ratio=12.0)
    return uri, tmp_path / "tables"


def test_tables_aggregate_seeds_and_mark_failures(record):
    uri, out = record
    paths = tables_from_mlflow(uri, "t", out)
    assert sorted(p.name for p in paths) == ["digits.csv", "digits.md", "digits.tex", "digits_size.pdf",
                                             "digits_size.png", "digits_steps.pdf", "digits_steps.png"]
    md = (out / "digits.md").read_text()
    mean, std = statistics.mean([90.0, 92.0]), statistics.stdev([90.0, 92.0])
    ref_mean, ref_std = statistics.mean([96.0, 98.0]), statistics.stdev([96.0, 98.0])
    lines = {line.split("|")[3].strip(): line for line in md.splitlines() if line.startswith("| mlp")}
    assert f"**{mean:.2f}** ± {std:.2f} (2.10 bpw, 14.0×)" in lines["rtn"]  # the best at 2 bits: bold
    assert "diverged (1/2 ok)" in lines["rtn"]
    assert f"{ref_mean:.2f} ± {ref_std:.2f} (32.00 bpw, 1.0×)" in lines["reference"]
    assert "| 70.00 (2.50 bpw, 12.0×)" in lines["other"] and "—" in lines["other"]
    assert list(lines) == ["reference", "other", "rtn"]
    csv = pd.read_csv(out / "digits.csv")
    row = csv[(csv.method == "rtn") & (csv.budget == 2)].iloc[0]
    assert row["mean"] == pytest.approx(mean) and row["std"] == pytest.approx(std) and row["seeds"] == 2
    tex = (out / "digits.tex").read_text()
    assert r"\toprule" in tex and r"$\pm$" in tex and "±" not in tex and r"\textbf{91.00}" in tex


def test_unknown_experiment_is_a_clear_error(record):
    uri, out = record
    with pytest.raises(LookupError, match="no MLflow experiment 'missing'"):
        tables_from_mlflow(uri, "missing", out)


def test_published_figures_get_a_paper_column(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri)
    exp = tracker.ensure_experiment("p", tmp_path / "artifacts")
    base = {"task": "mnist", "arch": "lenet300", "seed": "0", "metric": "accuracy", "status": "ok"}
    tracker.record_run(exp, "r", {}, {"accuracy": 98.0, "bpw": 32.0, "compression_ratio": 1.0}, [],
                       {**base, "kind": "reference", "cell_id": "mnist/lenet300/reference/s0", "paper_value": "97.87"},
                       [])
    for budget, acc, paper in ((1, 97.0, "97.44"), (2, 97.5, None)):
        tags = {**base, "kind": "cell", "cell_id": f"mnist/lenet300/lc/b{budget}/s0", "method": "lc",
                "budget": str(budget)}
        if paper:
            tags["paper_value"] = paper
        tracker.record_run(exp, "c", {}, {"accuracy": acc, "bpw": float(budget), "compression_ratio": 32.0 / budget},
                           [], tags, [])
    tables_from_mlflow(uri, "p", tmp_path / "tables")
    md = (tmp_path / "tables" / "mnist.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| arch"))
    assert [c.strip() for c in header.split("|")[1:-1]] == ["arch", "family", "method", "1-bit", "1-bit paper",
                                                             "2-bit", "2-bit paper"]
    rows = {line.split("|")[3].strip(): [c.strip() for c in line.split("|")[4:-1]]
            for line in md.splitlines() if line.startswith("| lenet300")}
    assert rows["reference"][1] == rows["reference"][3] == "97.87"
    assert rows["lc"][1] == "97.44" and rows["lc"][3] == "—"
    assert "'paper': the published figure" in md


def test_a_planned_cell_without_a_run_reads_apart_from_an_unserved_budget(tmp_path):
    """rtn serves 1 and 4 bits but only its 2-bit cell has a run: "not run"; lc_ternary serves
    only log2(3) bits: "—" (asked of the method itself, with the parameters its runs recorded)."""
    import json

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri)
    exp = tracker.ensure_experiment("m", tmp_path / "artifacts")
    base = {"task": "digits", "arch": "mlp", "seed": "0", "metric": "accuracy", "status": "ok", "kind": "cell",
            "version.torch": "9.9.9"}
    runs = [("rtn", 2, {"scheme": "minmax", "per_channel": False, "float_dtype": "float32"}),
            ("lc_ternary", 1.58, {}), ("dc", 1, {}), ("dc", 4, {})]
    for method, budget, params in runs:
        tags = {**base, "cell_id": f"digits/mlp/{method}/b{budget}/s0", "method": method, "budget": str(budget),
                "method_params": json.dumps(params)}
        tracker.record_run(exp, "c", {}, {"accuracy": 90.0, "bpw": float(budget), "compression_ratio": 10.0}, [],
                           tags, [])
    tables_from_mlflow(uri, "m", tmp_path / "tables")
    md = (tmp_path / "tables" / "digits.md").read_text()
    rows = {line.split("|")[3].strip(): [c.strip() for c in line.split("|")[4:-1]]
            for line in md.splitlines() if line.startswith("| mlp")}
    # columns: 1, 1.58, 2, 4 bits
    assert rows["rtn"][0] == "not run" and rows["rtn"][1] == "—" and rows["rtn"][3] == "not run"
    assert rows["lc_ternary"][0] == rows["lc_ternary"][2] == rows["lc_ternary"][3] == "—"
    assert rows["dc"][2] == "not run" and rows["dc"][1] == "—"
    assert "not run: planned cell without a run" in md and "torch 9.9.9" in md
