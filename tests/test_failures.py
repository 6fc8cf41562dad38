"""Failure handling, each through the real job entry points: a NaN loss, a killed job (SIGTERM
and SIGKILL), damaged checkpoints and artifacts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers.jobs import job_args

from quantbench.config import Cell, load_config
from quantbench.format import CompressedModel, FormatError
from quantbench.jobs.plan import plan_grid, reference_id
from quantbench.jobs.runner import run_cell, run_reference
from quantbench.tracking import Tracker
from quantbench.training.loop import file_sha256

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def grid(tmp_path):
    """A tiny config with a trained reference: (config, reference metrics.json)."""
    cfg = load_config({"name": "fail", "results_dir": str(tmp_path / "results"), "methods": ["rtn", "qat"],
                       "budgets": [2], "reference": {"epochs": 2}})
    ref_out = tmp_path / "ref" / "metrics.json"
    run_reference(plan_grid(cfg).spec(reference_id("digits", "lenet300", 0)), ref_out, show_progress=False)
    return cfg, ref_out


def cell_runs(cfg, cell_id: str):
    runs = Tracker(cfg.tracking_uri()).runs(cfg.name)
    return runs[runs["tags.cell_id"] == cell_id].sort_values("start_time")


def test_a_nan_loss_is_the_cells_result_and_its_job_exits_0(grid, tmp_path):
    cfg, ref_out = grid
    nan = load_config({**cfg.raw, "method_params": {"qat": {"lr": 1e30, "epochs": 2}}})
    cell = Cell("digits", "lenet300", "qat", "2", 0)
    out = tmp_path / "c" / "metrics.json"
    out.parent.mkdir(parents=True)
    (out.parent / "model.qbc").write_bytes(b"an artifact of an earlier identity")  # never left beside a divergence
    proc = subprocess.run([sys.executable, "-m", "quantbench.cli", "cell", *job_args(nan, cell, tmp_path),
                           "--reference", str(ref_out), "--out", str(out), "--no-progress"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["status"] == "diverged" and result["reason"] == "training loss is nan at epoch 0"
    assert json.loads(proc.stdout.splitlines()[-1]) == {"cell_id": cell.id, "status": "diverged",
                                                        "reason": result["reason"]}
    assert not (out.parent / "model.qbc").exists()
    run = cell_runs(cfg, cell.id).iloc[-1]
    assert run["status"] == "FINISHED" and run["tags.status"] == "diverged"
    assert run["tags.diverged_at"] == result["reason"] and run["run_id"] == result["run_id"]
    recorded = Path(cfg.results) / "mlartifacts" / cfg.name / run["run_id"] / "artifacts"
    assert sorted(p.name for p in recorded.iterdir()) == ["metrics.json"]  # no model, the result is there


def test_non_finite_weights_are_caught_before_packing_naming_the_tensor(grid, tmp_path, faulty_methods):
    cfg, ref_out = grid
    cfg = load_config({**cfg.raw, "methods": ["rtn", "nan_weights"]})
    out = tmp_path / "c" / "metrics.json"
    result = run_cell(plan_grid(cfg).spec(Cell("digits", "lenet300", "nan_weights", "2", 0)), ref_out, out,
                      show_progress=False)
    expected = "tensor '1.weight' has non-finite values (AffineGrid.scale)"
    assert result["status"] == "diverged" and result["reason"] == expected
    assert json.loads(out.read_text())["reason"] == expected and not (out.parent / "model.qbc").exists()
    run = cell_runs(cfg, "digits/lenet300/nan_weights/b2/s0").iloc[-1]
    assert (run["status"], run["tags.status"], run["tags.diverged_at"]) == ("FINISHED", "diverged", expected)


def test_a_method_that_raises_fails_its_cell(grid, tmp_path, faulty_methods):
    cfg, ref_out = grid
    cfg = load_config({**cfg.raw, "methods": ["raises"]})
    out = tmp_path / "c" / "metrics.json"
    with pytest.raises(RuntimeError, match="a bug in the method"):
        run_cell(plan_grid(cfg).spec(cfg.cells[0]), ref_out, out, show_progress=False)
    assert not out.exists()
    run = cell_runs(cfg, cfg.cells[0].id).iloc[-1]
    assert run["status"] == "FAILED" and run["tags.status"] == "failed" and "a bug" in run["tags.failure_reason"]


def _rows(md: str) -> dict[str, list[str]]:
    """A task table's lenet300 rows: method -> its cells (one per budget column)."""
    return {line.split("|")[3].strip(): [c.strip() for c in line.split("|")[4:-1]]
            for line in md.splitlines() if line.startswith("| lenet300")}


