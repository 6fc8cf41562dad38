"""What the paper grids ask a cluster for (issue #27): their resources are the derivation of
benchmarks/paper_resources.py; a dry run under profiles/slurm turns them into the sbatch options
of every arch's jobs; a job that trains a paper-scale task on CPUs is refused under a cluster
executor (not locally, not with allow_cpu); bad resources are refused naming the key."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from quantbench.config import load_config, task_archs
from quantbench.config.resources import check_cluster_gpus, cpu_training_jobs, resources
from quantbench.method import ConfigError

REPO = Path(__file__).resolve().parent.parent
PAPER = sorted((REPO / "workflows" / "config").glob("paper_*.yaml"))
SLURM_COMMANDS = ("sbatch", "srun", "squeue", "sacct", "sinfo", "scontrol", "scancel", "sacctmgr", "sshare")


def _paper_resources():
    spec = importlib.util.spec_from_file_location("paper_resources", REPO / "benchmarks" / "paper_resources.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.stem)
def test_paper_grids_request_what_the_derivation_gives(path):
    """Every arch of the grid has both rules' resources, and they are benchmarks/paper_resources.py's
    (its table, docs/cluster.md, says how each figure was derived)."""
    cfg = load_config(path)
    archs = {a for t in cfg["tasks"] for a in task_archs(cfg.raw, t)}
    assert set(cfg["resources"]) == {"archs"} and set(cfg["resources"]["archs"]) == archs
    assert all(set(rules) == {"reference", "cell"} for rules in cfg["resources"]["archs"].values())
    derived, _ = _paper_resources().grid_resources(cfg)
    assert cfg["resources"] == derived, "python benchmarks/paper_resources.py --yaml prints the block to paste"
    assert cpu_training_jobs(cfg) == {}  # every paper-scale training job has a GPU


def fake_slurm(tmp_path: Path) -> dict:
    """An environment whose PATH starts with SLURM commands that record being called and fail, as on
    a machine without SLURM: a test never reaches a real controller."""
    bin_dir = tmp_path / "fake-slurm"
    bin_dir.mkdir(exist_ok=True)
    for name in SLURM_COMMANDS:
        script = bin_dir / name
        script.write_text(f'#!/bin/sh\necho "{name} $*" >> "{tmp_path}/slurm-called"\nexit 99\n')
        script.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def dry_run(tmp_path: Path, grid: Path, *args: str, slurm: bool = True) -> subprocess.CompletedProcess:
    """``snakemake -n -p`` of ``grid`` under profiles/slurm (``slurm``) or locally, SLURM's commands
    replaced by :func:`fake_slurm`'s: the slurm executor plugin is loaded and its settings validated
    (it asks ``scontrol show config`` for MinJobAge and does without), nothing is submitted."""
    proc, called = start(tmp_path, grid, "-n", "-p", *args, slurm=slurm)
    assert set(called) <= {"scontrol show config"}, called
    return proc


def start(tmp_path: Path, grid: Path, *args: str, slurm: bool = True) -> tuple[subprocess.CompletedProcess, list]:
    """Snakemake on ``grid`` (a real start unless ``args`` has -n) under profiles/slurm or locally,
    SLURM's commands replaced by :func:`fake_slurm`'s (each fails: no job is ever accepted); the
    process and the SLURM commands it called."""
    profile = ["--workflow-profile", str(REPO / "profiles" / "slurm")] if slurm else ["--cores", "2"]
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
           "--configfile", str(grid), *profile, *args,
           "--config", f"results_dir={tmp_path / 'results'}"]
    (tmp_path / "slurm-called").unlink(missing_ok=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=fake_slurm(tmp_path))
    called = (tmp_path / "slurm-called").read_text().splitlines() if (tmp_path / "slurm-called").exists() else []
    return proc, called


def planned_jobs(output: str) -> dict[tuple[str, str], dict]:
    """The first job of each (rule, arch) of a dry run: its resources and threads."""
    jobs = {}
    for block in re.split(r"\n(?=(?:local)?rule )", output):
        rule = re.match(r"rule (reference|cell):", block)
        if rule is None:
            continue
        arch = re.search(r"arch=(\w+)", block).group(1)
        pairs = re.search(r"resources: (.*)", block).group(1).split(", ")
        resources = {k: int(v) if v.isdigit() else v for k, v in (p.split("=", 1) for p in pairs)}
        threads = int(re.search(r"--threads (\d+)", block).group(1))
        jobs.setdefault((rule.group(1), arch), {"resources": resources, "threads": threads})
    return jobs


class _Resources(dict):
    """Snakemake's resource list as the SLURM plugins read it (``.get`` and attributes)."""

    __getattr__ = dict.__getitem__


