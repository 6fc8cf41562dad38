"""The shipped grids: each validates and dry-runs with Snakemake; every (task, arch) pair of the
paper grids builds at paper size and takes one training step; published figures reach the runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from quantbench.config import Cell, load_config, task_archs
from quantbench.data import TASK_SHAPES, build_task
from quantbench.jobs.plan import plan_grid, reference_id
from quantbench.models import build_model

REPO = Path(__file__).resolve().parent.parent
CONFIGS = sorted((REPO / "workflows" / "config").glob("*.yaml"))
PAPER = sorted((REPO / "workflows" / "config").glob("paper_*.yaml"))


def test_there_is_one_paper_grid_per_seed_paper():
    assert [p.stem for p in PAPER] == ["paper_diffq", "paper_gpfq", "paper_lc", "paper_opq"]


def planned_jobs(stdout: str) -> dict[str, list[list[str]]]:
    """A dry run's jobs: rule -> each job's metrics.json outputs."""
    jobs: dict[str, list[list[str]]] = {}
    pattern = r"^(?:local)?rule (\w+):\n(?:    input: .*\n)?    output: (.*)$"
    for rule, outputs in re.findall(pattern, stdout, flags=re.M):
        jobs.setdefault(rule, []).append([o for o in outputs.split(", ") if o.endswith("/metrics.json")])
    return jobs


def check_plan(cfg, stdout: str, results: Path) -> None:
    """Every planned cell is the output of exactly one job (one job per cell, or per batch:
    config batch), and there is one reference job per (task, arch, seed)."""
    jobs = planned_jobs(stdout)
    cell_rules = {b.rule for b in cfg.batches()}
    assert set(jobs) == cell_rules | {"reference", "tables"}, sorted(jobs)  # (rule all has no output)
    made = [o for rule in cell_rules for job in jobs[rule] for o in job]
    assert sorted(made) == sorted(f"{results}/runs/{cfg.name}/{c.id}/metrics.json" for c in cfg.cells)
    for rule in cell_rules:  # a batch's cells share one reference
        for job in jobs[rule]:
            assert len({o.rsplit("/", 4)[0] + o.rsplit("/", 2)[1] for o in job}) == 1, job
    assert len(jobs["reference"]) == len({(c.task, c.arch, c.seed) for c in cfg.cells})


@pytest.mark.slow
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_grid_dry_runs(path, tmp_path):
    cfg = load_config(path)
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
           "--configfile", str(path), "--config", f"results_dir={tmp_path / 'results'}", "-n"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    check_plan(cfg, proc.stdout, tmp_path / "results")


@pytest.mark.slow
def test_the_default_grid_narrowed_on_the_command_line(tmp_path):
    """``--config archs=[lenet300] budgets=[2]`` (list items arrive as strings) keeps the other
    archs' recipes and plans only the lenet300 cells at 2 bits."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
           "--configfile", str(REPO / "workflows" / "config" / "default.yaml"),
           "--config", "archs=[lenet300]", "budgets=[2]", f"results_dir={tmp_path / 'results'}", "-n"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    default = load_config(REPO / "workflows" / "config" / "default.yaml")
    expected = {c for c in default.cells if c.arch == "lenet300" and c.budget == "2"}
    narrowed = load_config({**default.raw, "archs": ["lenet300"], "budgets": [2]})
    assert expected and set(narrowed.cells) == expected
    check_plan(narrowed, proc.stdout, tmp_path / "results")


def _pairs():
    for path in PAPER:
        cfg = load_config(path)
        for task in cfg["tasks"]:
            for arch in task_archs(cfg.raw, task):
                yield pytest.param(path, task, arch, id=f"{path.stem}-{task}-{arch}")


@pytest.mark.parametrize("path,task,arch", list(_pairs()))
def test_paper_size_pair_takes_one_training_step(path, task, arch):
    if arch == "transformer_lm":
        pytest.importorskip("fairseq", reason="the lm extra (fairseq-fixed) is not installed")
    cfg = load_config(path)
    job = plan_grid(cfg).identity(reference_id(task, arch, 0))
    shape, classes = TASK_SHAPES[task]
    torch.manual_seed(0)
    model = build_model(arch, shape, classes, **job.arch_params)
    if len(shape) == 1:  # a language model: a short block of tokens is enough for one step
        x = torch.randint(4, classes, (1, 32))
        y = torch.randint(4, classes, (1, 32))
    else:
        x, y = torch.randn(2, *shape), torch.randint(0, classes, (2,))
    settings = cfg.train_settings(task, arch)
    from quantbench.training.loop import make_optimizer

    opt = make_optimizer(model.parameters(), settings.optimizer, settings.lr, settings.momentum, settings.weight_decay)
    out = model(x)
    loss = torch.nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and out.shape[-1] == classes
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad and p.numel() > 0)


def test_published_figures_reach_the_specs():
    cfg = load_config(REPO / "workflows" / "config" / "paper_lc.yaml")
    context = plan_grid(cfg).context
    assert context.paper_value(plan_grid(cfg).identity(reference_id("mnist", "lenet300", 0))) == 97.87
    assert context.paper_value(plan_grid(cfg).identity(Cell("mnist", "lenet300", "lc_adaptive", "1", 0))) == 97.44
    assert context.paper_value(plan_grid(cfg).identity(Cell("mnist", "lenet300", "lc_adaptive", "2", 0))) is None
    assert context.paper_value(plan_grid(cfg).identity(Cell("mnist", "lenet5", "dc", "1", 0))) is None


