"""The plan: every job of a grid as planning decided it, in one file from planning to the record.

The Snakefile's ``onstart`` handler writes ``results/runs/<experiment>/plan.json`` (:meth:`Plan.write`)
when a grid starts and records it in the experiment (``quantbench plan``: a run tagged ``kind=plan``
with the file as its artifact). A job reads its identity there (``quantbench cell --plan F --job ID
--digest D``; a batch job names its cells, ``--batch NAME``: :func:`batch_name`, :meth:`Plan.batch`,
and finds where their files go there, :meth:`Plan.cell_files`); Snakemake's params carry only each
job's id (or batch name) and digest, so its params trigger fires exactly when an
identity changes; the tables read planned and skipped cells, and each method label's
declarations, from the plans the record holds, with no method's code imported.

The file (``format`` 1; checked against :data:`PLAN_SCHEMA` and its digests when read)::

    context     the grid's JobContext (where things live; not part of any identity)
    methods     label -> method, params (its Params, checked once at planning), family, starts_from,
                step_curves [[key, x, y], ...], trains, calibrated
    references  reference id -> identity (a JobIdentity of kind reference), digest
    cells       cell id -> reference (its reference's id), method (a label), budget, digest
    skipped     cell id -> why it is not planned
    resources   rule (reference, cell) -> arch -> what its job asks the scheduler for
    tables      what the grid's tables are made with: size_tolerance, alpha, margins, claims (config
                ``tables`` and ``claims``; ``quantbench tables --plan F`` reads them here)

A cell's identity is its reference's with ``kind: cell``, its label, the label's params and its
budget; ``digest`` is :meth:`JobIdentity.digest` (sha256 of its canonical JSON).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import jsonschema

from quantbench.errors import ConfigError
from quantbench.files import write_text_atomic
from quantbench.jobs.spec import JobContext, JobIdentity, JobSpec, content_hash

if TYPE_CHECKING:
    from quantbench.config import Cell, Config

PLAN_FILE = "plan.json"
FORMAT = 1
_DIGEST = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
_OBJECT = {"type": "object"}
PLAN_SCHEMA = {
    "type": "object",
    "required": ["format", "context", "methods", "references", "cells", "skipped", "resources"],
    "additionalProperties": False,
    "properties": {
        "format": {"const": FORMAT},
        "context": _OBJECT,
        "methods": {"type": "object", "additionalProperties": {
            "type": "object", "additionalProperties": False,
            "required": ["method", "params", "family", "starts_from", "step_curves", "trains", "calibrated"],
            "properties": {"method": {"type": "string"}, "params": _OBJECT, "family": {"type": "string"},
                           "starts_from": {"type": ["string", "null"]},
                           "step_curves": {"type": "array", "items": {"type": "array", "minItems": 3, "maxItems": 3,
                                                                      "items": {"type": "string"}}},
                           "trains": {"type": "boolean"}, "calibrated": {"type": "boolean"}}}},
        "references": {"type": "object", "additionalProperties": {
            "type": "object", "additionalProperties": False, "required": ["identity", "digest"],
            "properties": {"identity": _OBJECT, "digest": _DIGEST}}},
        "cells": {"type": "object", "additionalProperties": {
            "type": "object", "additionalProperties": False, "required": ["reference", "method", "budget", "digest"],
            "properties": {"reference": {"type": "string"}, "method": {"type": "string"},
                           "budget": {"type": "number"}, "digest": _DIGEST}}},
        "skipped": {"type": "object", "additionalProperties": {"type": "string"}},
        "resources": {"type": "object", "additionalProperties": {"type": "object",
                                                                 "additionalProperties": _OBJECT}},
        "tables": {"type": "object", "additionalProperties": False, "required": ["size_tolerance", "alpha", "claims"],
                   "properties": {"size_tolerance": {"type": "number"}, "alpha": {"type": "number"},
                                  "margins": {"type": "object", "additionalProperties": {"type": "number"}},
                                  "claims": {"type": "array", "items": _OBJECT}}},
    },
}
TABLES_DEFAULTS = {"size_tolerance": 0.01, "alpha": 0.05, "claims": []}  # a plan written before it had them
# (margins: a plan without them takes quantbench.report.stats.MARGINS)


@dataclass(frozen=True)
class Plan:
    """A grid's jobs (see the module docstring); ``source`` names where it was read from, for errors."""

    context: JobContext
    methods: dict[str, dict]
    references: dict[str, JobIdentity]
    cells: dict[str, dict]
    skipped: dict[str, str]
    resources: dict[str, dict[str, dict]]
    tables: dict = dataclasses.field(default_factory=lambda: dict(TABLES_DEFAULTS))
    source: str = "the plan"

    @functools.cached_property
    def _identities(self) -> dict[str, JobIdentity]:
        cells = {job_id: self.references[c["reference"]].replace(
            kind="cell", method=c["method"], method_params=self.methods[c["method"]]["params"],
            budget=float(c["budget"])) for job_id, c in self.cells.items()}
        return {**self.references, **cells}

    @functools.cached_property
    def digests(self) -> dict[str, str]:
        """Every job's identity digest, by job id."""
        return {job_id: identity.digest() for job_id, identity in self._identities.items()}

    def identity(self, job: str | Cell, digest: str | None = None) -> JobIdentity:
        """The identity of job ``job`` (its id, or a :class:`~quantbench.config.Cell`); with ``digest``
        (what Snakemake planned: its first 16 hex digits at least), a ConfigError when this plan's
        differs (the file is from another planning)."""
        job_id = job if isinstance(job, str) else job.id
        if job_id not in self._identities:
            raise ConfigError(f"--job {job_id}: not a job of {self.source} ({len(self.cells)} cells, "
                              f"{len(self.references)} references; skipped: {self.skipped.get(job_id, 'no')})")
        if digest is not None and (len(digest) < 16 or not self.digests[job_id].startswith(digest)):
            raise ConfigError(f"--digest {digest}: {self.source} plans {job_id} as {self.digests[job_id][:16]}: the "
                              f"file is from another planning of the grid; run snakemake again (it rewrites the plan "
                              f"when it starts)")
        return self._identities[job_id]

    def spec(self, job: str | Cell, digest: str | None = None) -> JobSpec:
        return JobSpec(self.identity(job, digest), self.context)

    def batch(self, name: str, digest: str | None = None) -> list[str]:
        """The ids of the cells batch ``name`` names (:func:`batch_name`: a reference's cells, one label's
        cells of it, or one cell by its id), by label then budget; with ``digest`` (what Snakemake planned,
        :meth:`batch_digest`: 16 hex digits at least), a ConfigError when this plan's differs (the file is
        from another planning, or plans other cells for the batch)."""
        parts = name.split("/")
        if name in self.cells:
            ids = [name]
        elif name in self.skipped or len(parts) == 5:
            why = f"skipped: {self.skipped[name]}" if name in self.skipped else f"{len(self.cells)} cells planned"
            raise ConfigError(f"--batch {name}: not a cell of {self.source} ({why})")
        elif len(parts) != 4 or not parts[3].startswith("s"):
            raise ConfigError(f"--batch {name}: expected a reference's id (task/arch/reference/s<seed>: its cells), "
                              f"task/arch/<label>/s<seed> (that label's cells of the reference) or a cell's id "
                              f"(task/arch/<label>/b<budget>/s<seed>)")
        else:
            task, arch, label, seed = parts
            ref = reference_id(task, arch, seed[1:])
            if ref not in self.references:
                raise ConfigError(f"--batch {name}: {self.source} has no reference {ref} (its references: "
                                  f"{_some(self.references)})")
            ids = [i for i, c in self.cells.items() if c["reference"] == ref and label in ("reference", c["method"])]
            if not ids:
                labels = dict.fromkeys(c["method"] for c in self.cells.values() if c["reference"] == ref)
                raise ConfigError(f"--batch {name}: {self.source} plans no cell of label {label!r} for {ref} (its "
                                  f"labels there: {_some(labels)})")
        ids.sort(key=lambda i: (self.cells[i]["method"], self.cells[i]["budget"]))
        if digest is not None and (len(digest) < 16 or not self.batch_digest(ids).startswith(digest)):
            raise ConfigError(f"--digest {digest}: {self.source} plans batch {name} ({len(ids)} cell(s)) as "
                              f"{self.batch_digest(ids)[:16]}: the file is from another planning of the grid; run "
                              f"snakemake again (it rewrites the plan when it starts)")
        return ids

    def batch_digest(self, job_ids: list[str]) -> str:
        """The digest of the jobs ``job_ids`` (in any order), what a batch job's params carry (its first 16 hex
        digits) and ``--digest`` checks: one job's own digest (its run's ``config_hash``), else sha256 of
        ``{job id: digest}`` of them all, so a change of any member's identity, or of the members, changes it."""
        if len(job_ids) == 1:
            return self.digests[job_ids[0]]
        return content_hash({job_id: self.digests[job_id] for job_id in job_ids})

    def cell_files(self, job_id: str) -> tuple[Path, Path]:
        """Where the workflow puts cell ``job_id``'s ``metrics.json`` and its log (rules/common.smk)."""
        runs, logs = job_dirs(self.context.results_dir, self.context.experiment)
        return Path(f"{runs}/{job_id}/metrics.json"), Path(f"{logs}/{job_id}.log")

    def as_dict(self) -> dict:
        return {"format": FORMAT, "context": dataclasses.asdict(self.context), "methods": self.methods,
                "references": {i: {"identity": job.as_dict(), "digest": self.digests[i]}
                               for i, job in self.references.items()},
                "cells": {i: {**c, "digest": self.digests[i]} for i, c in self.cells.items()},
                "skipped": self.skipped, "resources": self.resources, "tables": self.tables}

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), sort_keys=True, indent=1) + "\n"

    def sha256(self) -> str:
        """The plan's hash: the file is rewritten, and recorded again, exactly when this changes."""
        return content_hash(self.as_dict())

    def write(self, path: str | Path) -> Path:
        return write_text_atomic(Path(path), self.to_json())

    @classmethod
    def from_dict(cls, data: object, source: str) -> Plan:
        """A plan from its JSON form, checked: the schema, every identity, every cell's reference and
        label, and every recorded digest against the identity it belongs to."""
        errors = sorted(jsonschema.Draft202012Validator(PLAN_SCHEMA).iter_errors(data), key=lambda e: e.json_path)
        if errors:
            raise ConfigError(f"{source}: not a quantbench plan: {errors[0].json_path}: {errors[0].message}")
        refs = {i: JobIdentity.from_dict(r["identity"], f"{source}: references.{i}.identity")
                for i, r in data["references"].items()}
        for job_id, cell in data["cells"].items():
            for key, known in (("reference", refs), ("method", data["methods"])):
                if cell[key] not in known:
                    raise ConfigError(f"{source}: cells.{job_id}.{key}: {cell[key]!r} is not one of the plan's")
        plan = cls(JobContext.from_dict(data["context"], f"{source}: context"), data["methods"], refs,
                   {i: {k: c[k] for k in ("reference", "method", "budget")} for i, c in data["cells"].items()},
                   data["skipped"], data["resources"], data.get("tables", TABLES_DEFAULTS), source)
        recorded = {**{i: r["digest"] for i, r in data["references"].items()},
                    **{i: c["digest"] for i, c in data["cells"].items()}}
        for job_id, digest in recorded.items():
            if plan.digests[job_id] != digest:
                raise ConfigError(f"{source}: {job_id}: its identity's digest is {plan.digests[job_id][:16]}, the "
                                  f"file says {digest[:16]} (edited by hand or damaged); plan the grid again")
        return plan

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"plan {path} does not exist (snakemake writes it when the grid starts)") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"plan {path} is not readable JSON: {e}") from None
        return cls.from_dict(data, f"plan {path}")

    def cell_status(self) -> dict[tuple[str, str, str, float], str]:
        """``(task, arch, label, budget) -> "planned" | "skipped"``, over seeds: planned when any seed is."""
        status: dict[tuple[str, str, str, float], str] = {}
        for job_id, kind in [*((i, "skipped") for i in self.skipped), *((i, "planned") for i in self.cells)]:
            task, arch, label, budget, _seed = job_id.split("/")
            status[task, arch, label, float(budget[1:])] = kind
        return status


