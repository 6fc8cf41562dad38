"""A grid runs exactly as written, from where a user runs it, and a job's identity is what it
computes: these run the real Snakemake on the shipped grids and on a small complete grid."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from quantbench.jobs.plan import Plan

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
GRIDS = sorted((REPO / "workflows" / "config").glob("*.yaml"))


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """A copy of the repository root (tracked and new files), as a user's clone has it."""
    root = tmp_path_factory.mktemp("clone")
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
    return root


def run(cwd: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=900)
    if ok:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def planned_jobs(dry_run_output: str, plan: dict) -> tuple[dict, set]:
    """``{job id: digest}`` of every job a ``snakemake -n -p`` printed (every cell of a cell job: its
    ``--batch`` read back with ``plan``, ``quantbench validate --json``, which checks the ``--digest``
    Snakemake planned for it), and the plan files they read; no command carries a spec of its own."""
    plan = Plan.from_dict(plan, "quantbench validate --json")
    jobs, plans = {}, set()
    for line in dry_run_output.splitlines():
        if "quantbench reference --" not in line and "quantbench cell --" not in line:
            continue
        words = shlex.split(line[line.index("quantbench"):].split(" > ")[0])
        assert "--spec" not in words and "{" not in line, line  # no JSON on the command line
        plans.add(words[words.index("--plan") + 1])
        digest = words[words.index("--digest") + 1]
        if "--batch" in words:
            ids = plan.batch(words[words.index("--batch") + 1], digest)
        else:
            ids = [words[words.index("--job") + 1]]
            plan.identity(ids[0], digest)
        for job_id in ids:
            assert job_id not in jobs, f"{job_id} is planned twice"
            jobs[job_id] = plan.digests[job_id][:16]
    return jobs, plans


def digests(plan: dict) -> dict:
    """``{job id: digest}`` of a plan (``quantbench validate --json``), as the commands carry them."""
    return {job_id: job["digest"][:16] for job_id, job in {**plan["references"], **plan["cells"]}.items()}


@pytest.mark.parametrize("grid", [None, *GRIDS], ids=lambda p: p.stem if p else "no-configfile")
def test_every_shipped_grid_plans_exactly_what_validate_says_from_the_repository_root(checkout, grid):
    """From the clone's root, ``snakemake -n`` of a grid plans the jobs ``quantbench validate``
    plans for that file alone (no merge with the default grid); with no file, the default grid."""
    path = grid.relative_to(REPO) if grid else Path("workflows/config/default.yaml")
    args = ["--configfile", str(path)] if grid else []
    dry = run(checkout, "snakemake", "-n", "-p", *args)
    plan = json.loads(run(checkout, "quantbench.cli", "validate", "--json", str(path)).stdout)
    jobs, plans = planned_jobs(dry.stdout + dry.stderr, plan)
    assert plans == {f"{plan['context']['results_dir']}/runs/{plan['context']['experiment']}/plan.json"}
    assert jobs == digests(plan)


def test_command_line_overrides_apply_on_top_of_the_grid_file(checkout):
    path = "workflows/config/paper_lc.yaml"
    dry = run(checkout, "snakemake", "-n", "-p", "--configfile", path, "--config", "seeds=[3]", "download=true",
              "data_root=/data")
    # the same grid written with seeds [3] (where data live and downloads are in no identity)
    grid = yaml.safe_load((checkout / path).read_text())
    (checkout / "seed3.yaml").write_text(yaml.safe_dump({**grid, "seeds": [3]}))
    plan = json.loads(run(checkout, "quantbench.cli", "validate", "--json", "seed3.yaml").stdout)
    jobs, _ = planned_jobs(dry.stdout + dry.stderr, plan)
    assert jobs == digests(plan) and {k.rpartition("/s")[2] for k in jobs} == {"3"}
    # the context the jobs will be given: the Snakefile's planning of the same overrides
    from quantbench.config import load_config, merged_config, read_yaml, typed_overrides
    from quantbench.jobs.plan import plan_grid

    overrides = typed_overrides({"seeds": ["3"], "download": "true", "data_root": "/data"})
    context = plan_grid(load_config(merged_config(read_yaml(checkout / path), overrides))).context
    assert context.download is True and context.data_root == "/data"


def test_a_bad_override_names_the_file_and_the_key(checkout):
    proc = run(checkout, "snakemake", "-n", "--configfile", "workflows/config/paper_lc.yaml", "--config",
               "budgets=[two]", ok=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "paper_lc.yaml with --config overrides" in out and "config.budgets[0]: 'two' is not of type 'number'" in out


def test_an_empty_grid_is_refused(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text(yaml.safe_dump({"name": "e", "methods": ["lc_ternary"], "budgets": [2, 4]}))
    proc = run(REPO, "quantbench.cli", "validate", str(path), ok=False)
    assert proc.returncode == 2 and "the grid plans no cell" in proc.stderr


def test_validate_lists_the_cells_per_method(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({"name": "g", "methods": ["lsq", "lc_ternary"], "budgets": [1.58, 2],
                                    "seeds": [0, 1]}))
    out = run(REPO, "quantbench.cli", "validate", str(path)).stdout
    assert "4 cells and 2 references planned, 4 cells skipped" in out
    assert re.search(r"^    lsq +budgets 2; seeds 0, 1$", out, flags=re.M)
    assert re.search(r"^    lc_ternary +budgets 1.58; seeds 0, 1$", out, flags=re.M)


def _counts(proc: subprocess.CompletedProcess) -> dict[str, int]:
    if "Nothing to be done" in proc.stdout + proc.stderr:
        return {}
    return {k: int(v) for k, v in re.findall(r"^(\w+)\s+(\d+)$", proc.stdout, flags=re.M) if k != "total"}


def test_a_job_is_rerun_for_what_it_computes_and_never_for_where_things_live(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"name": "id", "methods": ["rtn", "dc"], "budgets": [2, 4],
                                    "reference": {"epochs": 1}}))

    def snakemake(*args: str) -> subprocess.CompletedProcess:
        return run(REPO, "snakemake", "--directory", str(tmp_path), "--configfile", str(grid), *args)

    snakemake("--cores", "2")
    runs = tmp_path / "results/runs/id/digits/lenet300"
    assert sorted(p.name for p in (runs / "rtn/b2/s0").iterdir()) == ["metrics.json", "model.qbc"]  # nothing else
    assert _counts(snakemake("-n", "--quiet", "rules")) == {}

    for override in ("data_root=/nowhere", "download=true", f"tracking_uri=sqlite:///{tmp_path}/other.db",
                     "device=cpu", f"results_dir={tmp_path}/results",
                     'resources={"reference": {"processes": 2}, "cell": {"processes": 2, "threads": 2}}'):
        assert _counts(snakemake("-n", "--quiet", "rules", "--config", override)) == {}, override

    changed = snakemake("-n", "--quiet", "rules", "--config", 'method_params={"rtn": {"per_channel": true}}')
    assert _counts(changed) == {"cell": 2, "tables": 1, "all": 1}
    planned = snakemake("-n", "--config", 'method_params={"rtn": {"per_channel": true}}')
    assert set(re.findall(r"method=(\w+)", planned.stdout)) == {"rtn"}

    # a cell whose output is gone (failed, removed) is planned again although the tables are newer
    (runs / "dc/b4/s0/metrics.json").unlink()
    assert _counts(snakemake("-n", "--quiet", "rules")) == {"cell": 1, "tables": 1, "all": 1}