def sbatch_options(job: dict) -> str:
    """The sbatch options snakemake-executor-plugin-slurm submits ``job`` with (its own functions)."""
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    fake = SimpleNamespace(resources=_Resources(job["resources"]), threads=job["threads"])
    params = {"run_uuid": "u", "slurm_logfile": "l", "comment_str": "c", "account": "", "partition": "",
              "workdir": ""}
    return get_submit_command(fake, params) + set_gres_string(fake)


@pytest.mark.slow
@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.stem)
def test_paper_grid_jobs_are_submitted_for_their_resources(path, tmp_path):
    """The sbatch options of one reference and one cell job of every arch, from a dry run under
    profiles/slurm. A dry run prints each job's Snakemake resources and shell command (``-p``), not
    the sbatch call (the slurm executor is not run), so the plugin's own ``get_submit_command`` and
    ``set_gres_string`` turn them into options, as ``tests/test_distributed.py`` does. ``-n`` sets
    ``--cores 1`` when none is given, which caps every job's threads at 1 in the printout (a cluster
    run has no --cores and no cap), hence ``--cores 256`` here."""
    pytest.importorskip("snakemake_executor_plugin_slurm")
    cfg = load_config(path)
    proc = dry_run(tmp_path, path, "--cores", "256")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    jobs = planned_jobs(proc.stdout + proc.stderr)
    archs = {a for t in cfg["tasks"] for a in task_archs(cfg.raw, t)}
    assert set(jobs) == {(rule, arch) for rule in ("reference", "cell") for arch in archs}
    for (rule, arch), job in sorted(jobs.items()):
        want = resources(cfg.raw, rule, arch)
        sbatch = sbatch_options(job)
        assert f"-t {want['runtime']} " in sbatch and f"--mem {want['mem_mb']} " in sbatch, (rule, arch, sbatch)
        assert f"--cpus-per-task={want['threads']}" in sbatch and "--nodes=1" in sbatch, (rule, arch, sbatch)
        if want["gpu"]:
            assert sbatch.endswith(f" --gpus={want['gpu']}"), (rule, arch, sbatch)
        else:
            assert "--gpus" not in sbatch and "--ntasks=1" in sbatch, (rule, arch, sbatch)
        print(f"{path.stem} {rule:9s} {arch:14s} {sbatch.split(' -t ', 1)[1]}")


def _cifar_grid(tmp_path: Path, **extra) -> Path:
    """resnet20 on CIFAR-10: a reference trained by its recipe, dc (post-training) and lc_adaptive (trains)."""
    grid = {"name": "cpu", "tasks": ["cifar10"], "archs": ["resnet20"], "methods": ["dc", "lc_adaptive"],
            "budgets": [1], "method_params": {"lc_adaptive": {"steps": 2, "epochs": 1}},
            "resources": {"archs": {"resnet20": {"cell": {"gpu": 1}}}}, **extra}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


@pytest.mark.slow
def test_training_a_paper_scale_task_on_cpus_under_slurm_is_refused_naming_the_key(tmp_path):
    """Started under profiles/slurm, the grid is refused before any job is submitted (no sbatch):
    the reference (30 epochs, gpu 0) with the key to set; the cells ask for a GPU and are not named.
    allow_cpu lets it through to submission; a local run, or a dry run (which never starts the
    grid: Snakemake runs its own dry-run executor), is never refused."""
    pytest.importorskip("snakemake_executor_plugin_slurm")
    grid = _cifar_grid(tmp_path)
    refused, called = start(tmp_path, grid)
    assert refused.returncode != 0
    message = refused.stdout + refused.stderr
    assert "under the slurm executor these jobs would train a paper-scale task on CPUs" in message
    assert "config.resources.archs.resnet20.reference.gpu (now 0): cifar10/resnet20 reference (30 epochs" in message
    assert "resnet20.cell.gpu" not in message and "config.allow_cpu: true" in message
    assert str(grid) in message and set(called) == {"scontrol show config"}  # nothing submitted: no sinfo, sbatch
    assert "Job submission failed" not in message

    allowed, called = start(tmp_path, _cifar_grid(tmp_path, allow_cpu=True))
    assert "paper-scale task on CPUs" not in allowed.stdout + allowed.stderr
    assert "Job submission failed" in allowed.stderr, allowed.stderr[-3000:]  # submitted (the fake SLURM fails it)
    assert any(c.split()[0] in ("sinfo", "sbatch") for c in called)
    planned = dry_run(tmp_path, _cifar_grid(tmp_path, allow_cpu=True))
    assert planned.returncode == 0, planned.stderr[-3000:]
    assert planned_jobs(planned.stdout + planned.stderr)[("reference", "resnet20")]["resources"]["gpu"] == 0

    for local in (dry_run(tmp_path, _cifar_grid(tmp_path), slurm=False), dry_run(tmp_path, _cifar_grid(tmp_path))):
        assert local.returncode == 0, local.stderr[-3000:]