def method_entry(cfg: Config, label: str) -> dict:
    """What the plan keeps of a method label: its resolved params and the declarations the tables use."""
    from quantbench.methods import get_method

    cls = get_method(label)
    return {"method": label.partition("@")[0], "params": dataclasses.asdict(cfg.params[label]), "family": cls.family,
            "starts_from": cls.starts_from, "step_curves": [[c.key, c.x, c.y] for c in cls.step_curves],
            "trains": cls.trains, "calibrated": cls.calibrated}


def context(cfg: Config) -> JobContext:
    """What every job of the grid is given besides its identity (see :mod:`quantbench.jobs.spec`)."""
    raw = cfg.raw
    return JobContext(experiment=cfg.name, results_dir=str(cfg.results), data_root=raw["data_root"],
                      download=raw["download"], tracking_uri=raw["tracking_uri"], device=raw["device"],
                      paper_source=raw["paper"].get("source", ""), paper_figures=raw["paper"].get("figures", {}),
                      loaders=raw["loaders"])


def reference_identity(cfg: Config, task: str, arch: str, seed: int) -> JobIdentity:
    """What the reference job of (task, arch, seed) computes; its cells inherit ``eval_transform``
    (the test preprocessing its pretrained weights declare, if any)."""
    from quantbench.models.pretrained import preprocessing

    raw = cfg.raw
    settings = cfg.train_settings(task, arch)
    where = f"config.recipes.{task}.{arch}" if arch in raw["recipes"].get(task, {}) else "config.reference"
    return JobIdentity(kind="reference", task=task, task_params=raw["task_params"].get(task, {}), arch=arch,
                       arch_params=raw["arch_params"].get(arch, {}), seed=seed, train=dataclasses.asdict(settings),
                       eval_transform=preprocessing(settings.pretrained, where))


