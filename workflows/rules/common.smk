# Shared by all rules: the validated config (defaults filled in) and the paths of every job.
import json
from pathlib import Path

from snakemake.exceptions import WorkflowError

from quantbench.config import Cell, load_config
from quantbench.method import ConfigError

try:
    CFG = load_config(config)
except ConfigError as e:
    raise WorkflowError(str(e)) from None

RESULTS = str(CFG.results)
EXP = CFG.name
RUNS = f"{RESULTS}/runs/{EXP}"
LOGS = f"{RESULTS}/logs/{EXP}"
TRACKING_URI_ARG = f"--tracking-uri {CFG['tracking_uri']}" if CFG["tracking_uri"] else ""


wildcard_constraints:
    task=r"[A-Za-z0-9_]+",
    arch=r"[A-Za-z0-9_]+",
    method=r"[A-Za-z0-9_]+(@[A-Za-z0-9_]+)?",
    budget=r"[0-9]+(\.[0-9]+)?",
    seed=r"[0-9]+",


def reference_file(task, arch, seed):
    return f"{RUNS}/{task}/{arch}/reference/s{seed}/metrics.json"


def cell_file(cell):
    return f"{RUNS}/{cell.id}/metrics.json"


def table_files(exts=("md", "csv", "tex")):
    return expand(f"{RESULTS}/tables/{EXP}/{{task}}.{{ext}}", task=CFG["tasks"], ext=list(exts))


def plot_files(ext):
    return expand(f"{RESULTS}/tables/{EXP}/{{task}}_{{plot}}.{ext}", task=CFG["tasks"], plot=["size", "steps"])


def reference_spec(wildcards):
    return json.dumps(CFG.reference_spec(wildcards.task, wildcards.arch, int(wildcards.seed)), sort_keys=True)


def cell_spec(wildcards):
    cell = Cell(wildcards.task, wildcards.arch, wildcards.method, wildcards.budget, int(wildcards.seed))
    return json.dumps(CFG.cell_spec(cell), sort_keys=True)


if CFG.skipped:
    logger.info(f"quantbench: {len(CFG.skipped)} cell(s) skipped at planning:")
    for _cell, _why in CFG.skipped:
        logger.info(f"  {_cell.id}: {_why}")
