"""The grid a config plans: its cells (methods x archs x budgets x seeds that a method serves),
the cells skipped and why, and the queries the workflow asks of it.

Both the Snakefile and the CLI use :func:`load_config`, so a bad config fails the same way
everywhere: with the key path and what is allowed, before any job is planned. What each planned job
computes is :mod:`quantbench.jobs.plan`'s (the plan file); what it asks the scheduler for,
:mod:`quantbench.config.resources`'.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantbench.config.reading import task_archs, validated
from quantbench.config.resources import check_resources
from quantbench.method import Budget, ConfigError, calibration_variant, format_budget, make_params
from quantbench.training.loop import TrainSettings

# Training examples of each image task's train split at most (digits and mnist_t10k are split from
# 1,797 and 10,000 examples by task_params: their whole set is the bound), for config.calibration.
TRAIN_SIZES = {"digits": 1797, "mnist_t10k": 10000, "mnist": 60000, "fashion_mnist": 60000, "cifar10": 50000,
               "cifar100": 50000, "imagenet": 1281167}


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
    """The cells one Snakemake job computes for one (task, arch, seed): its rule's name, its
    ``(method, budget)`` pairs (``batch: cell`` has one pair of wildcards, ``{method}`` and ``{budget}``)
    and, for ``batch: method``, the method label they share (the job's name,
    :func:`quantbench.jobs.plan.batch_name`)."""

    rule: str
    members: tuple[tuple[str, str], ...]
    label: str | None = None


BATCH_KEY = {"method": lambda pair: pair[0], "reference": lambda pair: ""}


@dataclass
class Config:
    """A validated config with defaults filled in, and the grid it plans."""

    raw: dict
    cells: list[Cell]
    skipped: list[tuple[Cell, str]]
    claims: list = field(default_factory=list)  # quantbench.report.claims.Claim, parsed from config claims
    # each method label's Params, built (and checked) once: method_params.<method>, and for a variant
    # label <method>@<variant> also variants.<method>.<variant> on top
    params: dict[str, Any] = field(default_factory=dict)

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
        from quantbench.config.claims import check_against_grid

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

    def references(self) -> list[tuple[str, str, int]]:
        """The (task, arch, seed) of every reference the planned cells need, in grid order."""
        return list(dict.fromkeys((c.task, c.arch, c.seed) for c in self.cells))

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
        return [Batch(f"cells_{name.replace('@', '_at_')}" if name else "cells", tuple(pairs), name or None)
                for name, pairs in groups.items()]


def _check_pretrained(settings: TrainSettings, where: str) -> None:
    if settings.pretrained:
        from quantbench.models.pretrained import check_source

        check_source(settings.pretrained, settings.pretrained_sha256, where)
    elif settings.pretrained_sha256:
        raise ConfigError(f"{where}.pretrained_sha256: given without pretrained")


def calibration_variants(raw: dict) -> None:
    """The ``calibration`` axis as variants (in ``raw["variants"]``, in place): ``<method>@n<samples>``
    with ``calib_samples: samples`` for every method of the grid that calibrates (``Method.calibrated``);
    a size above a task's training examples (:data:`TRAIN_SIZES`) is refused (the schema allows the
    train split only: tasks have train and test, and calibrating on test would leak)."""
    from quantbench.methods import get_method

    axis = raw["calibration"]
    if not axis.get("samples"):  # no axis (the schema fills in the source alone)
        return
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


def _check_names(raw: dict) -> None:
    """Every task, arch and method the grid names is registered, and every per-name key
    (task_params, arch_params, loaders, method_params, recipes) names a registered one."""
    from quantbench.data import available_tasks
    from quantbench.methods import available_methods
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
    for key, known in (("loaders", available_tasks()), ("recipes", available_tasks()),
                       ("method_params", available_methods())):
        for name in raw[key]:
            if name not in known:
                kind = "method" if key == "method_params" else "task"
                raise ConfigError(f"config.{key}.{name}: unknown {kind}; allowed values: {known}")
    for task, by_arch in raw["recipes"].items():
        for arch in by_arch:
            if arch not in available_models():
                raise ConfigError(f"config.recipes.{task}.{arch}: unknown arch; allowed values: {available_models()}")
    for base in raw["variants"]:
        if base not in raw["methods"]:
            raise ConfigError(f"config.variants.{base}: {base!r} is not in config.methods {raw['methods']}")


def _check_recipes(cfg: Config, pairs: list[tuple[str, str]]) -> None:
    """Every recipe valid (a recipe may name a pair outside this grid: a grid narrowed with
    ``--config archs=[...]`` keeps its recipes), and published weights fit the pair's network
    where that is known at planning."""
    from quantbench.data import TASK_SHAPES

    raw = cfg.raw
    for task, by_arch in raw["recipes"].items():
        for arch in by_arch:
            _check_pretrained(cfg.train_settings(task, arch), f"config.recipes.{task}.{arch}")
    _check_pretrained(cfg.train_settings(), "config.reference")
    for task, arch in pairs:
        settings = cfg.train_settings(task, arch)
        if settings.pretrained and task in TASK_SHAPES:
            from quantbench.models.pretrained import check_fits

            where = f"config.recipes.{task}.{arch}" if arch in raw["recipes"].get(task, {}) else "config.reference"
            shape, classes = TASK_SHAPES[task]
            check_fits(settings.pretrained, arch, shape, classes, raw["arch_params"].get(arch, {}), where)


def label_params(raw: dict, label: str) -> Any:
    """The ``Params`` of a method label, checked: ``method_params.<method>``, and for a variant
    label ``<method>@<variant>`` also ``variants.<method>.<variant>`` on top."""
    from quantbench.methods import get_method

    base, _, variant = label.partition("@")
    overrides = {**raw["method_params"].get(base, {}), **raw["variants"].get(base, {}).get(variant, {})}
    where = f"config.variants.{base}.{variant}" if variant else f"config.method_params.{base}"
    return make_params(get_method(base).Params, overrides, where)


def load_config(source: str | Path | dict) -> Config:
    """Validate ``source`` (a YAML path or a dict), fill defaults, expand and filter the grid."""
    from quantbench.config.claims import parse_claims
    from quantbench.methods import available_methods, get_method
    from quantbench.models import available_models

    raw = validated(source)
    _check_names(raw)
    pairs = [(t, a) for t in raw["tasks"] for a in task_archs(raw, t)]
    cfg = Config(raw, [], [])
    _check_recipes(cfg, pairs)
    check_resources(raw, available_models())
    calibration_variants(raw)
    labels = cfg.labels
    cfg.claims = parse_claims(raw["claims"], sorted({*available_methods(), *labels}))
    cfg.params = {label: label_params(raw, label) for label in labels}
    for label in labels:  # a declared starting point must be a method the tables can look up
        start = get_method(label).starts_from
        if start is not None and start not in available_methods():
            raise ConfigError(f"config.methods: {label}'s starts_from {start!r} is not a registered method; "
                              f"allowed values: {available_methods()}")
    for (task, arch), label, bits, seed in itertools.product(pairs, labels, raw["budgets"], raw["seeds"]):
        cell = Cell(task, arch, label, format_budget(bits), seed)
        if get_method(label).serves(Budget(float(bits)), cfg.params[label]):
            cfg.cells.append(cell)
        else:
            cfg.skipped.append((cell, f"{label} does not serve a {format_budget(bits)}-bit budget"))
    if not cfg.cells:
        raise ConfigError(f"config: the grid plans no cell: none of config.methods {raw['methods']} serves any of "
                          f"config.budgets {raw['budgets']}")
    return cfg
