"""Where a grid's seed-to-seed variance comes from: ``quantbench variance``.

Seed s of a grid trains reference s and draws calibration sample s, and every method at seed s
compresses that reference: a seed is shared by the methods of a column (task, arch, budget).
Over the methods × seeds of a column (:func:`quantbench.report.stats.seed_components`), the run-to-run
variance splits into what the seed fixes for every method (the reference network and the
calibration draw: no shipped grid varies them apart, so they are one source) and what a
method's own run adds (its own randomness and how it meets that reference: method × seed).
Beside them, the test-set noise of one run (the sd of its metric over test examples drawn with
replacement): what a one-seed bootstrap measures, and what a comparison over seeds leaves out.
The paired test over seeds removes the shared part from every difference; the seeds needed to
see a difference grow with the own part.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pandas as pd

from quantbench.report.significance import CellRecord, read_record
from quantbench.report.stats import bootstrap_weights, seed_components

EXAMPLE_REPLICATES = 200  # bootstrap replicates per run for its test-set sd


def variance_table(records: dict[tuple, CellRecord]) -> pd.DataFrame:
    """One row per (task, arch, budget) column with 2 or more methods finished at 2 or more
    common seeds (the seeds finished anywhere in the column; a method without all of them is
    left out): ``methods``, ``seeds``, ``sd_shared``, ``sd_own``, ``shared`` (share of the
    variance), ``sd_examples`` (one run's test-set sd, averaged over the column's runs as a
    variance) and ``sd_reference`` (the reference's sd over its seeds); then per (task, arch)
    a row of budget "all" with the columns' variances averaged."""
    columns: dict[tuple, list[CellRecord]] = defaultdict(list)
    for (task, arch, _method, budget), cell in records.items():
        if budget is not None and cell.values:
            columns[(task, arch, budget)].append(cell)
    rows = []
    for (task, arch, budget), cells in sorted(columns.items()):
        seeds = sorted(set().union(*(c.values for c in cells)))
        kept = [c for c in cells if set(seeds) <= set(c.values)]
        if len(kept) < 2 or len(seeds) < 2:
            continue
        parts = seed_components(np.array([[c.values[s] for s in seeds] for c in kept]))
        reference = records.get((task, arch, "reference", None))
        ref_values = list(reference.values.values()) if reference else []
        rows.append({"task": task, "arch": arch, "budget": budget, "metric": kept[0].metric, "methods": parts.methods,
                     "seeds": parts.seeds, "var_shared": parts.shared, "var_own": parts.own,
                     "var_examples": _example_variance(kept),
                     "var_reference": float(np.var(ref_values, ddof=1)) if len(ref_values) > 1 else math.nan})
    if not rows:
        return pd.DataFrame()
    table = pd.DataFrame(rows)
    variances = ["var_shared", "var_own", "var_examples", "var_reference"]
    pooled = table.groupby(["task", "arch"], as_index=False).agg(
        metric=("metric", "first"), methods=("methods", "max"), seeds=("seeds", "max"),
        **{v: (v, "mean") for v in variances})
    pooled["budget"] = "all"
    table = pd.concat([table.astype({"budget": object}), pooled], ignore_index=True)
    table["last"] = table["budget"].eq("all")
    table = table.sort_values(["task", "arch", "last"], kind="stable").drop(columns="last").reset_index(drop=True)
    table["shared"] = table["var_shared"] / (table["var_shared"] + table["var_own"])
    for v in variances:
        table[v.replace("var_", "sd_")] = np.sqrt(table.pop(v))
    return table


def _example_variance(cells: list[CellRecord]) -> float:
    """The mean over the cells' runs with per-example results of the variance of the run's metric
    over :data:`EXAMPLE_REPLICATES` bootstrap draws of the test examples; NaN where none has them."""
    found = []
    for cell in cells:
        for examples in cell.examples.values():
            star = np.concatenate([examples.metric(cell.metric, w)
                                   for w in bootstrap_weights(examples.n, EXAMPLE_REPLICATES, 0)])
            found.append(float(np.var(star, ddof=1)))
    return float(np.mean(found)) if found else math.nan


def variance_command(tracking_uri: str, experiment: str) -> str:
    """What ``quantbench variance`` prints: :func:`variance_table` of ``experiment``'s record as
    markdown; a LookupError naming the experiment where no column has 2 seeds of 2 methods."""
    records, _latest = read_record(tracking_uri, experiment)
    table = variance_table(records)
    if table.empty:
        raise LookupError(f"experiment {experiment!r}: no (task, arch, budget) column has 2 or more methods "
                          f"finished at 2 or more common seeds: a variance decomposition needs 2 or more seeds")
    shown = table[["task", "arch", "budget", "metric", "methods", "seeds"]].copy()
    shown["budget"] = [b if isinstance(b, str) else f"{b:g}" for b in table["budget"]]
    for column, name in (("sd_shared", "sd shared (seed)"), ("sd_own", "sd own (method run)"),
                         ("sd_examples", "sd test set (one run)"), ("sd_reference", "sd reference")):
        shown[name] = [f"{v:.3g}" if pd.notna(v) else "—" for v in table[column]]
    shown["shared %"] = [f"{100 * v:.0f}" if pd.notna(v) else "—" for v in table["shared"]]
    head = (f"# {experiment}: where the seed-to-seed variance comes from\n\n"
            f"Per column (task, arch, budget), over its methods × seeds: 'shared', what a seed fixes for every "
            f"method (its reference network and calibration draw), and 'own', what a method's run adds "
            f"(method × seed), as sds in the metric's units (two-way analysis of variance without replication, "
            f"method-of-moments; docs/statistics.md); 'shared %', the shared part's share of the variance. "
            f"'test set': one run's sd over test examples drawn with replacement ({EXAMPLE_REPLICATES} "
            f"replicates), what a one-seed bootstrap sees. 'all': the columns' variances averaged.\n")
    return head + "\n" + shown.to_markdown(index=False, disable_numparse=True) + "\n"
