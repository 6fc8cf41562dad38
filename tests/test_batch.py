"""Batch jobs (config ``batch``): several cells of one reference in one process, each with its own
run, outputs and log; what a batch computes equals what separate jobs compute; a rerun computes
only the cells that did not finish and restores the others from their runs."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers.jobs import dry_run_jobs

from quantbench.config import Cell, load_config
from quantbench.jobs import runner
from quantbench.jobs.plan import batch_name, plan_grid, reference_id
from quantbench.jobs.runner import run_cell, run_cells, run_reference
from quantbench.method import ConfigError, JobFailed
from quantbench.tracking import Tracker
from quantbench.training.loop import file_sha256

REPO = Path(__file__).resolve().parent.parent


def _grid(tmp_path: Path, **extra) -> dict:
    return {"name": "batch", "results_dir": str(tmp_path / "results"), "archs": ["lenet300"],
            "methods": ["rtn", "gpfq", "qat"], "budgets": [1, 1.58, 2], "reference": {"epochs": 1},
            "method_params": {"qat": {"epochs": 1}}, **extra}


def test_every_planned_cell_is_in_exactly_one_batch_of_each_shape(tmp_path):
    planned = None
    for mode in ("method", "reference"):
        cfg = load_config(_grid(tmp_path, batch=mode, variants={"gpfq": {"wide": {"scale_factor": 2.0}}}))
        planned = {(c.method, c.budget) for c in cfg.cells}
        members = [pair for batch in cfg.batches() for pair in batch.members]
        assert sorted(members) == sorted(planned) and len(members) == len(set(members))
        names = [b.rule for b in cfg.batches()]
        if mode == "reference":
            assert names == ["cells"]
        else:  # one rule per method label; a variant's "@" is not a rule name's character
            assert names == ["cells_rtn", "cells_gpfq", "cells_gpfq_at_wide", "cells_qat"]
            for batch in cfg.batches():
                label = batch.rule.removeprefix("cells_").replace("_at_", "@")
                assert {m for m, _ in batch.members} == {label}
    assert ("qat", "1.58") not in planned  # qat does not serve 1.58 bits: no batch asks for it
    cfg = load_config(_grid(tmp_path))  # the default: one cell per job, the rule as it always was
    assert [(b.rule, b.members) for b in cfg.batches()] == [("cell", (("{method}", "{budget}"),))]


def test_a_batch_is_named_and_the_plan_says_its_cells(tmp_path):
    """``quantbench cell --batch NAME``: a cell's id, a label's cells of a reference, or the reference's
    cells; the plan lists them (by label, then budget), with one digest that any member's identity moves."""
    cfg = load_config(_grid(tmp_path, batch="method", variants={"gpfq": {"wide": {"scale_factor": 2.0}}}))
    plan = plan_grid(cfg)
    ref = reference_id("digits", "lenet300", 0)
    assert batch_name("digits", "lenet300", 0) == ref
    assert batch_name("digits", "lenet300", 0, "gpfq@wide") == "digits/lenet300/gpfq@wide/s0"
    assert batch_name("digits", "lenet300", 0, "rtn", "1.58") == "digits/lenet300/rtn/b1.58/s0"
    assert sorted(plan.batch(ref)) == sorted(c.id for c in cfg.cells) and plan.batch(ref)[0].split("/")[2] == "gpfq"
    wide = [f"digits/lenet300/gpfq@wide/b{b}/s0" for b in ("1", "1.58", "2")]
    assert plan.batch("digits/lenet300/gpfq@wide/s0") == wide  # by budget
    assert plan.batch("digits/lenet300/qat/s0") == ["digits/lenet300/qat/b1/s0", "digits/lenet300/qat/b2/s0"]
    assert plan.batch("digits/lenet300/rtn/b2/s0") == ["digits/lenet300/rtn/b2/s0"]
    assert [b.label for b in cfg.batches()] == ["rtn", "gpfq", "gpfq@wide", "qat"]

    cells = plan.batch("digits/lenet300/qat/s0")
    digest = plan.batch_digest(cells)[:16]
    assert plan.batch_digest(cells[::-1]) == plan.batch_digest(cells)  # what the cells are, not their order
    assert plan.batch_digest(cells[:1]) == plan.digests[cells[0]]  # one cell's: its own (its run's config_hash)
    assert plan.batch("digits/lenet300/qat/s0", digest) == cells
    # what Snakemake planned, against a plan.json from another planning: a member's identity changed, or
    # the batch holds other cells (a budget fewer)
    for change in ({"method_params": {"qat": {"epochs": 2}}}, {"budgets": [1, 1.58]}):
        other = plan_grid(load_config({**cfg.raw, **change}))
        with pytest.raises(ConfigError, match=rf"^--digest {digest}: the plan of batch plans batch "
                                              rf"digits/lenet300/qat/s0 \({len(other.batch('digits/lenet300/qat/s0'))}"
                                              rf" cell\(s\)\) as [0-9a-f]{{16}}: the file is from another planning"):
            other.batch("digits/lenet300/qat/s0", digest)
    with pytest.raises(ConfigError, match=r"^--digest 0123: .* plans batch digits/lenet300/rtn/b2/s0 \(1 cell"):
        plan.batch("digits/lenet300/rtn/b2/s0", "0123")  # 16 hex digits at least

    bad = {
        "digits/lenet300/nope/s0": "plans no cell of label 'nope' for digits/lenet300/reference/s0 (its labels there: "
                                   "rtn, gpfq, gpfq@wide, qat)",
        "digits/lenet5/reference/s0": "has no reference digits/lenet5/reference/s0 (its references: "
                                      "digits/lenet300/reference/s0)",
        "digits/lenet300/rtn/s1": "has no reference digits/lenet300/reference/s1",
        "digits/lenet300/qat/b1.58/s0": "not a cell of the plan of batch (skipped: qat does not serve",
        "digits/lenet300/rtn/b3/s0": "not a cell of the plan of batch (11 cells planned)",
        "cells_rtn": "expected a reference's id (task/arch/reference/s<seed>: its cells), task/arch/<label>/s<seed>",
        "digits/lenet300/rtn/0": "expected a reference's id",
    }
    for name, message in bad.items():
        with pytest.raises(ConfigError) as e:
            plan.batch(name)
        assert str(e.value).startswith(f"--batch {name}: ") and message in str(e.value), str(e.value)
        assert "\n" not in str(e.value)


