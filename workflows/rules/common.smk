# Shared by all rules: the validated config (defaults filled in), its plan (every job's identity and
# the grid's context, quantbench.jobs.plan; written to plan.json when the grid starts, write_plan), and
# the paths of every job. A job's params carry its identity's digest, which Snakemake compares to
# decide what to rerun; the context (results/data/tracking locations, download, device, published
# figures) is in no identity, so changing where things live reruns nothing.
import functools
import json
import os
import subprocess

from snakemake.exceptions import WorkflowError

from quantbench.config import Cell, load_config, merged_config, typed_overrides
from quantbench.config.resources import check_cluster_gpus, resources, rule_resource
from quantbench.errors import ConfigError
from quantbench.jobs.lock import ResultsLock
from quantbench.jobs.plan import PLAN_FILE, batch_name, job_dirs, plan_grid, reference_id
from quantbench.jobs.spec import content_hash


def _config_source():
    """The grid's file(s), for error messages."""
    files = [str(f) for f in workflow.overwrite_configfiles] or [str(p) for p in workflow.configfiles]
    overrides = " with --config overrides" if workflow.config_settings.config else ""
    return (", ".join(files) or "no config file") + overrides


def check_executor():
    """The onstart handler's first work: refuse a grid whose paper-scale training jobs would run on
    CPUs under a cluster executor (quantbench.config.resources.check_cluster_gpus), before any job
    is submitted. Snakemake has chosen the executor by then (``workflow.executor_plugin``: the
    SLURM profile's ``executor: slurm``, or --executor); a local executor, a job running on a
    cluster node, and a dry run (which never starts the grid) are not checked."""
    plugin = workflow.executor_plugin
    if not workflow.is_main_process or plugin is None or plugin.common_settings.local_exec:
        return
    try:
        check_cluster_gpus(CFG, plugin.name)
    except ConfigError as e:
        raise WorkflowError(f"{_config_source()}: {e}") from None


try:
    # the grid: its file (or the default's), with the --config overrides read as YAML would
    CFG = load_config(merged_config(config, typed_overrides(workflow.config_settings.config)))
except ConfigError as e:
    raise WorkflowError(f"{_config_source()}: {e}") from None

RESULTS = str(CFG.results)
EXP = CFG.name
RUNS, LOGS = job_dirs(RESULTS, EXP)  # as the jobs find them from the plan (Plan.cell_files)
TABLES = f"{RESULTS}/tables/{EXP}"
PLAN = f"{RUNS}/{PLAN_FILE}"


@functools.cache
def the_plan():
    """The grid's plan, built when first asked for (a job's params, write_plan)."""
    try:
        return plan_grid(CFG)
    except ConfigError as e:
        raise WorkflowError(f"{_config_source()}: {e}") from None


RESULTS_LOCK = None  # this grid's lock on its results directory, from onstart to its end


def hold_results_lock():
    """The onstart handler's first work: the grid's lock on its results directory, held until this
    Snakemake process exits (quantbench.jobs.lock: a second grid on the same results_dir is refused
    naming the holder). Jobs on cluster nodes do not take it."""
    global RESULTS_LOCK
    if not workflow.is_main_process:
        return
    try:
        RESULTS_LOCK = ResultsLock(RESULTS, EXP).acquire()
    except ConfigError as e:
        raise WorkflowError(str(e)) from None
    if RESULTS_LOCK.unsupported:
        logger.warning(f"quantbench: {RESULTS_LOCK.unsupported}")
    if RESULTS_LOCK.took_over():
        logger.info(f"quantbench: {RESULTS_LOCK.took_over()}")


def release_results_lock():
    """The end of the grid (onsuccess/onerror, last): the lock given up and its record cleared."""
    if RESULTS_LOCK is not None:
        RESULTS_LOCK.release()


