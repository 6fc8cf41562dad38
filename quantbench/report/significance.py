"""Which differences in an MLflow record are real: the record-side of :mod:`quantbench.report.stats`.

A *cell* here is (task, arch, method, budget) over its seeds: the latest run of each seed that
finished, its metric and, where the run recorded it, its per-example results (``examples.npz``),
and the seeds whose method diverged (a result with no metric). Two cells are compared on the
seeds both finished (seed s of both compressed the same reference s), by the seed-level test of
:func:`quantbench.report.stats.paired_difference` (a paired t over the seeds; one seed: example noise
only); a difference is *detectable* when its p-value is below α (default 0.05). A diverged seed
is worse than any finished one: the tables never bold a cell with one, and a claim that its
method is better fails where it diverged and the other finished (docs/statistics.md, "Diverged
seeds").
"""

from __future__ import annotations

import hashlib
import logging
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from quantbench.report.stats import (
    ALPHA,
    CONFIDENCE,
    EXAMPLES_FILE,
    POWER,
    RELATIVE_MARGIN,
    SIGN_FLIP,
    Difference,
    Examples,
    ExamplesError,
    detectable_difference,
    format_p,
    margin_in_units,
    paired_difference,
    seeds_needed,
    sign_flip_seeds,
    tost,
)

log = logging.getLogger("quantbench")


@dataclass
class CellRecord:
    """One cell's finished seeds: ``values[seed]`` (its metric) and ``examples[seed]`` (where
    recorded)."""

    task: str
    arch: str
    method: str
    budget: float | None
    metric: str
    higher_is_better: bool
    values: dict[int, float] = field(default_factory=dict)
    examples: dict[int, Examples] = field(default_factory=dict)
    starts_from: str = ""  # the method it starts from (run tag starts_from), "" when none
    diverged: set[int] = field(default_factory=set)  # seeds whose method diverged (no metric)

    @property
    def name(self) -> str:
        budget = "" if self.budget is None else f" at {self.budget:g} bits"
        return f"{self.task}/{self.arch} {self.method}{budget}"

    @property
    def mean(self) -> float:
        return float(np.mean(list(self.values.values()))) if self.values else math.nan


