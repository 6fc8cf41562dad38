"""The claims a grid states (config ``claims``): their grammar and checks against the grid, where
the grid is read (:mod:`quantbench.report.claims` evaluates them against the record)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from quantbench.errors import ConfigError

STARTING_POINT = "starting point"
_CLAIM = re.compile(r"^\s*([A-Za-z0-9_@]+)\s*(>=|>|\svs\s)\s*([A-Za-z0-9_@]+)\s*$")


@dataclass(frozen=True)
class Claim:
    """One comparison: ``better relation than`` (``relation`` ">", ">=" or "vs"), restricted to
    ``budgets``/``archs``/``tasks`` where given; ``better`` is "*" for the starting-point rule."""

    text: str
    better: str
    relation: str
    than: str
    budgets: tuple[float, ...] | None = None
    archs: tuple[str, ...] | None = None
    tasks: tuple[str, ...] | None = None
    margin: float | None = None
    source: str = ""


def parse_claims(raw: list[dict], known_methods: list[str] | None = None) -> list[Claim]:
    """The grid's ``claims`` (validated by the schema) as :class:`Claim`; a ConfigError naming
    ``config.claims[i]``, the claim's text and the reason for a claim that is not ``A > B``,
    ``A >= B`` or ``starting point``, or that names a method not in ``known_methods``."""
    claims = []
    for i, entry in enumerate(raw):
        text = str(entry["claim"]).strip()
        where = f"config.claims[{i}] ({text!r})"
        scope = {"budgets": _tuple(entry.get("at"), float), "archs": _tuple(entry.get("archs"), str),
                 "tasks": _tuple(entry.get("tasks"), str), "margin": entry.get("margin"),
                 "source": entry.get("source", "")}
        if text == STARTING_POINT:
            if scope["margin"] is not None:
                raise ConfigError(f"{where}: the starting-point rule takes no margin")
            claims.append(Claim(text, "*", ">=", "starts_from", **scope))
            continue
        match = _CLAIM.match(text)
        if not match:
            raise ConfigError(f"{where}: expected 'A > B', 'A >= B', 'A vs B' (method labels) or {STARTING_POINT!r}")
        a, relation, b = match.groups()
        relation = relation.strip()
        if a == b:
            raise ConfigError(f"{where}: compares {a} with itself")
        if scope["margin"] is not None and relation != ">=":
            raise ConfigError(f"{where}: a margin belongs to '>=' (not worse by more than the margin)")
        for name in (a, b):
            if known_methods is not None and name not in known_methods:
                raise ConfigError(f"{where}: unknown method {name!r}; allowed values: {known_methods}")
        claims.append(Claim(text, a, relation, b, **scope))
    return claims


def _tuple(values, kind) -> tuple | None:
    return None if values is None else tuple(kind(v) for v in values)


def check_against_grid(claims: list[Claim], methods: list[str], budgets: list[float], archs: list[str],
                       tasks: list[str]) -> None:
    """A ConfigError naming the claim when it names a method, budget, arch or task the grid does
    not have (``quantbench validate`` and ``quantbench claims --grid``: the grid as written)."""
    for i, claim in enumerate(claims):
        where = f"config.claims[{i}] ({claim.text!r})"
        for name in (claim.better, claim.than):
            if name not in ("*", "starts_from") and name not in methods:
                raise ConfigError(f"{where}: method {name!r} is not in this grid's methods {methods}")
        for b in claim.budgets or ():
            if not any(math.isclose(b, float(g), abs_tol=1e-9) for g in budgets):
                raise ConfigError(f"{where}: budget {b:g} is not in this grid's budgets {budgets}")
        for kind, values, known in (("arch", claim.archs, archs), ("task", claim.tasks, tasks)):
            for v in values or ():
                if v not in known:
                    raise ConfigError(f"{where}: {kind} {v!r} is not in this grid's {kind}s {known}")
