"""Paper-style tables and plots, regenerated from the MLflow record alone.

Per task: rows = (arch, reference first, then the methods grouped by paper family: baseline,
LC, GPFQ, OPQ, DiffQ, other), columns = budgets. A cell reads the mean of the task metric over
seeds with the seeds' range ``[min, max]`` (one seed: ± half its 95 % interval over test
examples; :mod:`quantbench.report.stats`, docs/statistics.md) and the achieved ``bpw`` / compression
ratio; ``¶`` marks a cell with a collapsed seed (no better than chance).

What is bold, over budget or below its starting point is the long table's
(:mod:`quantbench.report.summary`); this module prints it. An over-budget cell keeps its number, gets a
``†`` beside its bpw and a footnote naming its bpw, and is never bold; a cell worse than the
method it starts from gets a ``‡`` and a footnote (a sanity claim: none when that method has no
successful cell there). A failed, diverged or killed run reads as such, never as a number. Which cells were
planned is read from the plans the record holds (:mod:`quantbench.jobs.plan`), not from the methods'
code: a planned cell without a run reads ``not run``; a skipped one (its method does not serve
the budget), or one no plan names, ``—``. Written as
``<task>.md`` (markdown), ``<task>.tex`` (LaTeX booktabs) and ``<task>.csv`` (long format: one
row per arch/method/budget with the numbers), plus the plots of :mod:`quantbench.report.plots`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from quantbench.files import write_text_atomic
from quantbench.jobs.plan import Planned
from quantbench.method import CALIBRATION_LABEL
from quantbench.report.significance import CellRecord, cell_records, compare, latest_runs, load_examples, present_cells
from quantbench.report.stats import ALPHA, CI_EXAMPLES, RELATIVE_MARGIN, SEED_RANGE, ExamplesError, grid_margin
from quantbench.report.summary import MISSING, SIZE_TOLERANCE, best_rows, check_size_tolerance, summarize
from quantbench.tracking import Tracker

UNSERVED = "—"  # the method does not serve this budget (skipped at planning), or no plan has the cell
VERSIONED = ("quantbench", "torch", "torchvision", "timm", "fairseq-fixed", "numpy", "mlflow")
# over budget; worse than its starting point; diverged at some seed; some seed collapsed (no better than chance)
OVER, BELOW, DIVERGED, COLLAPSED = "†", "‡", "§", "¶"
TEX_MARKS = {OVER: r"$^\dagger$", BELOW: r"$^\ddagger$", DIVERGED: r"$^\S$", COLLAPSED: r"$^\P$"}
LEGACY_T = "t over seeds"  # the ci_kind of a CSV written before issue #39: mean ± half a t interval


def _cell(row: pd.Series, pm: str, bold=None, marks: dict | None = None) -> str:
    """``mean [min, max] (bpw, ratio)`` (several seeds: their range) or ``mean ± h (bpw, ratio)``
    (one seed: half its interval over test examples); ``‡`` after a mean worse than the starting
    point's, ``§`` after one over the seeds that did not diverge, ``¶`` after one with a collapsed
    seed, ``†`` after the bpw of an over-budget cell (``marks`` maps them to their spelling:
    LaTeX). A cell whose every seed diverged reads ``diverged``."""
    if row["status"] != "ok":
        return f"{row['status']} ({row['ok']}/{row['seeds']} ok)" if row["ok"] else row["status"]
    marks = marks or {}
    value = f"{row['mean']:.2f}"
    if bold is not None:
        value = bold(value)
    value += marks.get(BELOW, BELOW) if row.get("below_start", False) else ""
    value += marks.get(DIVERGED, DIVERGED) if row.get("diverged", 0) else ""
    value += marks.get(COLLAPSED, COLLAPSED) if row.get("collapsed", 0) > row.get("diverged", 0) else ""
    if row.get("ci_kind") == SEED_RANGE:
        value += f" [{row['ci_low']:.2f}, {row['ci_high']:.2f}]"
    elif pd.notna(row.get("ci_low", np.nan)):
        value += f" {pm} {(row['ci_high'] - row['ci_low']) / 2:.2f}"
    over = marks.get(OVER, OVER) if row.get("over_budget", False) else ""
    return f"{value} ({row['bpw']:.2f} bpw{over}, {row['compression_ratio']:.1f}×)"


def _paper(row: pd.Series | None) -> str:
    return UNSERVED if row is None or pd.isna(row["paper"]) else f"{row['paper']:.2f}"


def wide_table(long: pd.DataFrame, pm: str = "±", bold=lambda v: f"**{v}**", marks: dict | None = None) -> pd.DataFrame:
    """One task's table: reference row per arch, then one row per method (with its family); a
    column per budget, each followed by a "paper" column when the record carries published
    figures; the best mean per column among the cells not over budget in ``bold``; the marks
    ``†`` (over budget) and ``‡`` (worse than its starting point), spelt as ``marks`` maps them."""
    best = best_rows(long)
    budgets = sorted(b for b in long["budget"].dropna().unique())
    with_paper = bool(long["paper"].notna().any()) if "paper" in long else False
    header = []
    for b in budgets:
        header += [f"{b:g}-bit"] + ([f"{b:g}-bit paper"] if with_paper else [])
    rows = []
    for (arch, method), g in long.groupby(["arch", "method"], sort=False):
        by_budget = {row["budget"]: (i, row) for i, row in g.iterrows()}
        cells = []
        for b in budgets:
            i, row = (g.index[0], g.iloc[0]) if method == "reference" else by_budget.get(b, (None, None))
            text = UNSERVED if row is None else _cell(row, pm, bold if i in best else None, marks)
            cells += [text] + ([_paper(row)] if with_paper else [])
        rows.append([arch, g["family"].iloc[0], method] + cells)
    return pd.DataFrame(rows, columns=["arch", "family", "method"] + header)


def footnotes(long: pd.DataFrame, marks: dict | None = None, escape=lambda s: s) -> list[str]:
    """The lines under one task's table: one per mark that occurs, naming every marked cell, e.g.
    ``† over budget: mlp qat 2.08 bpw in the 2-bit column; ...`` and ``‡ worse than its starting
    point: mlp lc_adaptive 13.94 vs dc 13.51 in the 2-bit column``. ``escape`` spells the arch and method
    names (LaTeX)."""
    marks = marks or {}
    shown = long[(long["status"] == "ok") & long["mean"].notna()]
    over = shown[shown["over_budget"].astype(bool)]
    below = shown[shown["below_start"].astype(bool)]
    diverged = shown[shown["diverged"] > 0] if "diverged" in shown else shown.iloc[:0]  # a CSV before #38 has none
    fell = shown[shown["collapsed"] > shown["diverged"]] if "collapsed" in shown else shown.iloc[:0]
    lines = []
    if len(over):
        lines.append(f"{marks.get(OVER, OVER)} over budget: " + "; ".join(
            f"{escape(r.arch)} {escape(r.method)} {r.bpw:.2f} bpw in the {r.budget:g}-bit column"
            for r in over.itertuples()))
    if len(below):
        lines.append(f"{marks.get(BELOW, BELOW)} worse than its starting point: " + "; ".join(
            f"{escape(r.arch)} {escape(r.method)} {r.mean:.2f} vs {escape(r.starts_from)} {r.start_mean:.2f} "
            f"in the {r.budget:g}-bit column" for r in below.itertuples()))
    if len(diverged):
        lines.append(f"{marks.get(DIVERGED, DIVERGED)} diverged (a result: the mean is over the other seeds, never "
                     "bold): " + "; ".join(
                         f"{escape(r.arch)} {escape(r.method)} at seed{'s' if r.diverged > 1 else ''} "
                         f"{r.diverged_seeds.replace(' ', ', ')} of {r.seeds} in the {r.budget:g}-bit column"
                         for r in diverged.itertuples()))
    if len(fell):
        lines.append(f"{marks.get(COLLAPSED, COLLAPSED)} collapsed (no better than chance + 10 points, or a loss "
                     "within a tenth of a uniform guess's; diverged seeds count too): " + "; ".join(
                         f"{escape(r.arch)} {escape(r.method)} {r.collapsed} of {r.seeds} seeds in the "
                         f"{r.budget:g}-bit column" for r in fell.itertuples()))
    return lines


def versions_note(runs: pd.DataFrame, packages: tuple[str, ...] = VERSIONED) -> str:
    """`` Runs: torch 2.14.1, ...`` from the runs' ``version.*`` tags (several: joined by /)."""
    found = []
    for pkg in packages:
        values = sorted(set(runs.get(f"tags.version.{pkg}", pd.Series(dtype=object)).dropna()))
        if values:
            found.append(f"{pkg} {'/'.join(values)}")
    return f" Runs: {', '.join(found)}." if found else ""