def latest_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per cell: its most recent run."""
    if runs.empty or "tags.cell_id" not in runs:
        raise LookupError("the experiment has no quantbench runs")
    runs = runs[runs["tags.cell_id"].notna()].sort_values("start_time")
    return runs.drop_duplicates("tags.cell_id", keep="last")


def load_examples(tracker, runs: pd.DataFrame) -> dict[str, Examples]:
    """``examples.npz`` of each run of ``runs`` (``run_id``, ``artifact_uri``) that recorded one,
    by run id. A run recorded before per-example results existed has none (left out). A file is
    evidence: one that cannot be read, whose sha256 is not the one its run recorded (tag
    ``examples_sha256``), or whose arrays do not give the metric the run logged, is refused with a
    warning naming the run and the file, and left out (its seed then has no per-example results)."""
    found = {}
    with tempfile.TemporaryDirectory(prefix="quantbench-examples-") as tmp:
        for _, run in runs.iterrows():
            run_id = run["run_id"]
            path = tracker.artifact_file(run_id, run["artifact_uri"], EXAMPLES_FILE, Path(tmp) / run_id)
            if path is None:
                continue
            try:
                found[run_id] = _checked_examples(path, run)
            except ExamplesError as e:
                log.warning("run %s: %s; refused: its cell has no per-example results for seed %s", run_id, e,
                            run.get("tags.seed"))
    return found


def _checked_examples(path: Path, run: pd.Series) -> Examples:
    """The run's examples file, read and checked against what the run recorded (its sha256, when
    recorded, and its logged metric, to 1e-5 relative)."""
    recorded = run.get("tags.examples_sha256")
    if isinstance(recorded, str) and hashlib.sha256(path.read_bytes()).hexdigest() != recorded:
        raise ExamplesError(f"{path}: its sha256 is not the {recorded[:16]}… its run recorded (changed or damaged)")
    examples = Examples.load(path)
    metric = run.get("tags.metric")
    logged = run.get(f"metrics.{metric}")
    if isinstance(metric, str) and logged is not None and not pd.isna(logged):
        try:
            value = examples.metric(metric)
        except ExamplesError:
            return examples
        if not math.isclose(value, float(logged), rel_tol=1e-5, abs_tol=1e-9):
            raise ExamplesError(f"{path}: its arrays give {metric} {value:.6g}, the run logged {float(logged):.6g}")
    return examples


def cell_records(latest: pd.DataFrame, examples: dict[str, Examples]) -> dict[tuple, CellRecord]:
    """The finished and the diverged seeds of every cell of ``latest`` (one row per run:
    :func:`latest_runs`), keyed ``(task, arch, method, budget)``: the reference is method
    ``reference``, budget None."""
    records: dict[tuple, CellRecord] = {}
    ended = latest[latest["tags.status"].isin(["ok", "diverged"])]
    for _, row in ended.iterrows():
        reference = row["tags.kind"] == "reference"
        method = "reference" if reference else row["tags.method"]
        budget = None if reference else float(row["tags.budget"])
        metric = row["tags.metric"]
        key = (row["tags.task"], row["tags.arch"], method, budget)
        if key not in records:
            higher = str(row.get("tags.higher_is_better", "true")).lower() == "true"
            start = row.get("tags.starts_from")
            records[key] = CellRecord(*key, metric, higher, starts_from=start if isinstance(start, str) else "")
        seed = int(row["tags.seed"])
        if row["tags.status"] == "diverged":
            records[key].diverged.add(seed)
            continue
        records[key].values[seed] = float(row[f"metrics.{metric}"])
        if row["run_id"] in examples:
            records[key].examples[seed] = examples[row["run_id"]]
    return records


def present_cells(latest: pd.DataFrame) -> set[tuple]:
    """``(task, arch, method, budget)`` of every cell of ``latest`` that has a run, of any status."""
    cells = latest[latest["tags.kind"] == "cell"]
    return {(t, a, m, float(b)) for t, a, m, b in zip(cells["tags.task"], cells["tags.arch"], cells["tags.method"],
                                                      cells["tags.budget"], strict=True)}


def find_cell(records: dict[tuple, CellRecord], task: str, arch: str, method: str,
              budget: float | None) -> CellRecord | None:
    """The cell (budget None for the reference), its budget matched to 1e-9."""
    for (t, a, m, b), record in records.items():
        if (t, a, m) == (task, arch, method) and (b is None or math.isclose(b, budget, abs_tol=1e-9)):
            return record
    return None


def compare(a: CellRecord, b: CellRecord, confidence: float = CONFIDENCE) -> Difference:
    """``a − b`` in the task metric, paired over the seeds both finished and recorded per-example
    results of; an :class:`ExamplesError` when there are none, or when they saw different examples."""
    seeds = sorted(set(a.examples) & set(b.examples))
    if not seeds:
        missing = [c.name for c in (a, b) if not c.examples]
        raise ExamplesError(f"{a.name} vs {b.name}: " + (
            f"no per-example results recorded for {', '.join(missing)} (runs made before they were recorded: "
            f"run them again)" if missing else
            f"no seed in common with per-example results (seeds {sorted(a.examples)} vs {sorted(b.examples)})"))
    try:
        return paired_difference(a.metric, [a.examples[s] for s in seeds], [b.examples[s] for s in seeds], confidence)
    except ExamplesError as e:
        raise ExamplesError(f"{a.name} vs {b.name}: {e}") from None


def verdict(d: Difference, higher_is_better: bool, alpha: float = ALPHA, names: tuple[str, str] = ("A", "B")) -> str:
    """"A better", "B better" or "no detectable difference" (p ≥ α)."""
    if d.p_value >= alpha:
        return "no detectable difference"
    a_better = d.difference > 0 if higher_is_better else d.difference < 0
    return f"{names[0] if a_better else names[1]} better"


def read_record(tracking_uri: str, experiment: str, keep=None) -> tuple[dict[tuple, CellRecord], pd.DataFrame]:
    """The cells of ``experiment`` (:func:`cell_records`) with the per-example results of the runs
    ``keep(latest)`` selects (a boolean mask over the latest runs; default: every finished run),
    and the latest run of every cell (:func:`latest_runs`)."""
    from quantbench.tracking import Tracker

    tracker = Tracker(tracking_uri)
    latest = latest_runs(tracker.runs(experiment))
    chosen = latest["tags.status"] == "ok"
    if keep is not None:
        chosen &= keep(latest)
    return cell_records(latest, load_examples(tracker, latest[chosen])), latest


def _cell_or_why(records: dict, latest: pd.DataFrame, task: str, arch: str, method: str,
                 budget: float | None) -> CellRecord:
    """The finished cell, or a LookupError naming it and saying "not run" (or how its runs ended)."""
    if method != "reference" and budget is None:
        raise LookupError(f"--budget is needed to compare {method} (only the reference has no budget)")
    found = find_cell(records, task, arch, method, budget)
    name = f"{task}/{arch} {method}" + ("" if method == "reference" else f" at {budget:g} bits")
    if found is not None and found.values:
        return found
    if found is not None:
        raise LookupError(f"{name}: diverged at every seed ({sorted(found.diverged)}): no metric to compare")
    rows = latest[(latest["tags.task"] == task) & (latest["tags.arch"] == arch)]
    if method == "reference":
        rows = rows[rows["tags.kind"] == "reference"]
    else:
        budgets = pd.to_numeric(rows.get("tags.budget"), errors="coerce")
        rows = rows[(rows.get("tags.method") == method) & np.isclose(budgets, budget)]
    if rows.empty:
        raise LookupError(f"{name}: not run (the record has no run of this cell)")
    ended = ", ".join(f"seed {s}: {st}" for s, st in zip(rows["tags.seed"], rows["tags.status"], strict=True))
    raise LookupError(f"{name}: no finished run ({ended})")


def compare_command(tracking_uri: str, experiment: str, alpha: float, task: str, arch: str, budget: float | None,
                    method_a: str, method_b: str, margin: float | None = None, power: float | None = None) -> str:
    """What ``quantbench compare`` prints: both cells' means, the paired difference A − B with its
    95 % interval and p-value, the seeds and test examples it rests on, and the verdict; with
    ``margin`` (the metric's margin units, :func:`quantbench.report.stats.margin_in_units`) the
    non-inferiority tests both ways and equivalence (TOST) within ±m; with ``power`` (a true
    difference, in the metric's units) the difference the seeds run detect at 80 % power and the
    seeds needed to detect ``power``."""
    def wanted(latest: pd.DataFrame) -> pd.Series:
        method = np.where(latest["tags.kind"] == "reference", "reference", latest.get("tags.method"))
        return (latest["tags.task"] == task) & (latest["tags.arch"] == arch) & np.isin(method, [method_a, method_b])

    records, latest = read_record(tracking_uri, experiment, wanted)
    a = _cell_or_why(records, latest, task, arch, method_a, budget)
    b = _cell_or_why(records, latest, task, arch, method_b, budget)
    d = compare(a, b, confidence=1 - alpha)
    better = "higher" if a.higher_is_better else "lower"
    width = max(len(method_a), len(method_b), len("A − B"))
    pct = f"{d.confidence * 100:g} %"
    lines = [f"{experiment}: {task}/{arch}" + ("" if budget is None else f" at {budget:g} bits")
             + f", test {a.metric} ({better} is better)"]
    for cell in (a, b):
        lines.append(f"  {cell.method:<{width}}  {cell.mean:.4g}  (mean of seeds {sorted(cell.values)}"
                     + (f"; diverged at seeds {sorted(cell.diverged)}, left out" if cell.diverged else "") + ")")
    lines.append(f"  {'A − B':<{width}}  {d.difference:+.4g}  {pct} interval [{d.low:+.4g}, {d.high:+.4g}], "
                 f"p = {format_p(d.p_value)}")
    lines.append(f"  {d.test}: {d.n_seeds} seed(s), each on {d.n_examples} test examples; α = {alpha:g}"
                 + (f" ({d.replicates} replicates)" if d.replicates else ""))
    if d.n_seeds < 2:
        lines.append("  one seed in common: example-level noise only: this says how sure the difference is on this "
                     "test set, for these networks, not on another seed's (run 2 or more seeds for a verdict "
                     "about the method)")
    elif d.test == SIGN_FLIP and d.n_seeds < sign_flip_seeds(alpha):
        lines.append(f"  {d.n_seeds} seeds: no difference can be called at α = {alpha:g} by this test (the seeds' "
                     f"differences are all equal: its smallest p is {2 / 2 ** d.n_seeds:g}); "
                     f"{sign_flip_seeds(alpha)} seeds needed")
    lines.append(f"  verdict: {verdict(d, a.higher_is_better, alpha, (method_a, method_b))}")
    if margin is not None:
        lines += _margin_lines(d, a, b, margin, alpha)
    if power is not None:
        lines += _power_lines(d, power, alpha)
    return "\n".join(lines)


def _margin_lines(d: Difference, a: CellRecord, b: CellRecord, margin: float, alpha: float) -> list[str]:
    """Non-inferiority both ways and equivalence (TOST) within ±m, m in the metric's units."""
    m = margin_in_units(a.metric, margin, b.mean)
    said = f"{margin:g} of {b.method}'s {b.mean:.4g}" if a.metric in RELATIVE_MARGIN else f"{a.metric} points"
    lines = [f"  margin m = {m:.4g} ({said})"]
    higher = a.higher_is_better  # Δ = A − B; "A not worse by more than m": Δ > −m (lower is better: Δ < m)
    for x, y, p in ((a, b, d.p_above(-m) if higher else d.p_below(m)),
                    (b, a, d.p_below(m) if higher else d.p_above(-m))):
        lines.append(f"  {x.method} not worse than {y.method} by more than m (non-inferiority, one-sided): "
                     f"p = {format_p(p)}: {'shown' if p < alpha else 'not shown'}")
    p = tost(d, m)
    lines.append(f"  equivalent within ±m (two one-sided tests): p = {format_p(p)}: "
                 + ("equivalent" if p < alpha else "not shown equivalent"))
    return lines


def _power_lines(d: Difference, effect: float, alpha: float) -> list[str]:
    """What the seeds run can detect at 80 % power, and the seeds needed for ``effect``."""
    if d.n_seeds < 2:
        return ["  power: one seed in common: the seeds' spread is unknown (run 2 or more seeds to size the "
                "next run)"]
    mdd = detectable_difference(d.sd, d.n_seeds, alpha)
    needed = seeds_needed(effect, d.sd, alpha)
    spread = f"sd of the seeds' differences {d.sd:.4g}" if d.sd > 0 else "no spread: the sign-flip decides"
    found = "∞ (no difference can be called)" if math.isinf(mdd) else f"{mdd:.4g}"
    return [f"  power ({POWER:.0%}, α = {alpha:g}, {spread}): detectable with {d.n_seeds} seeds: {found}",
            f"  seeds needed to detect a true difference of {effect:g}: "
            + (str(needed) if needed is not None else "more than 100,000")]