def write_plan():
    """The onstart handler's work: write plan.json when it differs from this planning's (a job reads
    its identity there and refuses one whose digest is not the one its params carry), then record
    it in the MLflow experiment, creating the store and the experiment once (quantbench plan; a plan
    recorded before is not recorded again). Not a rule: a rule's output that every job reads would
    make each new plan hide the jobs' own params changes from Snakemake (it does not check the
    params of a job whose input a running job rewrites, even an ancient() one)."""
    plan = the_plan()
    if not os.path.isfile(PLAN) or open(PLAN).read() != plan.to_json():  # the file is plan.to_json()
        plan.write(PLAN)
    os.makedirs(LOGS, exist_ok=True)
    log = f"{LOGS}/plan.log"
    with open(log, "w") as f:  # not shell(): a path is not a format string
        recorded = subprocess.run(["quantbench", "plan", PLAN], stdout=f, stderr=subprocess.STDOUT).returncode == 0
    if not recorded:
        with open(log) as f:
            raise WorkflowError(f"recording the plan failed ({log}):\n" + "".join(f.readlines()[-10:]))


def tables_settings_digest(wildcards=None):
    """The tables' settings (size tolerance, alpha, margins, claims: plan.json's ``tables``) as a digest, the
    tables rule's params: changing a claim redraws the tables, and no JSON reaches a command line."""
    return content_hash(the_plan().tables)[:16]


def tables_argv():
    """The one tables command (rule tables runs it, and the grid's end when a job failed): every
    setting comes from plan.json."""
    return ["quantbench", "tables", "--plan", PLAN]


def end_of_grid(failed):
    """The onsuccess/onerror handlers' work. When a job failed (the grid ran with keep-going, the
    profile's default), the tables and plots are written all the same (``quantbench tables``, run
    without Snakemake's shell formatting: its log is logs/<experiment>/tables-onerror.log). Then one
    line per cell that did not end with a result (its log named) and per cell whose method
    diverged (a result the tables show as ``diverged``)."""
    if failed and os.path.isfile(PLAN):
        os.makedirs(LOGS, exist_ok=True)
        with open(f"{LOGS}/tables-onerror.log", "w") as log:
            made = subprocess.run(tables_argv(), stdout=log, stderr=subprocess.STDOUT).returncode == 0
        outcome = f"written to {TABLES}" if made else "failed"
        logger.error(f"quantbench: tables and plots {outcome} (log: {LOGS}/tables-onerror.log)")
    for line in cell_outcomes():
        (logger.error if line.startswith("failed") else logger.warning)(f"quantbench: {line}")


def cell_outcomes():
    """``failed: <cell> (log: <file>)`` for each planned cell without metrics.json whose job ran,
    ``not run: <cell>`` for one whose job never started (its reference failed), and ``diverged:
    <cell>: <where>`` for each cell whose result is a divergence."""
    lines = []
    for cell in CFG.cells:
        path, log = cell_file(cell), f"{LOGS}/{cell.id}.log"
        if not os.path.isfile(path):
            lines.append(f"failed: {cell.id} (log: {log})" if os.path.isfile(log) else f"not run: {cell.id}")
            continue
        with open(path) as f:
            result = json.load(f)
        if result.get("status") == "diverged":
            lines.append(f"diverged: {cell.id}: {result.get('reason', '')} (log: {log})")
    return lines


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
    return expand(f"{TABLES}/{{task}}.{{ext}}", task=CFG["tasks"], ext=list(exts))


def claims_files(ext):
    return expand(f"{TABLES}/{{task}}_claims.{ext}", task=CFG["tasks"])


def plot_files(ext):
    plots = ["size", "steps"] + (["calibration"] if CFG["calibration"].get("samples") else [])
    return expand(f"{TABLES}/{{task}}_{{plot}}.{ext}", task=CFG["tasks"], plot=plots)


def batch_files(batch, name):
    """The files of a batch's cells: ``metrics.json`` under runs/, ``.log`` under logs/."""
    if name == ".log":
        return [f"{LOGS}/{{task}}/{{arch}}/{m}/b{b}/s{{seed}}.log" for m, b in batch.members]
    return [f"{RUNS}/{{task}}/{{arch}}/{m}/b{b}/s{{seed}}/{name}" for m, b in batch.members]