def interval_note(part: pd.DataFrame) -> str:
    """What the spread beside each mean is: the kinds its cells use."""
    kinds = set(part["ci_kind"].dropna()) - {""}
    notes = {SEED_RANGE: "[min, max]: the range of the seeds' values where there are 2 or more: run-to-run spread",
             LEGACY_T: "± half a t interval over the seeds where there are 3 or more",
             CI_EXAMPLES: "± half the 95 % interval of a percentile bootstrap over the test examples where there is "
                          "one seed: test-set noise only, not seed-to-seed variance"}
    said = [notes[k] for k in (SEED_RANGE, LEGACY_T, CI_EXAMPLES) if k in kinds]
    return "; ".join(said) if said else "no interval: no per-example results recorded"


def margin_text(metric: str, margins: dict[str, float] | None) -> str:
    """The bold's margin for ``metric`` in words: "0.5 points", "1 %" (relative) or "0"."""
    margin = grid_margin(metric, margins)
    if not margin:
        return "0"
    return f"{margin * 100:g} %" if metric in RELATIVE_MARGIN else f"{margin:g} points"


def write_tables(runs: pd.DataFrame, out_dir: str | Path, tasks: list[str] | None = None,
                 size_tolerance: float = SIZE_TOLERANCE, long: pd.DataFrame | None = None,
                 alpha: float = ALPHA, margins: dict[str, float] | None = None) -> list[Path]:
    """Write ``<task>.{md,tex,csv}`` for every task in the record (or the given ones); a cell
    competes for the bold when its bpw is at most its budget's bits times ``1 + size_tolerance``.
    ``long``: ``summarize(runs, size_tolerance)`` when the caller has it already."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    long = summarize(runs, size_tolerance, alpha=alpha, margins=margins) if long is None else long
    written = []
    for task in tasks or sorted(long["task"].unique()):
        part = long[long["task"] == task]
        if part.empty:
            raise LookupError(f"the MLflow record has no runs for task {task!r}")
        metric = part["metric"].iloc[0]
        unit = " (%)" if metric in ("accuracy", "error") else ""
        better = "higher" if part["higher_is_better"].iloc[0] else "lower"
        caption = (f"{task}: test {metric}{unit} ({better} is better), mean over seeds ({interval_note(part)}), "
                   f"with achieved bits per weight and compression ratio; "
                   f"bold: the best mean of each column among the cells at most {size_tolerance * 100:g} % above "
                   f"the budget's bits per weight, and every such cell not significantly worse than another by "
                   f"more than {margin_text(metric, margins)} (multiple comparisons with the best: paired t over "
                   f"the seeds, or with one seed a paired bootstrap over test examples, Bonferroni within the "
                   f"column, α = {alpha:g})"
                   + ("; 'paper': the published figure" if part["paper"].notna().any() else "")
                   + f"; {UNSERVED}: budget not served; {MISSING}: planned cell without a run; "
                   f"diverged: the method diverged at every seed (non-finite loss or weights: a result); "
                   f"{OVER}: over budget (never bold); {BELOW}: worse than the method it starts from, same "
                   f"arch and budget; {DIVERGED}: diverged at some seed; {COLLAPSED}: some seed collapsed."
                   + versions_note(runs[runs.get("tags.task") == task]))
        notes = footnotes(part)
        md = wide_table(part).to_markdown(index=False, disable_numparse=True)  # "28.00" stays "28.00"
        md = f"# {task}\n\n{caption}\n\n{md}\n" + "".join(f"\n{line}\n" for line in notes)
        tex_table = wide_table(part, pm=r"$\pm$", bold=lambda v: rf"\textbf{{{v}}}", marks=TEX_MARKS)
        for col in ("arch", "method"):
            tex_table[col] = tex_table[col].str.replace("_", r"\_")
        tex_caption = caption.replace("±", r"$\pm$").replace("%", r"\%")
        for mark, spelt in TEX_MARKS.items():
            tex_caption = tex_caption.replace(mark, spelt)
        tex = tex_table.to_latex(index=False, escape=False, caption=tex_caption,
                                 label=f"tab:{task}").replace("×", r"$\times$")
        tex_notes = footnotes(part, TEX_MARKS, escape=lambda name: name.replace("_", r"\_"))
        if tex_notes:
            tex = tex.replace("\\end{table}", "".join(f"\\par\\footnotesize {line}\n" for line in tex_notes)
                              + "\\end{table}")
        for suffix, text in (("md", md), ("tex", tex),
                             ("csv", part.to_csv(index=False))):
            path = out_dir / f"{task}.{suffix}"
            write_text_atomic(path, text)
            written.append(path)
    return written


def write_plots(long: pd.DataFrame, histories: pd.DataFrame, out_dir: str | Path,
                tasks: list[str] | None = None, size_tolerance: float = SIZE_TOLERANCE,
                records: dict[tuple, CellRecord] | None = None, alpha: float = ALPHA,
                planned: Planned | None = None) -> list[Path]:
    """``<task>_size.{png,pdf}`` and ``<task>_steps.{png,pdf}`` for every task, and
    ``<task>_calibration.{png,pdf}`` where its cells include a calibration axis; the size plot's
    Pareto front counts sizes within ``size_tolerance`` as equal (as the tables do) and a point as
    dominated only by one significantly better at level ``alpha`` (paired test on ``records``;
    where a pair cannot be tested, the means decide); the steps plot has a panel per curve the
    task's methods declare (in table order; the declarations of the record's plans, ``planned``)."""
    from quantbench.report.plots import calibration_plot, size_plot, steps_plot

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written, planned = [], planned or Planned({}, {})
    for task in tasks or sorted(long["task"].unique()):
        part = long[long["task"] == task]
        curves = list(dict.fromkeys(c for m in part["method"] if m != "reference" for c in planned.step_curves(m)))
        written += size_plot(part, task, out_dir, size_tolerance,
                             None if records is None else _separable(records, size_tolerance, alpha))
        written += steps_plot(histories[histories["task"] == task] if len(histories) else histories, task,
                              part["metric"].iloc[0], curves, out_dir)
        if part["method"].str.match(CALIBRATION_LABEL).any():  # a grid with a calibration axis
            written += calibration_plot(part, task, out_dir)
    return written


def _separable(records: dict[tuple, CellRecord], size_tolerance: float, alpha: float):
    """``separable(row_i, row_j)`` for :func:`quantbench.report.plots.size_plot`: whether j, about as
    small as i and better on the means, is significantly better (only such pairs are tested)."""
    def separable(ri: pd.Series, rj: pd.Series) -> bool:
        better = rj["mean"] > ri["mean"] if ri["higher_is_better"] else rj["mean"] < ri["mean"]
        if not better or rj["bpw"] > ri["bpw"] * (1 + size_tolerance):
            return True  # j does not dominate i on the means: nothing to test
        a = records.get((rj["task"], rj["arch"], rj["method"], rj["budget"]))
        b = records.get((ri["task"], ri["arch"], ri["method"], ri["budget"]))
        try:
            return a is None or b is None or compare(a, b).p_value < alpha
        except ExamplesError:
            return True  # not testable (no per-example results): the means decide, as without tests
    return separable


def tables_from_mlflow(tracking_uri: str, experiment: str, out_dir: str | Path,
                       tasks: list[str] | None = None, size_tolerance: float = SIZE_TOLERANCE,
                       alpha: float = ALPHA, claims: list | None = None,
                       margins: dict[str, float] | None = None) -> list[Path]:
    """Tables and plots of ``experiment`` from its MLflow record alone (with the runs' per-example
    results); ``size_tolerance`` (relative, config ``tables.size_tolerance``) is how far above its
    budget a cell's bpw may be and still compete in the budget's column, and which sizes the
    Pareto front counts as equal; ``alpha`` (config ``tables.alpha``) the level of the paired
    tests behind the bold and the claims; ``margins`` (config ``tables.margins``) the margin per
    metric of the bold and of ``A >= B`` claims. With ``claims`` (:class:`quantbench.report.claims.Claim`, the
    grid's), also ``<task>_claims.{md,csv}``: their verdicts on the task's cases."""
    check_size_tolerance(size_tolerance)
    tracker = Tracker(tracking_uri)
    runs = tracker.runs(experiment)
    latest = latest_runs(runs)
    records = cell_records(latest, load_examples(tracker, latest[latest["tags.status"] == "ok"]))
    planned = recorded_plans(tracker, experiment)
    long = summarize(runs, size_tolerance, records, alpha, planned, margins)
    written = write_tables(runs, out_dir, tasks, size_tolerance, long, alpha, margins)
    if claims is not None:
        written += write_claims(claims, records, present_cells(latest), out_dir,
                                tasks or sorted(long["task"].unique()), alpha, experiment, margins)
    return written + write_plots(long, step_histories(tracker, runs, planned), out_dir, tasks, size_tolerance,
                                 records, alpha, planned)


def recorded_plans(tracker: Tracker, experiment: str) -> Planned:
    """What the plans recorded in ``experiment`` say (:class:`quantbench.jobs.plan.Planned`); a plan file
    that cannot be read is left out with a warning naming its run."""
    import tempfile
    import warnings

    from quantbench.errors import ConfigError
    from quantbench.jobs.plan import Plan

    plans = []
    with tempfile.TemporaryDirectory(prefix="quantbench-plans-") as tmp:
        for run_id, path in tracker.plans(experiment, Path(tmp)):
            try:
                plans.append(Plan.load(path))
            except ConfigError as e:
                warnings.warn(f"the plan of run {run_id} is left out: {e}", stacklevel=2)
    return Planned.of(plans)


def write_claims(claims: list, records: dict[tuple, CellRecord], present: set[tuple], out_dir: str | Path,
                 tasks: list[str], alpha: float, experiment: str,
                 margins: dict[str, float] | None = None) -> list[Path]:
    """``<task>_claims.md`` (verdicts, then the cases) and ``<task>_claims.csv`` (the cases) per task."""
    from quantbench.report.claims import claims_markdown, evaluate_claims

    written = []
    for task in tasks:
        mine = {k: r for k, r in records.items() if k[0] == task}
        cases, verdicts = evaluate_claims(claims, mine, {c for c in present if c[0] == task}, alpha, margins)
        for suffix, text in (("md", claims_markdown(cases, verdicts, alpha, f"{experiment} / {task}: claims")),
                             ("csv", cases.to_csv(index=False))):
            written.append(write_text_atomic(Path(out_dir) / f"{task}_claims.{suffix}", text))
    return written


def step_histories(tracker: Tracker, runs: pd.DataFrame, planned: Planned) -> pd.DataFrame:
    """``task, cell_id, key, step, value`` of every step curve the cells' methods declare (in the
    record's plans, ``planned``), from the latest run of each cell."""
    latest = latest_runs(runs)
    latest = latest[latest["tags.kind"] == "cell"]
    rows = []
    for run_id, task, cell_id, method, metric in zip(latest["run_id"], latest["tags.task"], latest["tags.cell_id"],
                                                     latest["tags.method"], latest["tags.metric"], strict=True):
        keys = [c.key.format(metric=metric) for c in planned.step_curves(method)]
        rows += [(task, cell_id, key, step, value) for _, key, step, value in tracker.metric_histories([run_id], keys)]
    return pd.DataFrame(rows, columns=["task", "cell_id", "key", "step", "value"])