@pytest.mark.parametrize("changes,key", [
    ({}, {"config.resources.archs.resnet20.reference.gpu", "config.resources.archs.resnet20.cell.gpu"}),
    ({"resources": {"reference": {"gpu": 1}}}, {"config.resources.archs.resnet20.cell.gpu"}),
    ({"resources": {"archs": {"resnet20": {"reference": {"gpu": 1}, "cell": {"gpu": 2}}}}}, set()),
    ({"methods": ["rtn", "dc"], "resources": {"reference": {"gpu": 1}}}, set()),  # post-training cells
    ({"tasks": ["mnist"]}, set()),  # not a paper-scale task
    ({"recipes": {"cifar10": {"resnet20": {"pretrained": "/models/r20.pt", "pretrained_sha256": "0" * 64}}},
      "methods": ["rtn"]}, set()),  # published weights: the reference does not train
])
def test_the_cpu_training_jobs_of_a_grid(changes, key):
    grid = {"name": "c", "tasks": ["cifar10"], "archs": ["resnet20"], "methods": ["rtn", "qat"], "budgets": [2],
            **changes}
    cfg = load_config(grid)
    assert set(cpu_training_jobs(cfg)) == key
    if key:
        with pytest.raises(ConfigError, match=re.escape(sorted(key)[0])):
            check_cluster_gpus(cfg, "slurm")
        check_cluster_gpus(load_config({**grid, "allow_cpu": True}), "slurm")
    else:
        check_cluster_gpus(cfg, "slurm")


R20 = "config.resources.archs.resnet20"


@pytest.mark.parametrize("resources,message", [
    ({"archs": {"resnet20": {"cell": {"gpu": -1}}}}, f"{R20}.cell.gpu: -1 is less than the minimum of 0"),
    ({"archs": {"resnet20": {"cell": {"mem_mb": "16G"}}}}, f"{R20}.cell.mem_mb: '16G' is not of type 'integer'"),
    ({"archs": {"resnet20": {"reference": {"runtime": 0}}}}, f"{R20}.reference.runtime: 0 is less than the minimum"),
    ({"archs": {"resnet20": {"cell": {"threads": 2.5}}}}, f"{R20}.cell.threads: 2.5 is not of type 'integer'"),
    ({"archs": {"resnet20": {"cell": {"gpu": True}}}}, f"{R20}.cell.gpu: True is not of type 'integer'"),
    ({"cell": {"nodes": -2}}, "config.resources.cell.nodes: -2 is less than the minimum of 1"),
    ({"archs": {"resnet20": 4}}, f"{R20}: 4 is not of type 'object'"),
    ({"archs": {"resnet20": {"cell": 8}}}, f"{R20}.cell: 8 is not of type 'object'"),
    ({"archs": {"resnet21": {"cell": {"gpu": 1}}}}, "config.resources.archs.resnet21: unknown arch; allowed values"),
])
def test_bad_resources_are_refused_naming_the_key(resources, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config({"name": "bad", "archs": ["resnet20"], "resources": resources})


def test_allow_cpu_must_be_a_boolean_and_integral_floats_become_integers():
    with pytest.raises(ConfigError, match=r"config.allow_cpu: 'yes' is not of type 'boolean'"):
        load_config({"name": "bad", "allow_cpu": "yes"})
    cfg = load_config({"name": "ok", "resources": {"cell": {"gpu": 1.0, "mem_mb": 16000.0}}})
    res = resources(cfg.raw, "cell", "lenet300")
    assert (res["gpu"], res["mem_mb"]) == (1, 16000) and type(res["gpu"]) is int and type(res["mem_mb"]) is int


@pytest.mark.slow
def test_a_paper_grid_with_a_bad_resource_is_refused_at_planning(tmp_path):
    """A copy of paper_opq with a negative GPU count: the dry run stops before planning any job,
    naming the grid's file and the key."""
    grid = yaml.safe_load((REPO / "workflows" / "config" / "paper_opq.yaml").read_text())
    grid["resources"]["archs"]["resnet50"]["cell"]["gpu"] = -1
    path = tmp_path / "paper_opq.yaml"
    path.write_text(yaml.safe_dump(grid))
    proc = dry_run(tmp_path, path, slurm=False)
    assert proc.returncode != 0
    message = proc.stdout + proc.stderr
    assert str(path) in message
    assert "config.resources.archs.resnet50.cell.gpu: -1 is less than the minimum of 0" in message
    assert "rule cell" not in message
