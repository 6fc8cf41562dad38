"""A real Snakemake run of a small grid in a temporary folder, checked through its table."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(workdir / "config.yaml"), "--cores", "2", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def test_grid_runs_end_to_end_and_tables_regenerate_from_mlflow(tmp_path):
    config = {"name": "e2e", "budgets": [2, 8], "seeds": [0, 1], "reference": {"epochs": 3}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    snakemake(tmp_path)

    table = tmp_path / "results/tables/e2e/digits.md"
    md = table.read_text()
    rows = {line.split("|")[3].strip(): line for line in md.splitlines() if line.startswith("| lenet300")}
    assert set(rows) == {"reference", "rtn"}
    # two seeds -> mean [min, max] of the seeds; achieved bpw a little above the budget (side information)
    found = re.search(r"(\d+\.\d\d)(\*\*)? \[(\d+\.\d\d), (\d+\.\d\d)\] \(2\.0\d bpw, \d+\.\d×\)", rows["rtn"])
    assert found and float(found[3]) <= float(found[1]) <= float(found[4]), rows["rtn"]
    assert re.search(r"\(8\.0\d bpw, 3\.\d×\)", rows["rtn"])
    for cell in ("rtn/b2/s0", "rtn/b2/s1", "rtn/b8/s0", "rtn/b8/s1", "reference/s0", "reference/s1"):
        assert (tmp_path / f"results/runs/e2e/digits/lenet300/{cell}/metrics.json").is_file()
        assert (tmp_path / f"results/logs/e2e/digits/lenet300/{cell}.log").is_file()
    assert (tmp_path / "results/runs/e2e/digits/lenet300/rtn/b2/s0/model.qbc").is_file()

    # as after a run interrupted during one cell: that cell's output and the tables are missing;
    # only they are redone
    (tmp_path / "results/runs/e2e/digits/lenet300/rtn/b8/s1/metrics.json").unlink()
    shutil.rmtree(table.parent)
    dry = snakemake(tmp_path, "-n")
    planned = re.findall(r"^(?:local)?rule (\w+):", dry.stdout, flags=re.M)
    assert sorted(planned) == ["all", "cell", "tables"], dry.stdout
    snakemake(tmp_path)
    assert table.read_text() == md  # deterministic: the rerun reproduces the cell

    # the record alone regenerates the same tables and plots (byte for byte)
    saved = {p.name: p.read_bytes() for p in table.parent.iterdir()}
    assert sorted(saved) == ["digits.csv", "digits.md", "digits.tex", "digits_claims.csv", "digits_claims.md",
                             "digits_size.pdf", "digits_size.png", "digits_steps.pdf", "digits_steps.png"]
    assert "the range of the seeds' values" in md and "No claims are stated" in saved["digits_claims.md"].decode()
    shutil.rmtree(tmp_path / "results/runs")
    shutil.rmtree(table.parent)
    proc = subprocess.run([sys.executable, "-m", "quantbench.cli", "tables", "--experiment", "e2e",
                           "--results-dir", str(tmp_path / "results"), "--claims", "[]"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert {p.name: p.read_bytes() for p in table.parent.iterdir()} == saved


def test_invalid_config_stops_before_planning(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"name": "bad", "methods": ["rnt"]}))
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
           "--configfile", str(tmp_path / "config.yaml"), "--cores", "1", "-n"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "config.methods[0]: unknown method 'rnt'; allowed values" in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()
