"""Config loading: JSON-schema validation with defaults, then the grid and per-job specs.

Both the Snakefile and the CLI use :func:`load_config`, so a bad config fails the same way
everywhere: with the key path and what is allowed, before any job is planned.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from quantbench.method import Budget, ConfigError, calibration_variant, make_params
from quantbench.spec import JobContext, JobIdentity, JobSpec, format_budget
from quantbench.train import TrainSettings

SCHEMA = "schemas/config.schema.yaml"  # package data of quantbench.workflows (the layout's workflows/)
# Tasks whose training is GPU work at paper size: under a cluster executor a job that trains on one
# of them with gpu 0 is refused at planning unless the grid says allow_cpu (Config.cpu_training_jobs).
PAPER_SCALE_TASKS = ("cifar10", "cifar100", "imagenet", "wikitext103")
# Training examples of each image task's train split at most (digits and mnist_t10k are split from
# 1,797 and 10,000 examples by task_params: their whole set is the bound), for config.calibration.
TRAIN_SIZES = {"digits": 1797, "mnist_t10k": 10000, "mnist": 60000, "fashion_mnist": 60000, "cifar10": 50000,
               "cifar100": 50000, "imagenet": 1281167}
CALIBRATION_SOURCES = {"train"}  # the splits a calibration sample may come from (tasks have train and test)


def _with_defaults(validator_cls):
    """A validator class that fills in ``default`` values while it validates."""
    validate_properties = validator_cls.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if "default" in sub and key not in instance:
                    instance[key] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_cls, {"properties": set_defaults})


def _path(error: jsonschema.ValidationError) -> str:
    out = "config"
    for part in error.absolute_path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _explain(error: jsonschema.ValidationError) -> str:
    where = _path(error)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        return f"{where}: unknown key(s) {extra}; allowed keys: {allowed}"
    if error.validator == "enum":
        return f"{where}: {error.instance!r} is not allowed; allowed values: {error.validator_value}"
    return f"{where}: {error.message}"


def load_schema() -> dict:
    from importlib.resources import files

    return yaml.safe_load(files("quantbench.workflows").joinpath(SCHEMA).read_text())


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def task_archs(raw: dict, task: str) -> list[str]:
    """The archs ``task`` runs: ``archs`` itself, or ``archs[task]`` when it is a mapping."""
    return raw["archs"][task] if isinstance(raw["archs"], dict) else raw["archs"]


def typed_overrides(overrides: Mapping) -> dict:
    """``snakemake --config`` values as the YAML file would have them.

    Snakemake reads ``key=value`` with YAML's BaseLoader below the top level, so ``budgets=[1,2]``,
    ``download=true`` and ``method_params={rtn: {per_channel: true}}`` arrive with strings for
    numbers and booleans. Each string leaf that reads as a boolean, null, integer or float becomes
    one; every other string stays a string (``archs=[lenet300]``).
    """
    def typed(value):
        if isinstance(value, Mapping):
            return {k: typed(v) for k, v in value.items()}
        if isinstance(value, list):
            return [typed(v) for v in value]
        if not isinstance(value, str):
            return value
        if value.lower() in ("true", "false"):
            return value.lower() == "true"
        if value in ("null", "~"):
            return None
        for kind in (int, float):
            try:
                return kind(value)
            except ValueError:
                pass
        return value

    return typed(dict(overrides))


def merged_config(base: Mapping, overrides: Mapping) -> dict:
    """``base`` with ``overrides`` on top, mappings merged key by key, anything else replaced (as
    Snakemake merges ``--config`` into a config file)."""
    out = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merged_config(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@dataclass(frozen=True)
class Cell:
    task: str
    arch: str
    method: str
    budget: str
    seed: int

    @property
    def id(self) -> str:
        return f"{self.task}/{self.arch}/{self.method}/b{self.budget}/s{self.seed}"


@dataclass(frozen=True)
class Batch:
    """The cells one Snakemake job computes for one (task, arch, seed): its rule's name and its
    ``(method, budget)`` pairs; ``batch: cell`` has one pair of wildcards, ``{method}`` and ``{budget}``."""

    rule: str
    members: tuple[tuple[str, str], ...]


BATCH_KEY = {"method": lambda pair: pair[0], "reference": lambda pair: ""}


@dataclass
class Config:
    """A validated config with defaults filled in, and the grid it plans."""

    raw: dict
    cells: list[Cell]
    skipped: list[tuple[Cell, str]]
    claims: list = field(default_factory=list)  # quantbench.claims.Claim, parsed from config claims

    def __getitem__(self, key: str) -> Any:
        return self.raw[key]

    @property
    def name(self) -> str:
        return self.raw["name"]

    @property
    def results(self) -> Path:
        return Path(self.raw["results_dir"])

    def check_claims(self) -> None:
        """A ConfigError naming the claim when it names a method, budget, arch or task this grid
        (as written, overrides included) does not have; planning checks only that its methods exist,
        so that a grid narrowed with ``--config`` keeps its claims (their other cases are not run)."""
        from quantbench.claims import check_against_grid

        archs = sorted({a for t in self.raw["tasks"] for a in task_archs(self.raw, t)})
        check_against_grid(self.claims, self.labels, self.raw["budgets"], archs, self.raw["tasks"])

    @property
    def labels(self) -> list[str]:
        """The grid's method labels: each method, then its variants ``method@variant`` (a method that
        calibrates runs only its variants under a ``calibration`` axis, :func:`calibration_variants`)."""
        from quantbench.methods import get_method

        variants, axis = self.raw["variants"], bool(self.raw["calibration"].get("samples"))
        return [label for m in self.raw["methods"] for label in
                ([] if axis and get_method(m).calibrated else [m]) + [f"{m}@{v}" for v in variants.get(m, {})]]

    def tracking_uri(self) -> str:
        from quantbench.tracking import resolve_tracking_uri

        return resolve_tracking_uri(self.raw["tracking_uri"], self.results)

    def train_settings(self, task: str | None = None, arch: str | None = None) -> TrainSettings:
        """``reference`` overlaid with ``recipes.<task>.<arch>``."""
        recipe = self.raw["recipes"].get(task, {}).get(arch, {}) if task else {}
        where = f"config.recipes.{task}.{arch}" if recipe else "config.reference"
        return make_params(TrainSettings, {**self.raw["reference"], **recipe}, where)

    def _cached(self, key: tuple, build):
        """Specs are built once per (kind, ...) key: planning a 10k-cell grid asks for each many times."""
        cache = self.__dict__.setdefault("_cache", {})
        if key not in cache:
            cache[key] = build()
        return copy.deepcopy(cache[key])

    def rule_resource(self, rule: str, key: str | Callable[[dict], Any]):
        """A Snakemake resource value for ``rule``: ``key`` of its :meth:`resources`, or ``key(resources)``
        for a value derived from them; a constant when no arch overrides the rule's resources (cheap
        to plan; one key may follow another, threads from processes), else a function of the job's
        wildcards."""
        pick = key if callable(key) else operator.itemgetter(key)
        if not any(rule in r for r in self.raw["resources"].get("archs", {}).values()):
            return pick(self.resources(rule, ""))
        return lambda wildcards: pick(self.resources(rule, wildcards.arch))

    def resources(self, rule: str, arch: str) -> dict:
        """Scheduler resources of a ``rule`` job for ``arch``: defaults < resources.<rule> <
        resources.archs.<arch>.<rule>. ``gpu``, ``processes`` and ``threads`` are per node;
        ``processes`` defaults to ``gpu`` (one rank per GPU), else 1; ``threads``, unless given,
        to at least ``processes`` (the processes share them, one at least each)."""
        res = self.raw["resources"]
        given = {**res.get(rule, {}), **res.get("archs", {}).get(arch, {}).get(rule, {})}
        given = {k: int(v) for k, v in given.items()}  # the schema takes 2.0 for an integer; sbatch wants 2
        merged = {"threads": self.raw["threads"], "mem_mb": 2000, "runtime": 60, "gpu": 0, "nodes": 1, **given}
        merged.setdefault("processes", max(1, merged["gpu"]))
        where = f"config.resources.archs.{arch}.{rule}" if arch in res.get("archs", {}) else f"config.resources.{rule}"
        if merged["gpu"] and merged["processes"] != merged["gpu"]:
            raise ConfigError(f"{where}: processes {merged['processes']} with gpu {merged['gpu']}: a job on "
                              f"GPUs runs one process per GPU (set processes to gpu, or leave it out)")
        if "threads" not in given:
            merged["threads"] = max(merged["threads"], merged["processes"])
        elif merged["threads"] < merged["processes"]:
            raise ConfigError(f"{where}: threads {merged['threads']} < processes {merged['processes']}: the "
                              f"processes on a node share its threads, one at least each")
        return merged

    def cpu_training_jobs(self) -> dict[str, list[str]]:
        """The planned jobs that train on a paper-scale task (:data:`PAPER_SCALE_TASKS`) with ``gpu: 0``,
        by the key that gives them GPUs (``config.resources.archs.<arch>.<rule>.gpu``): a reference
        its recipe trains (not published weights), and cells of a method that trains (``Method.trains``)."""
        from quantbench.methods import get_method

        found: dict[str, list[str]] = {}
        pairs = dict.fromkeys((c.task, c.arch) for c in self.cells if c.task in PAPER_SCALE_TASKS)
        for task, arch in pairs:
            settings = self.train_settings(task, arch)
            if not settings.pretrained and not self.resources("reference", arch)["gpu"]:
                found.setdefault(f"config.resources.archs.{arch}.reference.gpu", []).append(
                    f"{task}/{arch} reference ({settings.epochs} epochs of training)")
        trained: dict[tuple[str, str], list[str]] = {(c.task, c.arch): [] for c in self.cells}
        for c in self.cells:
            if c.task in PAPER_SCALE_TASKS and c.method not in trained[c.task, c.arch] and get_method(c.method).trains:
                trained[c.task, c.arch].append(c.method)
        for (task, arch), methods in trained.items():
            if methods and not self.resources("cell", arch)["gpu"]:
                found.setdefault(f"config.resources.archs.{arch}.cell.gpu", []).append(
                    f"{task}/{arch} cells of {', '.join(methods)}")
        return found

    def check_cluster_gpus(self, executor: str) -> None:
        """Refuse (ConfigError naming each key to set) a grid whose paper-scale training jobs would
        run on CPUs under the cluster ``executor``, unless it says ``allow_cpu: true``; planning calls
        it for a non-local executor only (a local run is never refused)."""
        found = {} if self.raw["allow_cpu"] else self.cpu_training_jobs()
        if found:
            keys = "\n".join(f"  {key} (now 0): {'; '.join(jobs)}" for key, jobs in found.items())
            raise ConfigError(f"under the {executor} executor these jobs would train a paper-scale task on CPUs "
                              f"(gpu 0):\n{keys}\nset each key to the GPUs per node the job needs (docs/cluster.md), "
                              f"or config.allow_cpu: true to run them on CPUs as they are")

    def method_params(self, method: str) -> dict:
        """The resolved ``Params`` of a method label: ``method_params.<method>``, and for a
        variant label ``<method>@<variant>`` also ``variants.<method>.<variant>`` on top."""

        return self._cached(("method", method), lambda: self._method_params(method))

    def _method_params(self, method: str) -> dict:
        from quantbench.methods import get_method

        base, _, variant = method.partition("@")
        overrides = {**self.raw["method_params"].get(base, {}), **self.raw["variants"].get(base, {}).get(variant, {})}
        where = f"config.variants.{base}.{variant}" if variant else f"config.method_params.{base}"
        return dataclasses.asdict(make_params(get_method(base).Params, overrides, where))

    def context(self) -> JobContext:
        """What every job of this grid is given besides its identity (see :mod:`quantbench.spec`)."""
        return JobContext(experiment=self.name, results_dir=str(self.results), data_root=self.raw["data_root"],
                          download=self.raw["download"], tracking_uri=self.raw["tracking_uri"],
                          device=self.raw["device"], paper_source=self.raw["paper"].get("source", ""),
                          paper_figures=self.raw["paper"].get("figures", {}), loaders=self.raw["loaders"])

    def reference_identity(self, task: str, arch: str, seed: int) -> JobIdentity:
        """What the reference job of (task, arch, seed) computes; its cells inherit ``eval_transform``
        (the test preprocessing its pretrained weights declare, if any)."""
        return self._cached(("reference", task, arch, seed), lambda: self._reference_identity(task, arch, seed))

    def _reference_identity(self, task: str, arch: str, seed: int) -> JobIdentity:
        from quantbench.models.pretrained import preprocessing

        settings = self.train_settings(task, arch)
        where = f"config.recipes.{task}.{arch}" if arch in self.raw["recipes"].get(task, {}) else "config.reference"
        return JobIdentity(kind="reference", task=task, task_params=self.raw["task_params"].get(task, {}), arch=arch,
                           arch_params=self.raw["arch_params"].get(arch, {}), seed=seed,
                           train=dataclasses.asdict(settings),
                           eval_transform=preprocessing(settings.pretrained, where))

    def cell_identity(self, cell: Cell) -> JobIdentity:
        """What the job of ``cell`` computes."""
        return self._cached(("cell", cell), lambda: self.reference_identity(cell.task, cell.arch, cell.seed).replace(
            kind="cell", method=cell.method, method_params=self.method_params(cell.method), budget=float(cell.budget)))

    def references(self) -> list[tuple[str, str, int]]:
        """The (task, arch, seed) of every reference the planned cells need, in grid order."""
        return list(dict.fromkeys((c.task, c.arch, c.seed) for c in self.cells))

    def plan(self) -> dict:
        """Every job as Snakemake runs it: ``{"context": ..., "references": {id: identity},
        "cells": {id: identity}, "skipped": {id: reason}}`` (``quantbench validate --json``)."""
        refs = [self.reference_identity(*key) for key in self.references()]
        cells = [self.cell_identity(c) for c in self.cells]
        return {"context": dataclasses.asdict(self.context()),
                "references": {job.cell_id: job.as_dict() for job in refs},
                "cells": {job.cell_id: job.as_dict() for job in cells},
                "skipped": {cell.id: why for cell, why in self.skipped}}

    def describe(self) -> str:
        """The planned grid, one line per (task, arch, method): its budgets and seeds."""
        lines = [f"experiment {self.name}: {len(self.cells)} cells and {len(self.references())} references planned, "
                 f"{len(self.skipped)} cells skipped"]
        groups: dict[tuple[str, str], dict[str, tuple[dict, dict]]] = {}
        for c in self.cells:
            budgets, seeds = groups.setdefault((c.task, c.arch), {}).setdefault(c.method, ({}, {}))
            budgets[c.budget] = seeds[c.seed] = None
        for (task, arch), methods in groups.items():
            lines.append(f"  {task}/{arch}")
            for method, (budgets, seeds) in methods.items():
                lines.append(f"    {method:24s} budgets {', '.join(budgets)}; seeds {', '.join(map(str, seeds))}")
        for cell, why in self.skipped:
            lines.append(f"  skipped {cell.id}: {why}")
        return "\n".join(lines)

    def skipped_summary(self) -> list[str]:
        """The skipped cells in one line per method: how many, and the budgets it does not serve
        (``describe`` lists every cell)."""
        by_method: dict[str, dict[str, int]] = {}
        for cell, _why in self.skipped:
            budgets = by_method.setdefault(cell.method, {})
            budgets[cell.budget] = budgets.get(cell.budget, 0) + 1
        return [f"{method}: {sum(b.values())} cell(s), does not serve {', '.join(f'{k}-bit' for k in b)}"
                for method, b in by_method.items()]

    def batches(self) -> list[Batch]:
        """The jobs' shapes (config ``batch``): ``cell``: one rule, one cell per job; ``method``: a
        rule per method label (``cells_<label>``, ``@`` read ``_at_``), the budgets it serves in one
        job; ``reference``: one rule ``cells``, every planned (method, budget) in one job. A method
        serves a budget whatever the task, arch or seed, so one (task, arch, seed) plans them all."""
        if self.raw["batch"] == "cell":
            return [Batch("cell", (("{method}", "{budget}"),))]
        key = BATCH_KEY[self.raw["batch"]]
        groups: dict[str, list[tuple[str, str]]] = {}
        for pair in dict.fromkeys((c.method, c.budget) for c in self.cells):
            groups.setdefault(key(pair), []).append(pair)
        return [Batch(f"cells_{name.replace('@', '_at_')}" if name else "cells", tuple(pairs))
                for name, pairs in groups.items()]

    def reference_spec(self, task: str, arch: str, seed: int) -> JobSpec:
        return JobSpec(self.reference_identity(task, arch, seed), self.context())

    def cell_spec(self, cell: Cell) -> JobSpec:
        return JobSpec(self.cell_identity(cell), self.context())


def _check_pretrained(settings: TrainSettings, where: str) -> None:
    if settings.pretrained:
        from quantbench.models.pretrained import check_source

        check_source(settings.pretrained, settings.pretrained_sha256, where)
    elif settings.pretrained_sha256:
        raise ConfigError(f"{where}.pretrained_sha256: given without pretrained")


def calibration_variants(raw: dict) -> None:
    """The ``calibration`` axis as variants (in ``raw["variants"]``, in place): ``<method>@n<samples>``
    with ``calib_samples: samples`` for every method of the grid that calibrates (``Method.calibrated``);
    a source no task has, or a size above a task's training examples (:data:`TRAIN_SIZES`), is refused."""
    from quantbench.methods import get_method

    axis = raw["calibration"]
    if not axis.get("samples"):  # no axis (the schema fills in the source alone)
        return
    source = axis.get("source", "train")
    if source not in CALIBRATION_SOURCES:
        raise ConfigError(f"config.calibration.source: {source!r}: tasks {raw['tasks']} have no {source} split "
                          f"(quantbench's tasks have train and test, and calibrating on test would leak into the "
                          f"evaluation); allowed values: {sorted(CALIBRATION_SOURCES)}")
    for i, n in enumerate(axis["samples"]):
        for task in raw["tasks"]:
            if n > TRAIN_SIZES.get(task, n):
                raise ConfigError(f"config.calibration.samples[{i}]: {n} is more than the {TRAIN_SIZES[task]} "
                                  f"training examples task {task} has")
    for method in raw["methods"]:
        if get_method(method).calibrated:
            own = raw["variants"].setdefault(method, {})
            for n in axis["samples"]:
                name = calibration_variant(n)
                if name in own:
                    raise ConfigError(f"config.variants.{method}.{name}: that name is config.calibration's variant "
                                      f"of {n} samples; name the variant otherwise")
                own[name] = {"calib_samples": n}