@pytest.mark.slow
def test_a_grid_with_a_failed_and_a_diverged_cell_ends_with_tables_and_reruns_only_the_failed_one(
        tmp_path, faulty_methods):
    """The user's command (the Snakefile's own profile: no --keep-going given) on a grid whose one
    batch job holds a cell that finishes, one whose method returns NaN weights and one whose method
    raises."""
    config = {"name": "faults", "methods": ["rtn", "nan_weights", "raises"], "budgets": [2],
              "reference": {"epochs": 2}, "batch": "reference", "claims": [{"claim": "rtn > nan_weights"}]}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--configfile", "config.yaml"]
    runs_dir, logs = tmp_path / "results/runs/faults/digits/lenet300", "results/logs/faults/digits/lenet300"
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    console = proc.stdout + proc.stderr
    assert proc.returncode != 0, console[-3000:]  # a cell failed: the grid says so ...
    assert f"quantbench: failed: digits/lenet300/raises/b2/s0 (log: {logs}/raises/b2/s0.log)" in console
    assert "quantbench: diverged: digits/lenet300/nan_weights/b2/s0: tensor '1.weight' has non-finite" in console
    # ... the other cells of the failed batch job keep their outputs and their runs
    ok = json.loads((runs_dir / "rtn/b2/s0/metrics.json").read_text())
    assert ok["status"] == "ok" and file_sha256(runs_dir / "rtn/b2/s0/model.qbc") == ok["artifact_sha256"]
    assert json.loads((runs_dir / "nan_weights/b2/s0/metrics.json").read_text())["status"] == "diverged"
    assert not (runs_dir / "nan_weights/b2/s0/model.qbc").exists()
    assert not (runs_dir / "raises/b2/s0/metrics.json").exists()
    tracker = Tracker(f"sqlite:///{tmp_path / 'results/mlflow.db'}")

    def cells() -> pd.DataFrame:
        runs = tracker.runs("faults")
        return runs[runs["tags.kind"] == "cell"].sort_values("start_time")

    before = cells()
    assert before.groupby("tags.cell_id")["status"].agg(list).to_dict() == {
        "digits/lenet300/rtn/b2/s0": ["FINISHED"], "digits/lenet300/nan_weights/b2/s0": ["FINISHED"],
        "digits/lenet300/raises/b2/s0": ["FAILED"]}
    # ... and the grid ends with every table and plot, each failure marked
    tables = tmp_path / "results/tables/faults"
    for name in ("digits.md", "digits.csv", "digits.tex", "digits_size.png", "digits_steps.png",
                 "digits_claims.md"):
        assert (tables / name).is_file(), name
    rows = _rows((tables / "digits.md").read_text())
    assert rows["rtn"][0].startswith(f"**{ok['metrics']['accuracy']:.2f}** ± ")  # the column's only result
    assert rows["nan_weights"] == ["diverged"] and rows["raises"] == ["failed"]
    claims = pd.read_csv(tables / "digits_claims.csv")  # a diverged seed is worse than any result
    assert claims[["verdict", "reason"]].values.tolist() == [
        ["holds", "nan_weights diverged at seed(s) 0 where rtn finished"]]

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path)  # the rerun ...
    assert again.returncode != 0  # (the method still raises)
    after = cells()
    assert after.groupby("tags.cell_id")["status"].agg(list).to_dict() == {  # ... computes only the failed cell
        "digits/lenet300/rtn/b2/s0": ["FINISHED"], "digits/lenet300/nan_weights/b2/s0": ["FINISHED"],
        "digits/lenet300/raises/b2/s0": ["FAILED", "FAILED"]}
    for cell in ("rtn", "nan_weights"):  # their outputs came back from their one run
        assert "restored from its finished run" in (tmp_path / logs / f"{cell}/b2/s0.log").read_text()
    assert json.loads((runs_dir / "rtn/b2/s0/metrics.json").read_text()) == ok


