"""The long table of a record: one row per (task, arch, method, budget) with its seeds, mean,
interval, size and status, and the marks the tables print (:func:`summarize`).

Equal size before equal footing: a cell competes in its budget's column only when its achieved
bpw is at most ``budget_bits(budget) * (1 + size_tolerance)`` (default 1 %; the 1.58-bit column
pays for log2 3 bits; paying less than the budget is no advantage, so such a cell competes too).
A cell above that is *over budget* and is never bold. The best mean among the competing cells of
each (arch, budget) column is bold (ties: all of them), and so is every competing cell not
significantly worse than another by more than the margin (:func:`significance_marks`: multiple
comparisons with the best). A cell whose mean ends worse than the
mean of the method it starts from (``Method.starts_from``, the run tag ``starts_from``) on the
same arch and budget is marked ``below_start``. When a cell was run more than once, its latest
run counts. A cell a plan of the record has but no run is a row of status ``not run``
(:func:`unrun_rows`). A seed whose method diverged is a result without a metric: counted in the
cell's seeds, left out of its mean, and the cell is never bold (``diverged``).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from quantbench.jobs.plan import Planned
from quantbench.method import PAPER_FAMILIES, Budget
from quantbench.report.significance import CellRecord, cell_records, compare, latest_runs
from quantbench.report.stats import ALPHA, ExamplesError, cell_interval, collapsed, grid_margin, margin_in_units

MISSING = "not run"  # a plan of the record has the cell, the record has no run of it
SIZE_TOLERANCE = 0.01  # relative: a cell at up to 1 % above its budget's bpw is at the budget
SIZE_TOLERANCE_RANGE = (0.0, 0.5)  # allowed: above the first, at most the second (as the config schema)


def check_size_tolerance(value: float) -> float:
    """``value`` when it is a relative tolerance in (0, 0.5], else a ValueError saying so."""
    lo, hi = SIZE_TOLERANCE_RANGE
    if not lo < value <= hi:  # NaN too
        raise ValueError(f"size tolerance {value:g} is outside ({lo:g}, {hi:g}]: it is relative, 0.01 = 1 %")
    return value


def budget_bits(budget: float) -> float:
    """What a budget's column pays for: log2 K where the budget is a whole number of levels K
    (``Budget.levels``: the 1.58-bit column is log2 3 = 1.585 bits), else the budget itself."""
    if not math.isfinite(budget):
        return budget
    levels = Budget(float(budget)).levels
    return math.log2(levels) if levels is not None else float(budget)


def over_budget(bpw, budget, size_tolerance: float = SIZE_TOLERANCE):
    """Whether an achieved ``bpw`` is above ``budget_bits(budget) * (1 + size_tolerance)`` (false where
    either is NaN)."""
    bits = np.array([budget_bits(float(b)) for b in np.atleast_1d(np.asarray(budget, dtype=float))])
    return np.asarray(bpw, dtype=float) > bits.reshape(np.shape(budget)) * (1 + size_tolerance)


def _mean(rows: pd.DataFrame, column: str) -> float:
    return rows[column].astype(float).mean() if len(rows) and column in rows else np.nan


def _tag(g: pd.DataFrame, name: str, default: str) -> str:
    values = g.get(f"tags.{name}", pd.Series(dtype=object)).dropna()
    return str(values.iloc[-1]) if len(values) else default


def summarize(runs: pd.DataFrame, size_tolerance: float = SIZE_TOLERANCE,
              records: dict[tuple, CellRecord] | None = None, alpha: float = ALPHA,
              planned: Planned | None = None, margins: dict[str, float] | None = None) -> pd.DataFrame:
    """Long table: task, arch, method, budget -> seeds, metric mean/std, bpw, ratio, status
    (a cell ``planned`` without a run: a row of status ``not run``, :func:`unrun_rows`);
    ``seeds`` (runs), ``ok`` (finished), ``diverged`` and ``diverged_seeds`` (seeds whose method
    diverged: a result without a metric; a cell whose every seed diverged has status
    ``diverged``, one with some the mean of the others); ``seed_values`` (``seed:value`` of every
    finished seed), ``collapsed`` (seeds no better than chance, :func:`quantbench.report.stats.collapsed`,
    diverged ones included); ``n_seeds`` (finished seeds), ``ci_low``/``ci_high``/``ci_kind`` (the
    spread shown beside the mean: the seeds' range, or one seed's interval over test examples,
    :func:`quantbench.report.stats.cell_interval`;
    ``records``: the cells' finished seeds, :func:`quantbench.report.significance.cell_records`, default:
    without per-example results),
    ``best`` (bold: not significantly worse than another cell of its column by more than the
    margin, ``margins`` per metric, at level ``alpha``: :func:`significance_marks`) and
    ``p_vs_best`` (that test's Bonferroni-adjusted p); and
    ``starts_from`` (the method the cell starts from, "" when none), ``over_budget`` (its bpw is
    above ``budget_bits(budget) * (1 + size_tolerance)``), ``start_mean`` (the starting method's mean on the same
    task, arch and budget, when that cell finished) and ``below_start`` (the cell finished and its
    mean is worse than ``start_mean``)."""
    check_size_tolerance(size_tolerance)
    runs = latest_runs(runs).copy()
    records = cell_records(runs, {}) if records is None else records
    runs["method"] = np.where(runs["tags.kind"] == "reference", "reference", runs.get("tags.method"))
    runs["budget"] = np.where(runs["tags.kind"] == "reference", np.nan,
                              pd.to_numeric(runs.get("tags.budget"), errors="coerce"))
    rows = []
    for (task, arch, method, budget), g in runs.groupby(["tags.task", "tags.arch", "method", "budget"], dropna=False):
        metric = g["tags.metric"].iloc[0]
        ok = g[g["tags.status"] == "ok"]
        higher = _tag(g, "higher_is_better", "true") == "true"  # every job tags its task's direction
        values = ok.get(f"metrics.{metric}", pd.Series(dtype=float)).astype(float)
        diverged = g[g["tags.status"] == "diverged"]
        failed = g[~g["tags.status"].isin(["ok", "diverged"])]  # no result: failed, killed (or still running)
        if len(failed):
            status = "/".join(sorted(set(failed["tags.status"])))
        else:  # every seed has its result; a cell whose every seed diverged reads "diverged"
            status = "ok" if len(ok) else "diverged"
        seed_values = sorted(zip(ok["tags.seed"].astype(int), values, strict=True))
        chance = pd.to_numeric(ok.get("tags.chance", pd.Series(np.nan, index=ok.index)), errors="coerce")
        fell = sum(collapsed(metric, v, c) for v, c in zip(values, chance, strict=True))
        rows.append({
            "task": task, "arch": arch, "method": method, "budget": budget, "metric": metric,
            "seeds": len(g), "ok": len(ok), "diverged": len(diverged),
            "diverged_seeds": " ".join(str(s) for s in sorted(diverged["tags.seed"].astype(int))),
            "seed_values": " ".join(f"{s}:{v:.6g}" for s, v in seed_values),
            "collapsed": fell + len(diverged),  # seeds no better than chance (stats.collapsed), diverged ones too
            "mean": values.mean() if len(ok) else np.nan,
            "std": values.std(ddof=1) if len(ok) > 1 else np.nan,
            "bpw": _mean(ok, "metrics.bpw"),
            "compression_ratio": _mean(ok, "metrics.compression_ratio"),
            "size_kib": _mean(ok, "metrics.size_bits") / 8192,
            "family": "reference" if method == "reference" else _tag(g, "family", "other"),
            "higher_is_better": higher,
            "status": status,
            "paper": pd.to_numeric(g.get("tags.paper_value", pd.Series(dtype=float)), errors="coerce").max(),
            "method_params": _tag(g, "method_params", ""),
            "starts_from": "" if method == "reference" else _tag(g, "starts_from", ""),
            **_interval(records.get((task, arch, method, None if method == "reference" else budget))),
        })
    out = pd.DataFrame(rows + unrun_rows(rows, planned or Planned({}, {})))
    out["over_budget"] = over_budget(out["bpw"], out["budget"], size_tolerance)
    done = out[(out["status"] == "ok") & out["mean"].notna()]
    means = {(t, a, m, b): v for t, a, m, b, v in zip(done["task"], done["arch"], done["method"], done["budget"],
                                                      done["mean"], strict=True)}
    keys = zip(out["task"], out["arch"], out["starts_from"], out["budget"], strict=True)
    out["start_mean"] = [means.get((t, a, s, b), np.nan) if s else np.nan for t, a, s, b in keys]
    worse = np.where(out["higher_is_better"], out["mean"] < out["start_mean"], out["mean"] > out["start_mean"])
    out["below_start"] = worse & (out["status"] == "ok").to_numpy()
    out = significance_marks(out, records, alpha, margins)
    families = ("reference", *PAPER_FAMILIES)
    out["order"] = [families.index(f) if f in families else len(families) for f in out["family"]]
    # numbers in labels sort by value: gpfq@n32 before gpfq@n128 (a calibration axis)
    natural = out["method"].str.replace(r"\d+", lambda m: m.group().zfill(12), regex=True)
    out = out.assign(natural=natural).sort_values(["task", "arch", "order", "natural", "budget"])
    return out.drop(columns=["order", "natural"]).reset_index(drop=True)


def unrun_rows(rows: list[dict], planned: Planned) -> list[dict]:
    """A row of status ``not run`` for each cell ``planned`` (the record's plans) that has no run,
    in a task the record has runs of (its metric and direction); its family, starting point and
    params are the plan's."""
    have = {(r["task"], r["arch"], r["method"], r["budget"]) for r in rows}
    tasks = {r["task"]: r for r in rows}
    out = []
    for (task, arch, label, budget), status in planned.status.items():
        if status != "planned" or task not in tasks or (task, arch, label, budget) in have:
            continue
        entry = planned.methods.get(label, {})
        out.append({"task": task, "arch": arch, "method": label, "budget": budget, "metric": tasks[task]["metric"],
                    "seeds": 0, "ok": 0, "diverged": 0, "diverged_seeds": "", "seed_values": "", "collapsed": 0,
                    "mean": np.nan, "std": np.nan,
                    "bpw": np.nan, "compression_ratio": np.nan,
                    "size_kib": np.nan, "family": entry.get("family", "other"),
                    "higher_is_better": tasks[task]["higher_is_better"], "status": MISSING, "paper": np.nan,
                    "method_params": json.dumps(entry.get("params", {}), sort_keys=True),
                    "starts_from": entry.get("starts_from") or "", **_interval(None)})
    return out


def _interval(record: CellRecord | None) -> dict:
    """``n_seeds``, ``ci_low``, ``ci_high``, ``ci_kind`` of a cell (NaN/"" without finished seeds)."""
    if record is None:
        return {"n_seeds": 0, "ci_low": np.nan, "ci_high": np.nan, "ci_kind": ""}
    values = list(record.values.values())
    complete = list(record.examples.values()) if len(record.examples) == len(values) else None
    low, high, kind = cell_interval(record.metric, values, complete)
    return {"n_seeds": len(values), "ci_low": low, "ci_high": high, "ci_kind": kind}


def significance_marks(long: pd.DataFrame, records: dict[tuple, CellRecord], alpha: float = ALPHA,
                       margins: dict[str, float] | None = None) -> pd.DataFrame:
    """``best`` and ``p_vs_best`` of every row: multiple comparisons with the best (Hsu 1996,
    with Bonferroni's bound in place of Dunnett's constant). Within each (task, arch, budget)
    column, among its k competing cells (finished, not over budget, no diverged seed), a cell i
    is bold unless some cell j's paired test (:func:`quantbench.report.significance.compare`) shows i
    worse than j by more than the margin m (the grid's ``tables.margins`` for the metric, in its
    units against j's mean: :func:`quantbench.report.stats.margin_in_units`) at one-sided level
    α/(k − 1): the column's truly best cell is then bold with probability at least 1 − α, and a
    cell left plain is worse than another by more than m. Only cells better than i on the mean
    by more than m can show that, so only they are tested; a cell that cannot be tested against
    one of them (no per-example results, no seed in common) is not bold. The best mean is bold
    (ties: all of them). ``p_vs_best``: the smallest such p of the cell times k − 1 (at most 1). An
    over-budget cell, or one whose method diverged at a seed, is never bold, whatever its mean."""
    long = long.copy()
    long["best"], long["p_vs_best"] = False, np.nan
    eligible = ~long["over_budget"].astype(bool) & (long["diverged"] == 0)
    cells = long[(long["method"] != "reference") & (long["status"] == "ok") & long["mean"].notna() & eligible]
    for (task, arch, budget), g in cells.groupby(["task", "arch", "budget"]):
        higher, metric, k = bool(g["higher_is_better"].iloc[0]), g["metric"].iloc[0], len(g)
        margin = grid_margin(metric, margins)
        sign = 1.0 if higher else -1.0
        for i in g.index:
            cell, worst_p, untested = records.get((task, arch, g.loc[i, "method"], budget)), math.inf, False
            for j in g.index:
                m = margin_in_units(metric, margin, g.loc[j, "mean"])
                if sign * (g.loc[j, "mean"] - g.loc[i, "mean"]) <= m:
                    continue  # j is not better than i by more than m on the mean: it cannot show it
                other = records.get((task, arch, g.loc[j, "method"], budget))
                try:
                    if cell is None or other is None:
                        raise ExamplesError("no record")
                    d = compare(cell, other)
                except ExamplesError:
                    untested = True  # no per-example results, no seed in common: nothing speaks for i
                    continue
                worst_p = min(worst_p, d.p_below(-m) if higher else d.p_above(m))
            p = min(1.0, worst_p * (k - 1)) if math.isfinite(worst_p) else math.nan
            long.loc[i, "p_vs_best"] = p
            long.loc[i, "best"] = not untested and not p < alpha
    return long


def best_rows(long: pd.DataFrame) -> set:
    """Index labels of the bold cells (``best`` of :func:`summarize`)."""
    return set(long.index[long["best"].astype(bool)])