def load_config(source: str | Path | dict) -> Config:
    """Validate ``source`` (a YAML path or a dict), fill defaults, expand and filter the grid."""
    raw = copy.deepcopy(source) if isinstance(source, dict) else read_yaml(source)
    validator = _with_defaults(jsonschema.Draft7Validator)(load_schema())
    errors = sorted(validator.iter_errors(raw), key=lambda e: list(e.absolute_path))
    if errors:
        raise ConfigError("invalid config:\n  " + "\n  ".join(_explain(e) for e in errors))

    from quantbench.data import TASK_SHAPES, available_tasks
    from quantbench.methods import available_methods, get_method
    from quantbench.models import available_models
    from quantbench.registry import MODELS, TASKS, check_kwargs

    if isinstance(raw["archs"], dict):
        for task in raw["archs"]:
            if task not in raw["tasks"]:
                raise ConfigError(f"config.archs.{task}: {task!r} is not in config.tasks {raw['tasks']}")
        missing = [t for t in raw["tasks"] if t not in raw["archs"]]
        if missing:
            raise ConfigError(f"config.archs: no archs for task(s) {missing}; give each task in config.tasks a list")
        arch_lists = {f"archs.{t}": archs for t, archs in raw["archs"].items()}
    else:
        arch_lists = {"archs": raw["archs"]}
    lists = [("tasks", raw["tasks"], available_tasks()), ("methods", raw["methods"], available_methods())]
    lists += [(where, archs, available_models()) for where, archs in arch_lists.items()]
    for where, names, known in lists:
        for i, name in enumerate(names):
            if name not in known:
                kind = "arch" if where.startswith("archs") else where[:-1]
                raise ConfigError(f"config.{where}[{i}]: unknown {kind} {name!r}; allowed values: {known}")
    for key, known in (("task_params", TASKS), ("arch_params", MODELS)):
        for name, params in raw[key].items():
            if name not in known:
                raise ConfigError(f"config.{key}.{name}: unknown {key[:-7]}; allowed values: {known.names()}")
            check_kwargs(known.get(name), params, f"config.{key}.{name}")
    for name in raw["loaders"]:
        if name not in available_tasks():
            raise ConfigError(f"config.loaders.{name}: unknown task; allowed values: {available_tasks()}")
    for name in raw["method_params"]:
        if name not in available_methods():
            raise ConfigError(f"config.method_params.{name}: unknown method; allowed values: {available_methods()}")

    pairs = [(t, a) for t in raw["tasks"] for a in task_archs(raw, t)]
    cfg = Config(raw, [], [])
    # a recipe may name a pair outside this grid (a grid narrowed with --config archs=[...] keeps
    # its recipes), but only known tasks and archs, and every recipe must be valid
    for task, by_arch in raw["recipes"].items():
        if task not in available_tasks():
            raise ConfigError(f"config.recipes.{task}: unknown task; allowed values: {available_tasks()}")
        for arch in by_arch:
            if arch not in available_models():
                raise ConfigError(f"config.recipes.{task}.{arch}: unknown arch; allowed values: {available_models()}")
            _check_pretrained(cfg.train_settings(task, arch), f"config.recipes.{task}.{arch}")
    _check_pretrained(cfg.train_settings(), "config.reference")
    for task, arch in pairs:  # published weights must fit the pair's network (where that is known at planning)
        settings = cfg.train_settings(task, arch)
        if settings.pretrained and task in TASK_SHAPES:
            from quantbench.models.pretrained import check_fits

            where = f"config.recipes.{task}.{arch}" if arch in raw["recipes"].get(task, {}) else "config.reference"
            shape, classes = TASK_SHAPES[task]
            check_fits(settings.pretrained, arch, shape, classes, raw["arch_params"].get(arch, {}), where)
    for arch in raw["resources"].get("archs", {}):  # archs outside the grid are allowed (a narrowed grid), typos not
        if arch not in available_models():
            raise ConfigError(f"config.resources.archs.{arch}: unknown arch; allowed values: {available_models()}")
    for arch in ["", *raw["resources"].get("archs", {})]:  # processes against gpu and threads, per job kind
        for kind in ("reference", "cell"):
            res = cfg.resources(kind, arch)
            if kind == "cell" and raw["batch"] != "cell" and res["processes"] * res["nodes"] > 1:
                where = f"config.resources.archs.{arch}.cell" if arch else "config.resources.cell"
                raise ConfigError(f"config.batch: {raw['batch']!r} runs several cells in one process, but {where} "
                                  f"asks for {res['processes']} process(es) on {res['nodes']} node(s); a job of "
                                  f"several processes runs one cell: set batch to 'cell'")
    for base in raw["variants"]:
        if base not in raw["methods"]:
            raise ConfigError(f"config.variants.{base}: {base!r} is not in config.methods {raw['methods']}")
    calibration_variants(raw)
    labels = cfg.labels
    from quantbench.claims import parse_claims

    cfg.claims = parse_claims(raw["claims"], sorted({*available_methods(), *labels}))
    params = {label: make_params(get_method(label).Params, cfg.method_params(label), label)
              for label in labels}
    for label in labels:  # a declared starting point must be a method the tables can look up
        start = get_method(label).starts_from
        if start is not None and start not in available_methods():
            raise ConfigError(f"config.methods: {label}'s starts_from {start!r} is not a registered method; "
                              f"allowed values: {available_methods()}")
    for (task, arch), label, bits, seed in itertools.product(pairs, labels, raw["budgets"], raw["seeds"]):
        cell = Cell(task, arch, label, format_budget(bits), seed)
        if get_method(label).serves(Budget(float(bits)), params[label]):
            cfg.cells.append(cell)
        else:
            cfg.skipped.append((cell, f"{label} does not serve a {format_budget(bits)}-bit budget"))
    if not cfg.cells:
        raise ConfigError(f"config: the grid plans no cell: none of config.methods {raw['methods']} serves any of "
                          f"config.budgets {raw['budgets']}")
    return cfg