def _start_cell(cfg, cell, ref_out: Path, out: Path) -> subprocess.Popen:
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "quantbench.cli", "cell", *job_args(cfg, cell, out.parent), "--reference",
           str(ref_out), "--out", str(out), "--no-progress"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_running(cfg, cell_id: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    tracker, deadline = Tracker(cfg.tracking_uri()), time.time() + timeout
    exp = tracker.client.get_experiment_by_name(cfg.name).experiment_id
    while time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        found = tracker.client.search_runs([exp], f"tags.cell_id = '{cell_id}' and attributes.status = 'RUNNING'")
        if found:
            time.sleep(1.0)  # inside the method's training loop by now
            return
        time.sleep(0.3)
    raise AssertionError("the cell never opened its run")


@pytest.mark.slow
def test_a_killed_job_leaves_no_output_and_its_run_reads_killed(grid, tmp_path):
    cfg, ref_out = grid
    cell_id = "digits/lenet300/qat/b2/s0"
    cell = Cell("digits", "lenet300", "qat", "2", 0)
    long = load_config({**cfg.raw, "method_params": {"qat": {"epochs": 10_000}}})
    out = tmp_path / "c" / "metrics.json"

    proc = _start_cell(long, cell, ref_out, out)  # cancelled (SLURM's scancel / timeout send SIGTERM)
    _wait_running(cfg, cell_id, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    assert not out.exists() and not (out.parent / "model.qbc").exists()
    run = cell_runs(cfg, cell_id).iloc[-1]
    assert run["status"] == "KILLED" and run["tags.status"] == "killed" and "SIGTERM" in run["tags.failure_reason"]

    proc = _start_cell(long, cell, ref_out, out)  # killed outright: nothing can close its run
    _wait_running(cfg, cell_id, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert cell_runs(cfg, cell_id).iloc[-1]["status"] == "RUNNING"

    short = load_config({**cfg.raw, "method_params": {"qat": {"epochs": 1}}})
    run_cell(plan_grid(short).spec(cell), ref_out, out, show_progress=False)  # the rerun redoes the cell ...
    runs = cell_runs(cfg, cell_id)
    assert list(runs["status"]) == ["KILLED", "KILLED", "FINISHED"]  # ... and closes the orphan as KILLED
    assert runs.iloc[1]["tags.status"] == "killed" and json.loads(out.read_text())["status"] == "ok"


def test_a_damaged_cached_reference_is_retrained(grid, tmp_path):
    cfg, ref_out = grid
    info = json.loads(ref_out.read_text())
    ckpt = Path(info["checkpoint"])
    ckpt.write_bytes(ckpt.read_bytes()[:-100])  # truncated on disk
    again = run_reference(plan_grid(cfg).spec(reference_id("digits", "lenet300", 0)), tmp_path / "r2" / "metrics.json",
                          show_progress=False)
    assert not again["cached"] and again["checkpoint_sha256"] == file_sha256(ckpt) == info["checkpoint_sha256"]
    assert again["metrics"] == info["metrics"]  # deterministic retraining


def test_a_cell_refuses_a_reference_whose_hash_changed(grid, tmp_path):
    cfg, ref_out = grid
    ckpt = Path(json.loads(ref_out.read_text())["checkpoint"])
    data = bytearray(ckpt.read_bytes())
    data[-5] ^= 0xFF
    ckpt.write_bytes(bytes(data))
    out = tmp_path / "c" / "metrics.json"
    with pytest.raises(ValueError, match="does not match the sha256 its reference recorded"):
        run_cell(plan_grid(cfg).spec(cfg.cells[0]), ref_out, out, show_progress=False)
    assert not out.exists()
    run = cell_runs(cfg, cfg.cells[0].id).iloc[-1]
    assert run["status"] == "FAILED" and "sha256" in run["tags.failure_reason"]


def test_a_damaged_artifact_is_refused_by_its_checksum(grid, tmp_path):
    cfg, ref_out = grid
    out = tmp_path / "c" / "metrics.json"
    result = run_cell(plan_grid(cfg).spec(cfg.cells[0]), ref_out, out, show_progress=False)
    artifact = out.parent / "model.qbc"
    assert result["artifact_sha256"] == file_sha256(artifact)
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0x01
    artifact.write_bytes(bytes(data))
    with pytest.raises(FormatError, match=str(artifact)):
        CompressedModel.load(artifact)
