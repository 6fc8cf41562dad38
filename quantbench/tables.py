"""Paper-style tables, regenerated from the MLflow record alone (``mlflow.search_runs``).

Per task: rows = (arch, reference first, then methods), columns = budgets. A cell reads
``mean ± std`` of the task metric over seeds (just the mean for one seed) and the achieved
``bpw`` / compression ratio; a failed or diverged run reads as such, never as a number.
When a cell was run more than once, its latest run counts.
Written as ``<task>.md`` (markdown), ``<task>.tex`` (LaTeX booktabs) and ``<task>.csv`` (long
format: one row per arch/method/budget with the numbers).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from quantbench.tracking import Tracker

NOT_RUN = "—"


def latest_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per cell: its most recent run."""
    if runs.empty or "tags.cell_id" not in runs:
        raise LookupError("the experiment has no quantbench runs")
    runs = runs[runs["tags.cell_id"].notna()].sort_values("start_time")
    return runs.drop_duplicates("tags.cell_id", keep="last")


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """Long table: task, arch, method, budget -> seeds, metric mean/std, bpw, ratio, status."""
    runs = latest_runs(runs).copy()
    runs["method"] = np.where(runs["tags.kind"] == "reference", "reference", runs.get("tags.method"))
    runs["budget"] = np.where(runs["tags.kind"] == "reference", np.nan,
                              pd.to_numeric(runs.get("tags.budget"), errors="coerce"))
    rows = []
    for (task, arch, method, budget), g in runs.groupby(["tags.task", "tags.arch", "method", "budget"], dropna=False):
        metric = g["tags.metric"].iloc[0]
        ok = g[g["tags.status"] == "ok"]
        values = ok.get(f"metrics.{metric}", pd.Series(dtype=float)).astype(float)
        failed = g[g["tags.status"] != "ok"]
        rows.append({
            "task": task, "arch": arch, "method": method, "budget": budget, "metric": metric,
            "seeds": len(g), "ok": len(ok),
            "mean": values.mean() if len(ok) else np.nan,
            "std": values.std(ddof=1) if len(ok) > 1 else np.nan,
            "bpw": ok["metrics.bpw"].astype(float).mean() if len(ok) else np.nan,
            "compression_ratio": ok["metrics.compression_ratio"].astype(float).mean() if len(ok) else np.nan,
            "status": "ok" if failed.empty else "/".join(sorted(set(failed["tags.status"]))),
            "paper": pd.to_numeric(g.get("tags.paper_value", pd.Series(dtype=float)), errors="coerce").max(),
        })
    out = pd.DataFrame(rows)
    out["order"] = (out["method"] != "reference").astype(int)
    return out.sort_values(["task", "arch", "order", "method", "budget"]).drop(columns="order").reset_index(drop=True)


def _cell(row: pd.Series, pm: str) -> str:
    if row["status"] != "ok":
        return f"{row['status']} ({row['ok']}/{row['seeds']} ok)" if row["ok"] else row["status"]
    value = f"{row['mean']:.2f}" + (f" {pm} {row['std']:.2f}" if row["seeds"] > 1 else "")
    return f"{value} ({row['bpw']:.2f} bpw, {row['compression_ratio']:.1f}×)"


def _paper(row: pd.Series | None) -> str:
    return NOT_RUN if row is None or pd.isna(row["paper"]) else f"{row['paper']:.2f}"


def wide_table(long: pd.DataFrame, pm: str = "±") -> pd.DataFrame:
    """One task's table: reference row per arch, then one row per method; a column per budget,
    each followed by a "paper" column when the record carries published figures."""
    budgets = sorted(b for b in long["budget"].dropna().unique())
    with_paper = bool(long["paper"].notna().any()) if "paper" in long else False
    header = []
    for b in budgets:
        header += [f"{b:g}-bit"] + ([f"{b:g}-bit paper"] if with_paper else [])
    rows = []
    for (arch, method), g in long.groupby(["arch", "method"], sort=False):
        by_budget = {row["budget"]: row for _, row in g.iterrows()}
        cells = []
        for b in budgets:
            row = g.iloc[0] if method == "reference" else by_budget.get(b)
            cells += [_cell(row, pm) if row is not None else NOT_RUN] + ([_paper(row)] if with_paper else [])
        rows.append([arch, method] + cells)
    return pd.DataFrame(rows, columns=["arch", "method"] + header)


def _write(text: str, path: Path) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_tables(runs: pd.DataFrame, out_dir: str | Path, tasks: list[str] | None = None) -> list[Path]:
    """Write ``<task>.{md,tex,csv}`` for every task in the record (or the given ones)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    long = summarize(runs)
    written = []
    for task in tasks or sorted(long["task"].unique()):
        part = long[long["task"] == task]
        if part.empty:
            raise LookupError(f"the MLflow record has no runs for task {task!r}")
        metric = part["metric"].iloc[0]
        unit = " (%)" if metric in ("accuracy", "error") else ""
        caption = (f"{task}: test {metric}{unit}, mean ± std over seeds, with achieved bits per weight and "
                   f"compression ratio" + ("; 'paper': the published figure." if part["paper"].notna().any() else "."))
        md = wide_table(part).to_markdown(index=False)
        tex_table = wide_table(part, pm=r"$\pm$")
        for col in ("arch", "method"):
            tex_table[col] = tex_table[col].str.replace("_", r"\_")
        tex = tex_table.to_latex(index=False, escape=False, caption=caption.replace("±", r"$\pm$"),
                                                       label=f"tab:{task}").replace("×", r"$\times$")
        for suffix, text in (("md", f"# {task}\n\n{caption}\n\n{md}\n"), ("tex", tex),
                             ("csv", part.to_csv(index=False))):
            path = out_dir / f"{task}.{suffix}"
            _write(text, path)
            written.append(path)
    return written


def tables_from_mlflow(tracking_uri: str, experiment: str, out_dir: str | Path,
                       tasks: list[str] | None = None) -> list[Path]:
    return write_tables(Tracker(tracking_uri).runs(experiment), out_dir, tasks)
