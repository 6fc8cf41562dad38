"""The installable package: a wheel whose only top-level import package is quantbench, installed
(not editable) in a fresh virtualenv, validates a grid and runs a one-cell grid outside the checkout."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent


def run(*cmd, cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_the_wheel_installs_alone_validates_and_runs_a_cell_outside_the_checkout(tmp_path):
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist", REPO,
        cwd=tmp_path)
    wheel = next((tmp_path / "dist").glob("quantbench-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"quantbench", wheel.name.split("-py")[0] + ".dist-info"}
    for data in ("quantbench/workflows/schemas/config.schema.yaml", "quantbench/workflows/config/default.yaml",
                 "quantbench/methods/lc/methods.py", "quantbench/models/mobilenet.py", "quantbench/py.typed",
                 "quantbench/format/container.py", "quantbench/data/datasets.py"):
        assert data in names, data

    # a fresh venv with the wheel; its dependencies come from this environment (a path, not its .pth files)
    fresh = tmp_path / "venv"
    run(sys.executable, "-m", "venv", fresh, cwd=tmp_path)
    python = fresh / "bin" / "python"
    site = run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path).stdout.strip()
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run(python, "-m", "pip", "install", "--no-deps", "--no-index", wheel, cwd=tmp_path)
    where = run(python, "-c", "import quantbench.methods as m, quantbench.models as n; print(m.__file__, n.__file__)",
                cwd=tmp_path).stdout.split()
    assert all(path.startswith(str(fresh)) for path in where), where

    work = tmp_path / "elsewhere"
    work.mkdir()
    (work / "grid.yaml").write_text(yaml.safe_dump({"name": "wheel", "budgets": [2], "reference": {"epochs": 1}}))
    quantbench = fresh / "bin" / "quantbench"
    assert "1 cells and 1 references planned" in run(quantbench, "validate", "grid.yaml", cwd=work).stdout
    (work / "plan.json").write_text(run(quantbench, "validate", "--json", "grid.yaml", cwd=work).stdout)
    plan = json.loads((work / "plan.json").read_text())
    (ref_id, ref), = plan["references"].items()
    (cell_id, cell), = plan["cells"].items()
    run(quantbench, "reference", "--plan", "plan.json", "--job", ref_id, "--digest", ref["digest"][:16], "--out",
        "ref/metrics.json", "--no-progress", cwd=work)
    run(quantbench, "cell", "--plan", "plan.json", "--job", cell_id, "--digest", cell["digest"], "--reference",
        "ref/metrics.json", "--out", "cell/metrics.json", "--no-progress", cwd=work)
    result = json.loads((work / "cell" / "metrics.json").read_text())
    assert result["status"] == "ok" and result["cell_id"] == cell_id and 1.9 < result["stats"]["bpw"] < 2.1