def test_recipes_override_the_reference_per_pair():
    cfg = load_config({"name": "r", "tasks": ["digits"], "archs": ["lenet300", "lenet5"],
                       "reference": {"epochs": 7, "lr": 0.01}, "recipes": {"digits": {"lenet5": {"epochs": 3}}}})
    assert plan_grid(cfg).identity(reference_id("digits", "lenet5", 0)).train["epochs"] == 3
    assert plan_grid(cfg).identity(reference_id("digits", "lenet5", 0)).train["lr"] == 0.01
    assert plan_grid(cfg).identity(reference_id("digits", "lenet300", 0)).train["epochs"] == 7


@pytest.mark.parametrize("config,message", [
    ({"archs": {"digits": ["lenet300"], "mnist": ["lenet5"]}}, r"config.archs.mnist: 'mnist' is not in config.tasks"),
    ({"tasks": ["digits", "mnist"], "archs": {"digits": ["lenet300"]}}, r"no archs for task\(s\) \['mnist'\]"),
    ({"archs": {"digits": ["resnet9000"]}}, r"config.archs.digits\[0\]: unknown arch 'resnet9000'"),
    ({"recipes": {"digits": {"vgg9000": {"epochs": 1}}}}, r"config.recipes.digits.vgg9000: unknown arch"),
    ({"recipes": {"digitz": {"vgg16": {"epochs": 1}}}}, r"config.recipes.digitz: unknown task"),
    ({"recipes": {"digits": {"vgg16": {"epoch": 1}}}}, r"config.recipes.digits.vgg16.epoch: unknown parameter"),
    ({"recipes": {"digits": {"lenet300": {"epoch": 1}}}}, r"config.recipes.digits.lenet300.epoch: unknown parameter"),
    ({"paper": {"figures": {"digits": {"lenet300": {"rtn": {"2": "high"}}}}}}, r"config.paper.figures"),
])
def test_bad_grid_keys_name_the_key(config, message):
    from quantbench.method import ConfigError

    with pytest.raises(ConfigError, match=message):
        load_config({"name": "bad", **config})


def test_archs_mapping_pairs_tasks_with_their_own_archs():
    cfg = load_config({"name": "m", "tasks": ["digits", "mnist"], "methods": ["rtn"], "budgets": [2],
                       "archs": {"digits": ["lenet300"], "mnist": ["lenet5"]}})
    assert [(c.task, c.arch) for c in cfg.cells] == [("digits", "lenet300"), ("mnist", "lenet5")]


def test_the_task_shapes_match_the_builders():
    assert build_task("digits").input_shape == (1, 8, 8)
    shared = REPO.parent / "shared" / "data"
    if (shared / "tinyshakespeare").is_dir():
        task = build_task("tinyshakespeare", root=str(shared))
        assert (task.input_shape, task.num_classes) == TASK_SHAPES["tinyshakespeare"]
    if (shared / "mnist-t10k").is_dir():
        task = build_task("mnist_t10k", root=str(shared))
        assert (task.input_shape, task.num_classes) == TASK_SHAPES["mnist_t10k"]


def test_variants_run_as_methods_of_their_own():
    cfg = load_config({"name": "v", "methods": ["rtn", "lc_adaptive"], "budgets": [2],
                       "method_params": {"lc_adaptive": {"steps": 5, "mu0": 0.01}},
                       "variants": {"lc_adaptive": {"lloyd": {"kmeans": "lloyd", "steps": 3}}}})
    assert [c.method for c in cfg.cells] == ["rtn", "lc_adaptive", "lc_adaptive@lloyd"]
    plain, variant = (plan_grid(cfg).identity(c).method_params for c in cfg.cells[1:])
    assert (plain["kmeans"], plain["steps"], plain["mu0"]) == ("auto", 5, 0.01)
    assert (variant["kmeans"], variant["steps"], variant["mu0"]) == ("lloyd", 3, 0.01)


@pytest.mark.parametrize("config,message", [
    ({"variants": {"dc": {"a": {}}}}, r"config.variants.dc: 'dc' is not in config.methods"),
    ({"methods": ["lc_adaptive"], "variants": {"lc_adaptive": {"a": {"nope": 1}}}},
     r"config.variants.lc_adaptive.a.nope: unknown parameter"),
    ({"methods": ["lc_adaptive"], "variants": {"lc_adaptive": {"a-b": {}}}}, r"'a-b' does not match"),
    ({"resources": {"cell": {"gpus": 1}}}, r"config.resources.cell: unknown key\(s\) \['gpus'\]"),
])
def test_bad_variants_and_resources_name_the_key(config, message):
    from quantbench.method import ConfigError

    with pytest.raises(ConfigError, match=message):
        load_config({"name": "bad", **config})


@pytest.mark.slow
def test_jobs_ask_for_the_configured_resources(tmp_path):
    config = {"name": "res", "archs": ["lenet300", "lenet5"], "budgets": [2], "threads": 2,
              "resources": {"cell": {"mem_mb": 1234, "runtime": 7},
                            "archs": {"lenet5": {"cell": {"gpu": 1, "mem_mb": 4321}}}}}
    path = tmp_path / "config.yaml"
    import yaml

    path.write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
           "--configfile", str(path), "--cores", "4", "-n", "-p"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = re.split(r"\n(?=(?:local)?rule )", proc.stdout + proc.stderr)
    cells = {re.search(r"arch=(\w+)", j).group(1): j for j in jobs if j.startswith("rule cell")}
    assert "mem_mb=1234" in cells["lenet300"] and "runtime=7" in cells["lenet300"] and "gpu=0" in cells["lenet300"]
    assert "mem_mb=4321" in cells["lenet5"] and "gpu=1" in cells["lenet5"] and "runtime=7" in cells["lenet5"]
    assert "--threads 2" in cells["lenet5"]