def test_a_batch_job_writes_where_the_plan_says_and_refuses_a_bad_name(tmp_path, monkeypatch, capsys):
    """``quantbench cell --batch``: the cells, outputs and logs come from the plan (the workflow's declared
    files, ``Plan.cell_files``); a bad name or a stale digest is one line naming the flag, exit 2."""
    from quantbench import cli

    cfg = load_config(_grid(tmp_path, batch="reference"))
    plan = plan_grid(cfg)
    path = plan.write(tmp_path / "plan.json")
    calls = []
    monkeypatch.setattr(runner, "run_cells", lambda specs, ref, outs, artifacts, logs, **kw: calls.append(
        ([s.identity.cell_id for s in specs], outs, artifacts, logs)) or [])
    job = ["cell", "--plan", str(path), "--reference", "ref/metrics.json"]
    name, cells = "digits/lenet300/rtn/s0", plan.batch("digits/lenet300/rtn/s0")
    assert cli.main([*job, "--batch", name, "--digest", plan.batch_digest(cells)[:16]]) == 0
    runs, logs = Path(cfg.results) / "runs" / "batch", Path(cfg.results) / "logs" / "batch"
    assert calls.pop() == (cells, [runs / c / "metrics.json" for c in cells], [runs / c / "model.qbc" for c in cells],
                           [logs / f"{c}.log" for c in cells])
    assert cli.main([*job, "--batch", cells[0], "--digest", plan.digests[cells[0]][:16]]) == 0  # a batch of one
    assert calls.pop() == (cells[:1], [runs / cells[0] / "metrics.json"], [runs / cells[0] / "model.qbc"],
                           [logs / f"{cells[0]}.log"])

    assert cli.main([*job, "--batch", "digits/lenet300/nope/s0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("quantbench cell: error: --batch digits/lenet300/nope/s0: plan ") and err.count("\n") == 1
    assert cli.main([*job, "--batch", name, "--digest", "f" * 16]) == 2
    assert "error: --digest ffffffffffffffff: plan " in capsys.readouterr().err
    for extra, message in ((["--out", "x.json"], "--batch: --out not allowed"),
                           (["--nproc-per-node", "2"], "a batch of cells runs in one process")):
        with pytest.raises(SystemExit):
            cli.main([*job, "--batch", name, *extra])
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main([*job, "--job", cells[0], "--batch", name])  # one or the other
    assert not calls


@pytest.mark.parametrize("batch", ["reference", pytest.param("method", marks=pytest.mark.slow),
                                   pytest.param("cell", marks=pytest.mark.slow)])
def test_a_cell_job_writes_exactly_the_files_its_rule_declares(batch, tmp_path, monkeypatch):
    """The default grid's dry run (``batch`` as shipped, or overridden): every cell job's command names
    its batch, whose cells are every planned cell once, and ``quantbench cell`` run as printed (its
    computation stubbed) writes each cell's ``metrics.json``, ``model.qbc`` and log at the outputs and
    logs its rule declares; the command stays short."""
    from quantbench import cli

    default = REPO / "workflows" / "config" / "default.yaml"
    proc = _snakemake_dry_run(tmp_path, default, f"batch={batch}")
    cfg = load_config({**load_config(default).raw, "batch": batch})
    plan = plan_grid(cfg)
    jobs = [job for job in dry_run_jobs(proc.stdout + proc.stderr) if job["rule"] in {b.rule for b in cfg.batches()}]
    assert jobs and all(("--batch" in job["shell"]) == (batch != "cell") for job in jobs)
    assert all(len(job["shell"]) < 300 for job in jobs if batch != "cell"), max(len(job["shell"]) for job in jobs)
    named = []
    for job in jobs:  # every job, read back with the plan (which checks the digest Snakemake planned)
        words = shlex.split(job["shell"])
        digest = words[words.index("--digest") + 1]
        if batch == "cell":  # rule cell: the command it always had
            cells = [words[words.index("--job") + 1]]
            assert plan.batch(cells[0], digest) == cells
            assert [words[words.index(f"--{k}") + 1] for k in ("out", "log")] == job["output"] + job["log"]
        else:
            cells = plan.batch(words[words.index("--batch") + 1], digest)
        assert sorted(job["output"]) == sorted(str(plan.cell_files(c)[0]) for c in cells), job["rule"]
        assert sorted(job["log"]) == sorted(str(plan.cell_files(c)[1]) for c in cells), job["rule"]
        named += cells
    assert sorted(named) == sorted(c.id for c in cfg.cells)

    monkeypatch.chdir(tmp_path)  # where Snakemake runs its jobs
    words = shlex.split(jobs[0]["shell"])
    plan.write(Path(words[words.index("--plan") + 1]))  # what the onstart handler writes
    wrote = []
    monkeypatch.setattr(runner, "run_cells", lambda specs, ref, outs, artifacts, logs, **kw: wrote.append(
        (outs, artifacts, logs)) or [])
    monkeypatch.setattr(runner, "run_cell", lambda spec, ref, out, log_file, artifact, **kw: wrote.append(
        ([out], [artifact or out.parent / "model.qbc"], [log_file])) or {"rank": 0})
    first = jobs[0]["wildcards"]
    for job in [job for job in jobs if job["wildcards"] == first]:  # the jobs of one reference
        words = shlex.split(job["shell"])
        assert words[0] == "quantbench" and cli.main(words[1:]) == 0
        outs, artifacts, logs = wrote.pop()
        assert sorted(map(str, outs)) == sorted(job["output"]) and sorted(map(str, logs)) == sorted(job["log"])
        assert [a.parent for a in artifacts] == [o.parent for o in outs]


def test_a_batch_refuses_jobs_of_several_processes(tmp_path):
    with pytest.raises(ConfigError, match=r"config.batch: 'method' runs several cells in one process, but "
                                          r"config.resources.archs.lenet300.cell asks for 2 process\(es\)"):
        load_config(_grid(tmp_path, batch="method", resources={"archs": {"lenet300": {"cell": {"processes": 2}}}}))
    load_config(_grid(tmp_path, batch="cell", resources={"cell": {"processes": 2}}))  # one cell per job: fine


@pytest.fixture
def reference(tmp_path):
    cfg = load_config(_grid(tmp_path, batch="reference"))
    ref = tmp_path / "ref" / "metrics.json"
    run_reference(plan_grid(cfg).spec(reference_id("digits", "lenet300", 0)), ref, show_progress=False)
    return cfg, ref


def _batch(cfg, ref: Path, tmp_path: Path, cells: list[Cell], where: str):
    outs = [tmp_path / where / c.id / "metrics.json" for c in cells]
    plan = plan_grid(cfg)
    return [plan.spec(c) for c in cells], ref, outs, [o.parent / "model.qbc" for o in outs], [None] * len(cells)


def _runs(cfg):
    runs = Tracker(cfg.tracking_uri()).runs(cfg.name)
    return runs[runs["tags.kind"] == "cell"]


def test_a_batch_computes_what_separate_jobs_compute(reference, tmp_path):
    cfg, ref = reference
    # a training method first: the post-training cells after it must not see its random state
    cells = [Cell("digits", "lenet300", m, b, 0) for m, b in (("qat", "2"), ("rtn", "2"), ("gpfq", "1.58"))]
    together = run_cells(*_batch(cfg, ref, tmp_path, cells, "batch"), show_progress=False)
    for cell, batched in zip(cells, together, strict=True):
        alone = run_cell(plan_grid(cfg).spec(cell), ref, tmp_path / "alone" / cell.id / "metrics.json",
                         show_progress=False)
        assert batched["metrics"] == alone["metrics"] and batched["artifact_sha256"] == alone["artifact_sha256"]
        assert batched["run_id"] != alone["run_id"]  # each its own run
    assert len(_runs(cfg)) == 2 * len(cells)


def test_a_batch_restores_finished_cells_only_when_identity_reference_code_and_file_agree(reference, tmp_path,
                                                                                        monkeypatch):
    cfg, ref = reference
    cells = [Cell("digits", "lenet300", "rtn", b, 0) for b in ("1.58", "2")]
    first = run_cells(*_batch(cfg, ref, tmp_path, cells, "a"), show_progress=False)
    again = run_cells(*_batch(cfg, ref, tmp_path, cells, "b"), show_progress=False)  # as after a failed batch
    assert [r["run_id"] for r in again] == [r["run_id"] for r in first] and len(_runs(cfg)) == 2
    for cell in cells:  # the outputs come back as the first job wrote them
        for name in ("metrics.json", "model.qbc"):
            assert (tmp_path / "b" / cell.id / name).read_bytes() == (tmp_path / "a" / cell.id / name).read_bytes()

    recorded = Path(cfg.results) / "mlartifacts" / cfg.name / first[0]["run_id"] / "artifacts" / "model.qbc"
    data = bytearray(recorded.read_bytes())
    data[len(data) // 2] ^= 0x01
    recorded.write_bytes(bytes(data))  # a damaged record is not restored: that cell is computed again
    third = run_cells(*_batch(cfg, ref, tmp_path, cells, "c"), show_progress=False)
    assert third[0]["run_id"] not in {first[0]["run_id"]} and third[1]["run_id"] == first[1]["run_id"]
    assert file_sha256(tmp_path / "c" / cells[0].id / "model.qbc") == first[0]["artifact_sha256"]

    monkeypatch.setattr(runner, "code_sha256", lambda method_cls: "other code")  # changed code: both again
    fourth = run_cells(*_batch(cfg, ref, tmp_path, cells, "d"), show_progress=False)
    assert not {r["run_id"] for r in fourth} & {r["run_id"] for r in first + third}
    assert len(_runs(cfg)) == 5


def test_a_failed_cell_costs_only_itself_in_its_batch(reference, tmp_path, faulty_methods):
    cfg, ref = reference
    cfg = load_config({**cfg.raw, "methods": ["raises", "rtn", "nan_weights"]})
    cells = [Cell("digits", "lenet300", m, "2", 0) for m in ("raises", "rtn", "nan_weights")]
    specs, _, outs, artifacts, logs = _batch(cfg, ref, tmp_path, cells, "x")
    with pytest.raises(JobFailed, match=r"^1 of 3 cells failed: digits/lenet300/raises/b2/s0$"):
        run_cells(specs, ref, outs, artifacts, logs, show_progress=False)
    assert not outs[0].exists()  # the bug: no result
    assert json.loads(outs[1].read_text())["status"] == "ok" and artifacts[1].is_file()  # after it: computed
    assert json.loads(outs[2].read_text())["status"] == "diverged" and not artifacts[2].exists()  # a result
    runs = _runs(cfg).set_index("tags.cell_id")
    assert runs.loc[cells[0].id, ["status", "tags.status"]].tolist() == ["FAILED", "failed"]
    assert runs.loc[cells[1].id, ["status", "tags.status"]].tolist() == ["FINISHED", "ok"]
    assert runs.loc[cells[2].id, ["status", "tags.status"]].tolist() == ["FINISHED", "diverged"]


def _snakemake_dry_run(workdir: Path, grid: Path, *config: str) -> subprocess.CompletedProcess:
    """``snakemake -n -p`` of ``grid`` (with ``--config`` overrides) from ``workdir``."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(grid), "--cores", "2", "-n", "-p", "--config", *config]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def _snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(workdir / "config.yaml"), "--cores", "2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_a_grid_of_batch_jobs_reruns_only_the_cells_whose_identity_changed(tmp_path):
    config = {"name": "rerun", "archs": ["lenet300"], "methods": ["rtn", "qat"], "budgets": [2, 4],
              "reference": {"epochs": 1}, "batch": "reference", "method_params": {"qat": {"lr": 1e30, "epochs": 1}}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    diverged = _snakemake(tmp_path)  # a diverged cell is a result: the grid succeeds and names it
    console = diverged.stdout + diverged.stderr
    assert diverged.returncode == 0, console[-3000:]
    for budget in (2, 4):
        assert (f"quantbench: diverged: digits/lenet300/qat/b{budget}/s0: training loss is nan at epoch 0 (log: "
                f"results/logs/rerun/digits/lenet300/qat/b{budget}/s0.log)") in console
    cfg = load_config(tmp_path / "config.yaml")
    tracker = Tracker(f"sqlite:///{tmp_path / 'results/mlflow.db'}")
    before = tracker.runs("rerun")
    before = before[before["tags.kind"] == "cell"].set_index("tags.cell_id")
    rtn = [c.id for c in cfg.cells if c.method == "rtn"]
    assert set(before.loc[rtn, "status"]) == {"FINISHED"} and len(before) == 4
    assert set(before.drop(index=rtn)["tags.status"]) == {"diverged"} and set(before["status"]) == {"FINISHED"}
    for log in ("rtn/b2/s0", "rtn/b4/s0", "qat/b2/s0"):  # one log per cell
        assert (tmp_path / f"results/logs/rerun/digits/lenet300/{log}.log").is_file()

    config["method_params"] = {"qat": {"epochs": 1}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    done = _snakemake(tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    after = tracker.runs("rerun")
    after = after[after["tags.kind"] == "cell"]
    assert len(after) == 6  # the two qat cells again; the rtn cells were not computed again ...
    for cell_id in rtn:  # ... their outputs came back from their one finished run
        result = json.loads((tmp_path / f"results/runs/rerun/{cell_id}/metrics.json").read_text())
        assert result["run_id"] == before.loc[cell_id, "run_id"]
        assert file_sha256(tmp_path / f"results/runs/rerun/{cell_id}/model.qbc") == result["artifact_sha256"]
        assert "restored from its finished run" in (tmp_path / f"results/logs/rerun/{cell_id}.log").read_text()
    md = (tmp_path / "results/tables/rerun/digits.md").read_text()
    rows = {line.split("|")[3].strip(): line for line in md.splitlines() if line.startswith("| lenet300")}
    assert "bpw" in rows["qat"] and "diverged" not in rows["qat"]
    nothing = _snakemake(tmp_path, "-n")
    assert "Nothing to be done" in nothing.stdout + nothing.stderr
