"""The plan file: every job's identity from planning to the job, checked when read; a job started
from it (``--plan F --job ID --digest D``, or a cell job's ``--batch NAME``) computes what the planned
identity says."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
from helpers.jobs import job_args

from quantbench.config import Cell, load_config
from quantbench.errors import ConfigError
from quantbench.jobs.plan import Plan, plan_grid, reference_id
from quantbench.jobs.runner import run_cell, run_reference
from quantbench.jobs.spec import JobIdentity, content_hash


@pytest.fixture
def grid(tmp_path, tiny_config):
    return load_config({**tiny_config, "methods": ["rtn", "lc_ternary"],
                        "method_params": {"rtn": {"per_channel": True}}, "budgets": [1.58, 2], "seeds": [0, 1]})


def test_the_plan_file_reads_back_as_the_identities_planning_built(grid, tmp_path):
    plan = plan_grid(grid)
    again = Plan.load(plan.write(tmp_path / "plan.json"))
    assert again.digests == plan.digests and again.as_dict() == plan.as_dict()
    assert set(again.cells) == {c.id for c in grid.cells} and set(again.skipped) == {c.id for c, _ in grid.skipped}
    # a cell's identity, written out field by field from the grid as the old --spec carried it
    raw = grid.raw
    cell = Cell("digits", "lenet300", "rtn", "2", 1)
    expected = JobIdentity(kind="cell", task="digits", task_params={}, arch="lenet300", arch_params={}, seed=1,
                           train=dataclasses.asdict(grid.train_settings("digits", "lenet300")), method="rtn",
                           method_params={**dataclasses.asdict(grid.params["rtn"]), "per_channel": True}, budget=2.0)
    assert again.identity(cell.id) == expected and again.digests[cell.id] == content_hash(expected.as_dict())
    assert again.identity(reference_id("digits", "lenet300", 1)) == expected.replace(
        kind="reference", method=None, method_params=None, budget=None)
    assert again.context.experiment == raw["name"] and again.context.results_dir == raw["results_dir"]
    entry = again.methods["lc_ternary"]
    assert (entry["family"], entry["starts_from"], entry["step_curves"]) == ("LC", None, [["lc/{metric}", "LC step",
                                                                                         "{metric} of Δ(Θ)"]])
    assert again.resources["cell"]["lenet300"]["mem_mb"] == 2000


def _edit(plan: Plan, path, change) -> str:
    data = plan.as_dict()
    change(data)
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError) as e:
        Plan.load(path)
    return str(e.value)


def test_a_damaged_or_edited_plan_is_refused_naming_what(grid, tmp_path):
    plan, path = plan_grid(grid), tmp_path / "plan.json"
    with pytest.raises(ConfigError, match=r"plan .*plan.json does not exist"):
        Plan.load(path)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match=r"plan .*plan.json is not readable JSON"):
        Plan.load(path)
    cell = "digits/lenet300/rtn/b2/s0"
    assert "$.cells['digits/lenet300/rtn/b2/s0'].budget: 'two' is not of type 'number'" in _edit(
        plan, path, lambda d: d["cells"][cell].update(budget="two"))
    assert "$.format" in _edit(plan, path, lambda d: d.update(format=2))
    # params edited by hand: the cell's identity no longer has the digest the file (and Snakemake) planned
    message = _edit(plan, path, lambda d: d["methods"]["rtn"]["params"].update(per_channel=False))
    assert "digits/lenet300/rtn/b1.58/s0: its identity's digest is" in message and "edited by hand" in message
    assert "cells.x/y/rtn/b2/s0.reference: 'x/y/reference/s0' is not one of the plan's" in _edit(
        plan, path, lambda d: d["cells"].update({"x/y/rtn/b2/s0": {**d["cells"][cell],
                                                                     "reference": "x/y/reference/s0"}}))
    assert "unknown key(s) ['colour']" in _edit(
        plan, path, lambda d: d["references"]["digits/lenet300/reference/s0"]["identity"].update(colour="red"))


def test_a_job_refuses_an_id_or_a_digest_the_plan_does_not_have(grid):
    plan = plan_grid(grid)
    with pytest.raises(ConfigError, match=r"--job digits/lenet300/lc_ternary/b2/s0: not a job of .*skipped: "
                                          r"lc_ternary does not serve a 2-bit budget"):
        plan.identity("digits/lenet300/lc_ternary/b2/s0")
    with pytest.raises(ConfigError, match=r"--digest 0123456789abcdef: .* plans digits/lenet300/rtn/b2/s0 as "
                                          r"[0-9a-f]{16}: the file is from another planning"):
        plan.identity("digits/lenet300/rtn/b2/s0", "0123456789abcdef")
    assert plan.identity("digits/lenet300/rtn/b2/s0", plan.digests["digits/lenet300/rtn/b2/s0"][:16]).budget == 2.0


def test_a_job_started_from_the_plan_file_makes_the_artifact_of_its_identity(grid, tmp_path):
    """``quantbench cell --plan F --job ID --digest D --out O`` (one cell) and ``--batch REF --digest D``
    (the reference's cells, written where the plan says) write the same bytes as running the planned
    identities in this process."""
    plan = plan_grid(grid)
    ref = tmp_path / "ref" / "metrics.json"
    run_reference(plan.spec(reference_id("digits", "lenet300", 0)), ref, show_progress=False)
    batch = reference_id("digits", "lenet300", 0)
    cells = plan.batch(batch)
    assert cells == ["digits/lenet300/lc_ternary/b1.58/s0", "digits/lenet300/rtn/b1.58/s0",
                     "digits/lenet300/rtn/b2/s0"]
    cli = [sys.executable, "-m", "quantbench.cli", "cell", "--reference", str(ref), "--no-progress"]
    # the batch first: nothing of its cells is recorded yet, so it computes them (not restores them)
    proc = subprocess.run([*cli, *job_args(grid, cells[0], tmp_path)[:2], "--batch", batch, "--digest",
                           plan.batch_digest(cells)[:16]], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = [plan.cell_files(c)[0] for c in cells]
    assert all(out.is_file() and plan.cell_files(c)[1].is_file() for c, out in zip(cells, written, strict=True))
    one = tmp_path / "one" / "metrics.json"
    proc = subprocess.run([*cli, *job_args(grid, cells[0], tmp_path), "--out", str(one)], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    here = [tmp_path / "here" / c / "metrics.json" for c in cells]
    for cell, out in zip(cells, here, strict=True):
        run_cell(plan.spec(cell), ref, out, show_progress=False)
    for a, b in [(here[0], one), *zip(here, written, strict=True)]:
        assert (a.parent / "model.qbc").read_bytes() == (b.parent / "model.qbc").read_bytes()
        assert json.loads(a.read_text())["metrics"] == json.loads(b.read_text())["metrics"]
    # a digest that is not the plan's: refused before anything runs, naming the job
    proc = subprocess.run([*cli, "--plan", str(tmp_path / "plan.json"), "--job", cells[0], "--digest",
                           "f" * 16, "--out", str(tmp_path / "no" / "metrics.json")], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 2 and "the file is from another planning" in proc.stderr
    assert not (tmp_path / "no").exists()
