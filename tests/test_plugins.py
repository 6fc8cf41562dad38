"""A method plugin installed from its own package (tests/fixtures/quantbench-plugin-example):
the entry point registers it, a Snakemake grid runs it, and the table has its row."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parent.parent
PLUGIN = REPO / "tests" / "fixtures" / "quantbench-plugin-example"
pytestmark = pytest.mark.slow


def pip(*args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


@pytest.fixture(scope="module")
def installed_plugin():
    pip("install", "--no-deps", "--no-build-isolation", "--no-index", str(PLUGIN))
    try:
        yield
    finally:
        pip("uninstall", "-y", "quantbench-plugin-example")


def test_the_installed_plugin_is_listed(installed_plugin):
    out = subprocess.run([sys.executable, "-m", "quantbench.cli", "methods"], capture_output=True, text=True,
                         timeout=300).stdout
    assert "rtn_clip" in out and "quantbench_plugin_example.ClippedRTN" in out


def test_a_grid_runs_the_plugin_and_the_table_has_its_row(installed_plugin, tmp_path):
    config = {"name": "plugin", "methods": ["rtn", "rtn_clip"], "budgets": [1.58, 2, 3], "reference": {"epochs": 2},
              "method_params": {"rtn_clip": {"clip": 0.02}}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
           "--configfile", str(tmp_path / "config.yaml"), "--cores", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    md = (tmp_path / "results/tables/plugin/digits.md").read_text()
    rows = {line.split("|")[3].strip(): line for line in md.splitlines() if line.startswith("| lenet300")}
    assert "(2.0" in rows["rtn_clip"] and "| baseline" in rows["rtn_clip"]  # the table group it declares
    # the run names the plugin's distribution and version: the code it ran
    from quantbench.tracking import Tracker

    runs = Tracker(f"sqlite:///{tmp_path / 'results/mlflow.db'}").runs("plugin")
    clip = runs[runs["tags.method"] == "rtn_clip"].iloc[0]
    assert (clip["tags.method_package"], clip["tags.method_version"]) == ("quantbench-plugin-example", "0.1.0")
    # its declared step curve reaches the steps plot's data, with no edit to the core
    from quantbench.report.tables import recorded_plans, step_histories

    tracker = Tracker(f"sqlite:///{tmp_path / 'results/mlflow.db'}")
    curve = step_histories(tracker, runs, recorded_plans(tracker, "plugin"))
    two_bits = curve[(curve["key"] == "rtn_clip/step") & curve["cell_id"].str.contains("/b2/")]
    assert list(two_bits["step"]) == [0, 1, 2]
    # the clipped grid, checked by hand on the packed file: 2 % clipped at each end of every layer
    from quantbench.format import CompressedModel

    packed = CompressedModel.load(tmp_path / "results/runs/plugin/digits/lenet300/rtn_clip/b2/s0/model.qbc")
    from quantbench.models import build_model
    from quantbench.training.loop import load_checkpoint

    ref_info = yaml.safe_load((tmp_path / "results/runs/plugin/digits/lenet300/reference/s0/metrics.json").read_text())
    ref = load_checkpoint(tmp_path / ref_info["checkpoint"], build_model("lenet300", **packed.arch_kwargs))
    w = ref.state_dict()["1.weight"].double().flatten()
    lo, hi = torch.quantile(w, torch.tensor([0.02, 0.98], dtype=torch.float64))
    values = packed.records["1.weight"].dequantize().double().unique()
    assert len(values) == 4
    assert float(values.min()) == pytest.approx(float(lo), rel=1e-6)
    assert float(values.max()) == pytest.approx(float(hi), rel=1e-6)

    # the plugin uninstalled and its 3-bit run gone: the tables of the record still read its rows right,
    # from the plan the record holds (no code of the plugin to ask)
    pip("uninstall", "-y", "quantbench-plugin-example")
    gone = runs[(runs["tags.method"] == "rtn_clip") & (runs["tags.budget"] == "3")]["run_id"]
    assert len(gone) == 1
    tracker.client.delete_run(gone.iloc[0])
    proc = subprocess.run([sys.executable, "-m", "quantbench.cli", "tables", "--experiment", "plugin", "--results-dir",
                           str(tmp_path / "results"), "--out-dir", str(tmp_path / "again")], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rtn_clip" not in subprocess.run([sys.executable, "-m", "quantbench.cli", "methods"], capture_output=True,
                                            text=True, timeout=300).stdout
    md = (tmp_path / "again/digits.md").read_text()
    cells = {line.split("|")[3].strip(): [c.strip() for c in line.split("|")[2:-1]]
             for line in md.splitlines() if line.startswith("| lenet300")}
    clip = cells["rtn_clip"]  # family, method, then 1.58, 2 and 3 bits
    assert clip[0] == "baseline" and clip[2] == "—" and "(2.0" in clip[3] and clip[4] == "not run", clip
    assert "(3.0" in cells["rtn"][4]
    assert (tmp_path / "again/digits_steps.png").is_file()
