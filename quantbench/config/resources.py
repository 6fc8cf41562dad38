"""What a job asks the scheduler for (config ``resources``), and the cluster policy on it.

``resources(raw, rule, arch)``: defaults < ``resources.<rule>`` < ``resources.archs.<arch>.<rule>``;
``gpu``, ``processes`` and ``threads`` are per node. Under a cluster executor a grid whose
paper-scale training jobs (:data:`PAPER_SCALE_TASKS`) would run on CPUs is refused unless it says
``allow_cpu: true`` (:func:`check_cluster_gpus`).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

from quantbench.errors import ConfigError

# Tasks whose training is GPU work at paper size: under a cluster executor a job that trains on one
# of them with gpu 0 is refused when the grid starts unless the grid says allow_cpu (cpu_training_jobs).
PAPER_SCALE_TASKS = ("cifar10", "cifar100", "imagenet", "wikitext103")
DEFAULTS = {"mem_mb": 2000, "runtime": 60, "gpu": 0, "nodes": 1}  # and threads: config threads


def _where(raw: dict, rule: str, arch: str) -> str:
    return f"config.resources.archs.{arch}.{rule}" if arch in raw["resources"].get("archs", {}) \
        else f"config.resources.{rule}"


def resources(raw: dict, rule: str, arch: str) -> dict:
    """Scheduler resources of a ``rule`` (reference, cell) job for ``arch``. ``processes`` defaults
    to ``gpu`` (one rank per GPU), else 1; ``threads``, unless given, to at least ``processes``
    (the processes on a node share them, one at least each)."""
    res = raw["resources"]
    given = {**res.get(rule, {}), **res.get("archs", {}).get(arch, {}).get(rule, {})}
    given = {k: int(v) for k, v in given.items()}  # the schema takes 2.0 for an integer; sbatch wants 2
    merged = {"threads": raw["threads"], **DEFAULTS, **given}
    merged.setdefault("processes", max(1, merged["gpu"]))
    where = _where(raw, rule, arch)
    if merged["gpu"] and merged["processes"] != merged["gpu"]:
        raise ConfigError(f"{where}: processes {merged['processes']} with gpu {merged['gpu']}: a job on "
                          f"GPUs runs one process per GPU (set processes to gpu, or leave it out)")
    if "threads" not in given:
        merged["threads"] = max(merged["threads"], merged["processes"])
    elif merged["threads"] < merged["processes"]:
        raise ConfigError(f"{where}: threads {merged['threads']} < processes {merged['processes']}: the "
                          f"processes on a node share its threads, one at least each")
    return merged


def rule_resource(raw: dict, rule: str, key: str | Callable[[dict], Any]):
    """A Snakemake resource value for ``rule``: ``key`` of its :func:`resources`, or ``key(resources)``
    for a value derived from them; a constant when no arch overrides the rule's resources (cheap
    to plan; one key may follow another, threads from processes), else a function of the job's
    wildcards."""
    pick = key if callable(key) else operator.itemgetter(key)
    if not any(rule in r for r in raw["resources"].get("archs", {}).values()):
        return pick(resources(raw, rule, ""))
    return lambda wildcards: pick(resources(raw, rule, wildcards.arch))


def check_resources(raw: dict, known_archs: list[str]) -> None:
    """Every ``resources.archs`` key a known arch (archs outside the grid are allowed: a narrowed
    grid), and every (rule, arch) consistent; a batch job (config ``batch`` other than ``cell``)
    runs in one process."""
    for arch in raw["resources"].get("archs", {}):
        if arch not in known_archs:
            raise ConfigError(f"config.resources.archs.{arch}: unknown arch; allowed values: {known_archs}")
    for arch in ["", *raw["resources"].get("archs", {})]:
        for rule in ("reference", "cell"):
            res = resources(raw, rule, arch)
            if rule == "cell" and raw["batch"] != "cell" and res["processes"] * res["nodes"] > 1:
                where = f"config.resources.archs.{arch}.cell" if arch else "config.resources.cell"
                raise ConfigError(f"config.batch: {raw['batch']!r} runs several cells in one process, but {where} "
                                  f"asks for {res['processes']} process(es) on {res['nodes']} node(s); a job of "
                                  f"several processes runs one cell: set batch to 'cell'")


def cpu_training_jobs(cfg: Any) -> dict[str, list[str]]:
    """The planned jobs of ``cfg`` (a loaded grid, :class:`quantbench.config.Config`) that train on a
    paper-scale task with ``gpu: 0``, by the key that gives them GPUs
    (``config.resources.archs.<arch>.<rule>.gpu``): a reference its recipe trains (not published
    weights), and cells of a method that trains (``Method.trains``)."""
    from quantbench.methods import get_method

    found: dict[str, list[str]] = {}
    pairs = dict.fromkeys((c.task, c.arch) for c in cfg.cells if c.task in PAPER_SCALE_TASKS)
    for task, arch in pairs:
        settings = cfg.train_settings(task, arch)
        if not settings.pretrained and not resources(cfg.raw, "reference", arch)["gpu"]:
            found.setdefault(f"config.resources.archs.{arch}.reference.gpu", []).append(
                f"{task}/{arch} reference ({settings.epochs} epochs of training)")
    trained: dict[tuple[str, str], list[str]] = {(c.task, c.arch): [] for c in cfg.cells}
    for c in cfg.cells:
        if c.task in PAPER_SCALE_TASKS and c.method not in trained[c.task, c.arch] and get_method(c.method).trains:
            trained[c.task, c.arch].append(c.method)
    for (task, arch), methods in trained.items():
        if methods and not resources(cfg.raw, "cell", arch)["gpu"]:
            found.setdefault(f"config.resources.archs.{arch}.cell.gpu", []).append(
                f"{task}/{arch} cells of {', '.join(methods)}")
    return found


def check_cluster_gpus(cfg: Any, executor: str) -> None:
    """Refuse (ConfigError naming each key to set) a grid whose paper-scale training jobs would run
    on CPUs under the cluster ``executor``, unless it says ``allow_cpu: true``; the Snakefile's
    onstart handler calls it for a non-local executor only (a local run is never refused)."""
    found = {} if cfg.raw["allow_cpu"] else cpu_training_jobs(cfg)
    if found:
        keys = "\n".join(f"  {key} (now 0): {'; '.join(jobs)}" for key, jobs in found.items())
        raise ConfigError(f"under the {executor} executor these jobs would train a paper-scale task on CPUs "
                          f"(gpu 0):\n{keys}\nset each key to the GPUs per node the job needs (docs/cluster.md), "
                          f"or config.allow_cpu: true to run them on CPUs as they are")