def reference_id(task: str, arch: str, seed: int | str) -> str:
    return f"{task}/{arch}/reference/s{seed}"


def batch_name(task: str, arch: str, seed: int | str, label: str | None = None, budget: str | None = None) -> str:
    """How a cell job names its cells (``quantbench cell --batch``, :meth:`Plan.batch`): with ``budget``, one
    cell's id (rule ``cell``'s ``--job``); with ``label`` alone, that label's cells of reference (task, arch, seed)
    (``task/arch/<label>/s<seed>``, rule ``cells_<label>``); else every cell of the reference (its id, rule
    ``cells``)."""
    if budget is not None:
        return f"{task}/{arch}/{label}/b{budget}/s{seed}"
    return f"{task}/{arch}/{label or 'reference'}/s{seed}"


def job_dirs(results_dir: str, experiment: str) -> tuple[str, str]:
    """Where a grid's jobs write: ``runs/<experiment>`` (each job's ``metrics.json``, and plan.json) and
    ``logs/<experiment>`` (each job's log) under ``results_dir``."""
    return f"{results_dir}/runs/{experiment}", f"{results_dir}/logs/{experiment}"


def _some(names, shown: int = 4) -> str:
    """Up to ``shown`` of ``names`` and how many more, for a one-line error."""
    names = list(names)
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def plan_grid(cfg: Config) -> Plan:
    """The plan of a loaded grid (:func:`quantbench.config.load_config`)."""
    from quantbench.config.resources import resources

    refs = {}
    for task, arch, seed in cfg.references():
        refs[reference_id(task, arch, seed)] = reference_identity(cfg, task, arch, seed)
    archs = list(dict.fromkeys(arch for _task, arch, _seed in cfg.references()))
    return Plan(context=context(cfg), methods={label: method_entry(cfg, label) for label in cfg.labels},
                references=refs,
                cells={c.id: {"reference": reference_id(c.task, c.arch, c.seed), "method": c.method,
                              "budget": float(c.budget)} for c in cfg.cells},
                skipped={c.id: why for c, why in cfg.skipped},
                resources={rule: {arch: resources(cfg.raw, rule, arch) for arch in archs}
                           for rule in ("reference", "cell")},
                tables={"size_tolerance": cfg["tables"]["size_tolerance"], "alpha": cfg["tables"]["alpha"],
                        "margins": cfg["tables"]["margins"], "claims": cfg["claims"]},
                source=f"the plan of {cfg.name}")



@dataclass(frozen=True)
class Planned:
    """What the plans of a record say, the newest plan that names a cell or a label deciding:
    ``status[(task, arch, label, budget)]`` is ``planned`` or ``skipped``; ``methods[label]`` the
    label's entry (its params and the declarations the tables use: family, starts_from, step_curves)."""

    status: dict[tuple[str, str, str, float], str]
    methods: dict[str, dict]

    @classmethod
    def of(cls, plans: list[Plan]) -> Planned:
        """From ``plans``, the newest first."""
        status: dict = {}
        methods: dict = {}
        for plan in reversed(plans):  # the newest written last
            status.update(plan.cell_status())
            methods.update(plan.methods)
        return cls(status, methods)

    def step_curves(self, label: str) -> tuple:
        """The per-step curves ``label`` declares (:class:`quantbench.method.StepCurve`); none for a
        label no plan has."""
        from quantbench.method import StepCurve

        return tuple(StepCurve(*curve) for curve in self.methods.get(label, {}).get("step_curves", []))