def batch_jobs(wildcards, batch):
    """The job ids of a batch's cells: one cell's (``batch: cell``), or the cells of one reference."""
    return [Cell(wildcards.task, wildcards.arch, m.format(method=wildcards.get("method")),
                 b.format(budget=wildcards.get("budget")), int(wildcards.seed)).id for m, b in batch.members]


def batch_job(wildcards, batch):
    """What a cell job names its cells by (quantbench.jobs.plan.batch_name): rule ``cell`` its one cell by its
    id (``--job``), ``cells_<label>`` its cells as task/arch/<label>/s<seed> and ``cells`` by their
    reference's id (``--batch``: the job reads its cells, and where their files go, from the plan)."""
    method, budget = (wildcards.method, wildcards.budget) if batch.rule == "cell" else (batch.label, None)
    return batch_name(wildcards.task, wildcards.arch, wildcards.seed, method, budget)


def batch_digest(wildcards, batch):
    """The digest (first 16 hex digits) of a cell job's cells (Plan.batch_digest: one cell's own, else of
    them all): the param Snakemake compares, and what the job checks the plan file against."""
    return the_plan().batch_digest(batch_jobs(wildcards, batch))[:16]


def job_resources(kind, cells=1):
    """The Snakemake resources of a ``kind`` (reference, cell) job, from config ``resources``:
    mem_mb, runtime (per cell: times ``cells``, the cells of the job), gpu and processes (per node), nodes. A job on several nodes also gets what
    snakemake-executor-plugin-slurm needs to start one torchrun launcher per node: ``mpi`` (the
    job's command runs srun itself instead of being wrapped in ``srun -n1``), ``tasks`` = nodes,
    its GPUs as ``gres=gpu:N`` (per node) instead of ``gpu`` (``--gpus`` counts the whole job),
    and ``tasks_per_gpu=0`` (no ``--ntasks-per-gpu``). A resource that is None is left unset.
    Constants unless an arch overrides its resources (planning a large grid stays cheap)."""

    def derive(res):
        several = res["nodes"] > 1
        return {
            "mem_mb": res["mem_mb"],
            "runtime": res["runtime"] * cells,
            "gpu": None if several else res["gpu"],
            "processes": res["processes"],
            "nodes": res["nodes"],
            "gres": f"gpu:{res['gpu']}" if several and res["gpu"] else None,
            "mpi": "srun" if several else None,
            "tasks": res["nodes"] if several else None,
            "tasks_per_gpu": 0 if several and res["gpu"] else None,
        }

    keys = derive(resources(CFG.raw, kind, ""))
    return {key: rule_resource(CFG.raw, kind, lambda res, key=key: derive(res)[key]) for key in keys}


def launch(wildcards, resources):
    """How a job starts: one process on one node; on several nodes ``srun`` starts one launcher
    per node (``quantbench.distributed.launch``), which meet at the first node's address. A param
    of ``resources`` is derived (not in Snakemake's params rerun trigger)."""
    if resources.nodes == 1:
        return ""
    return f"srun --nodes={resources.nodes} --ntasks-per-node=1 "


def launch_args(wildcards, resources):
    """The job command's torchrun options: ranks per node, nodes, and on several nodes the
    rendezvous endpoint, resolved in the job's shell: the job's first node, on port 29400 + the
    SLURM job id mod 1000 (two multi-node jobs that share a first node meet on different ports)."""
    args = f"--nproc-per-node {resources.processes} --nnodes {resources.nodes}"
    if resources.nodes > 1:
        args += (' --rdzv-endpoint "$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)'
                 ':$((29400 + SLURM_JOB_ID % 1000))"')
    return args


def reference_job(wildcards):
    return reference_id(wildcards.task, wildcards.arch, int(wildcards.seed))


if CFG.skipped:  # one line per method; `quantbench validate` lists every cell
    logger.info(f"quantbench: {len(CFG.skipped)} cell(s) skipped at planning (budgets a method does not serve):")
    for _line in CFG.skipped_summary():
        logger.info(f"  {_line}")
