# Shared by all rules: the validated config (defaults filled in), the paths of every job, and the
# two parts of a job's spec: its identity (params.spec, which Snakemake compares to decide what to
# rerun) and the grid's context (results/data/tracking locations, download, device, published
# figures; params.context, which it does not compare), so changing where things live reruns nothing.
import json
import shlex
import sys

from snakemake.exceptions import WorkflowError
from snakemake_interface_executor_plugins.registry import ExecutorPluginRegistry

from quantbench.config import Cell, load_config, merged_config, typed_overrides
from quantbench.method import ConfigError


def _config_source():
    """The grid's file(s), for error messages."""
    files = [str(f) for f in workflow.overwrite_configfiles] or [str(p) for p in workflow.configfiles]
    overrides = " with --config overrides" if workflow.config_settings.config else ""
    return (", ".join(files) or "no config file") + overrides


def cluster_executor():
    """The executor's name when this run submits its jobs to a cluster (a non-local executor, such
    as the SLURM profile's), else None. Snakemake 9 picks the executor (--executor, or a profile's
    ``executor:``) before it reads this file but gives it to the workflow only when the DAG runs,
    and a dry run (-n) then runs Snakemake's local 'dryrun' executor instead; so the executor asked
    for is read from the command line as Snakemake parsed it (``args`` of snakemake.cli.args_to_api,
    which calls us). A job running on a cluster node (exec mode remote) and Snakemake's Python API
    (no command line) count as local."""
    if not workflow.is_main_process:
        return None
    frame = sys._getframe()
    while frame is not None and not (frame.f_code.co_name == "args_to_api"
                                     and frame.f_globals.get("__name__") == "snakemake.cli"):
        frame = frame.f_back
    name = getattr(frame.f_locals.get("args"), "executor", None) if frame is not None else None
    if name is None or ExecutorPluginRegistry().get_plugin(name).common_settings.local_exec:
        return None
    return name


try:
    # the grid: its file (or the default's), with the --config overrides read as YAML would
    CFG = load_config(merged_config(config, typed_overrides(workflow.config_settings.config)))
    # on a cluster, paper-scale training on CPUs is refused unless the grid says allow_cpu
    if executor := cluster_executor():
        CFG.check_cluster_gpus(executor)
except ConfigError as e:
    raise WorkflowError(f"{_config_source()}: {e}") from None

RESULTS = str(CFG.results)
EXP = CFG.name
RUNS = f"{RESULTS}/runs/{EXP}"
LOGS = f"{RESULTS}/logs/{EXP}"
CONTEXT = CFG.context().to_json()
TRACKING_URI_ARG = f"--tracking-uri {shlex.quote(CFG['tracking_uri'])}" if CFG["tracking_uri"] else ""


def context(wildcards, output):
    """The grid's context, as a param that is a function of ``output``: Snakemake treats such a
    param as derived from the paths and leaves it out of its params rerun trigger, so where
    things live never reruns a job (the identity, ``params.spec``, is compared)."""
    return CONTEXT


def tables_command(wildcards=None, output=None):
    """The one tables command: rule tables runs it, and the onerror handler."""
    return (f"quantbench tables --experiment {shlex.quote(EXP)} --results-dir {shlex.quote(RESULTS)} "
            f"--size-tolerance {CFG['tables']['size_tolerance']!r} --alpha {CFG['tables']['alpha']!r} "
            f"--claims {shlex.quote(json.dumps(CFG['claims']))} {TRACKING_URI_ARG}")


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


def claims_files(ext):
    return expand(f"{RESULTS}/tables/{EXP}/{{task}}_claims.{ext}", task=CFG["tasks"])


def plot_files(ext):
    plots = ["size", "steps"] + (["calibration"] if CFG["calibration"].get("samples") else [])
    return expand(f"{RESULTS}/tables/{EXP}/{{task}}_{{plot}}.{ext}", task=CFG["tasks"], plot=plots)


def batch_files(batch, name):
    """The files of a batch's cells: ``metrics.json``, ``model.qbc`` under runs/, ``.log`` under logs/."""
    if name == ".log":
        return [f"{LOGS}/{{task}}/{{arch}}/{m}/b{b}/s{{seed}}.log" for m, b in batch.members]
    return [f"{RUNS}/{{task}}/{{arch}}/{m}/b{b}/s{{seed}}/{name}" for m, b in batch.members]


def batch_spec(wildcards, batch):
    """A job's identity: one cell's (``batch: cell``, as it always was), or a JSON list of its cells'."""
    if batch.members == (("{method}", "{budget}"),):  # batch: cell
        return cell_spec(wildcards)
    cells = [Cell(wildcards.task, wildcards.arch, m, b, int(wildcards.seed)) for m, b in batch.members]
    return "[" + ",".join(CFG.cell_identity(c).to_json() for c in cells) + "]"


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

    keys = derive(CFG.resources(kind, ""))
    return {key: CFG.rule_resource(kind, lambda res, key=key: derive(res)[key]) for key in keys}


def launch(wildcards, resources):
    """How a job starts: one process on one node; on several nodes ``srun`` starts one launcher
    per node (``quantbench.distributed.launch``), which meet at the first node's address. A param
    of ``resources`` is derived (not in Snakemake's params rerun trigger), like ``context``."""
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


def reference_spec(wildcards):
    return CFG.reference_identity(wildcards.task, wildcards.arch, int(wildcards.seed)).to_json()


def cell_spec(wildcards):
    cell = Cell(wildcards.task, wildcards.arch, wildcards.method, wildcards.budget, int(wildcards.seed))
    return CFG.cell_identity(cell).to_json()


if CFG.skipped:  # one line per method; `quantbench validate` lists every cell
    logger.info(f"quantbench: {len(CFG.skipped)} cell(s) skipped at planning (budgets a method does not serve):")
    for _line in CFG.skipped_summary():
        logger.info(f"  {_line}")
