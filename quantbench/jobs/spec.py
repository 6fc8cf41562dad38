"""A job's spec in two parts: its identity (what it computes) and its context (where it runs).

* :class:`JobIdentity`: task, arch, seed, their builder parameters, the reference recipe (and the
  evaluation preprocessing its pretrained weights declare, ``eval_transform``), and for a cell the
  method, its resolved parameters and the budget. Its digest is the rule's ``params`` that
  Snakemake compares to decide what to rerun, and the run's ``config_hash``.
* :class:`JobContext`: the experiment, where things live (results, data, tracking URI), what the
  job may do (download), the device, and the grid's published figures. It is the plan's, outside
  every identity: moving the data, allowing downloads or pointing at another tracking server
  reruns nothing and changes no hash.

Both reach a job in the grid's plan (:mod:`quantbench.jobs.plan`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from quantbench.errors import ConfigError
from quantbench.method import format_budget  # noqa: F401 (a job's paths and ids)

JobKind = Literal["reference", "cell"]


def content_hash(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj`` (cache keys, ``config_hash``)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()




def _from_dict(cls, data: object, where: str):
    """``cls`` from a mapping whose keys are ``cls``'s fields (missing ones defaulted)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a JSON object, got {type(data).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed keys: {names}")
    try:
        return cls(**data)
    except (TypeError, ConfigError) as e:
        raise ConfigError(f"{where}: {e}; keys: {names}") from e


@dataclass(frozen=True)
class JobIdentity:
    """What a job computes; equal identities give the same result (on the same machine)."""

    kind: JobKind
    task: str
    task_params: dict
    arch: str
    arch_params: dict
    seed: int
    train: dict
    method: str | None = None
    method_params: dict | None = None
    budget: float | None = None
    # the test preprocessing of torchvision/timm weights (models.pretrained.preprocessing); None (left
    # out of the dict and the hash): the task's own transform
    eval_transform: dict | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("reference", "cell"):
            raise ConfigError(f"kind: {self.kind!r} is not allowed; allowed values: ['reference', 'cell']")
        if self.kind == "cell" and (self.method is None or self.budget is None):
            raise ConfigError("a cell needs 'method', 'method_params' and 'budget'")

    @property
    def cell_id(self) -> str:
        """``task/arch/method/b<budget>/s<seed>``, or ``task/arch/reference/s<seed>``."""
        if self.kind == "reference":
            return f"{self.task}/{self.arch}/reference/s{self.seed}"
        return f"{self.task}/{self.arch}/{self.method}/b{format_budget(self.budget)}/s{self.seed}"

    def as_dict(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: object, where: str) -> JobIdentity:
        return _from_dict(cls, data, where)

    def digest(self) -> str:
        """The identity's hash: sha256 of its canonical JSON, 64 hex digits (the run's ``config_hash``
        tag is the first 16)."""
        return content_hash(self.as_dict())

    def replace(self, **changes: Any) -> JobIdentity:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class JobContext:
    """Everything a job is given that does not change what it computes."""

    experiment: str
    results_dir: str = "results"
    data_root: str = "data"
    download: bool = False
    tracking_uri: str | None = None
    device: str = "auto"
    paper_source: str = ""
    paper_figures: dict = field(default_factory=dict)
    loaders: dict = field(default_factory=dict)  # per task: quantbench.data.Pipeline fields

    @classmethod
    def from_dict(cls, data: object, where: str) -> JobContext:
        return _from_dict(cls, data, where)

    def paper_value(self, identity: JobIdentity) -> float | None:
        """The published figure for this job's (task, arch, method[, budget]), if the grid has one."""
        method = identity.method or "reference"
        entry = self.paper_figures.get(identity.task, {}).get(identity.arch, {}).get(method)
        if isinstance(entry, dict):
            entry = {format_budget(float(b)): v for b, v in entry.items()}.get(format_budget(identity.budget))
        return None if entry is None else float(entry)


@dataclass(frozen=True)
class JobSpec:
    """One Snakemake job: what it computes and where."""

    identity: JobIdentity
    context: JobContext

    def replace(self, **changes: Any) -> JobSpec:
        """The same job with some identity fields changed (tests, benchmarks)."""
        return JobSpec(self.identity.replace(**changes), self.context)
