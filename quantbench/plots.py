"""Plots from the MLflow record (the same summary the tables use), PNG and PDF per task.

* ``<task>_size``: the task metric against model size (all parameters, KiB, log x), one subplot
  per arch, one line per method through its budgets (mean over seeds), the reference as a dashed
  line, and the Pareto front of all (method, budget) points — no other point is both smaller and
  better — drawn as a thick grey staircase with its points ringed.
* ``<task>_steps``: the per-step curves the task's methods declare (``Method.step_curves``: LC's
  metric of Δ(Θ) per step, DiffQ's expected bits per weight per epoch, a plugin's own), a panel
  each, one line per cell (a figure saying so when no method logged any).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from quantbench.files import write_atomic


def pareto_front(size: np.ndarray, metric: np.ndarray, higher_is_better: bool) -> np.ndarray:
    """Indices of the non-dominated points, by increasing size: each is strictly better than
    every smaller point (ties in size keep the better one)."""
    score = metric if higher_is_better else -metric
    order = np.lexsort((-score, size))
    front, best = [], -np.inf
    for i in order:
        if score[i] > best:
            front.append(i)
            best = score[i]
    return np.array(front, dtype=int)


def _figure(n: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.0 * rows), squeeze=False, layout="constrained")
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n]), plt


def _save(fig, plt, out_dir: Path, stem: str) -> list[Path]:
    paths = []
    for ext in ("png", "pdf"):
        path = out_dir / f"{stem}.{ext}"
        # no creation date or timestamp in the files: the same record gives the same bytes
        metadata = {"CreationDate": None} if ext == "pdf" else {}
        write_atomic(path, lambda tmp, m=metadata: fig.savefig(tmp, dpi=130, bbox_inches="tight", metadata=m))
        paths.append(path)
    plt.close(fig)
    return paths


def size_plot(part: pd.DataFrame, task: str, out_dir: Path) -> list[Path]:
    """Metric vs size for one task (``part``: rows of :func:`quantbench.tables.summarize`)."""
    metric = part["metric"].iloc[0]
    higher = bool(part["higher_is_better"].iloc[0])
    archs = list(dict.fromkeys(part["arch"]))
    fig, axes, plt = _figure(len(archs))
    from matplotlib.ticker import NullFormatter

    for ax, arch in zip(axes, archs, strict=True):
        ax.set_prop_cycle(color=plt.cm.tab20.colors)  # 20 distinct colours: one per method
        rows = part[(part["arch"] == arch) & (part["status"] == "ok") & part["mean"].notna() & (part["size_kib"] > 0)]
        if rows.empty:
            ax.text(0.5, 0.5, "no finished runs with a recorded size", ha="center", va="center")
            ax.set_title(f"{task} / {arch}")
            continue
        ref = rows[rows["method"] == "reference"]
        cells = rows[rows["method"] != "reference"]
        for method, g in cells.groupby("method", sort=True):
            g = g.sort_values("size_kib")
            ax.plot(g["size_kib"], g["mean"], marker="o", ms=3.5, lw=1.2, label=method)
        if len(cells):
            idx = pareto_front(cells["size_kib"].to_numpy(), cells["mean"].to_numpy(), higher)
            front = cells.iloc[idx]
            ax.step(front["size_kib"], front["mean"], where="post", color="0.4", lw=4, alpha=0.35, zorder=0,
                    label="Pareto front")
            ax.scatter(front["size_kib"], front["mean"], s=90, facecolors="none", edgecolors="0.2", zorder=3)
        for _, r in ref.iterrows():
            ax.axhline(r["mean"], color="k", ls="--", lw=1)
            ax.plot([r["size_kib"]], [r["mean"]], "k*", ms=9, label="reference (fp32)")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("model size (KiB, all parameters)")
        ax.set_ylabel(f"test {metric}")
        ax.set_title(f"{task} / {arch}")
        ax.grid(True, which="both", alpha=0.3)
        if metric == "perplexity":
            ax.set_yscale("log")
    if axes[-1].get_legend_handles_labels()[0]:
        axes[-1].legend(fontsize=7, loc="best", ncol=2)
    return _save(fig, plt, out_dir, f"{task}_size")


def steps_plot(histories: pd.DataFrame, task: str, metric: str, curves: list, out_dir: Path) -> list[Path]:
    """Per-step curves of one task (``histories``: cell_id, key, step, value), a panel per declared
    ``curves`` (:class:`quantbench.method.StepCurve`) that has values."""
    panels = [(c.key.format(metric=metric), c.x, c.y.format(metric=metric)) for c in curves]
    panels = [p for p in panels if (histories["key"] == p[0]).any()] if len(histories) else []
    if not panels:  # still a figure, so the file set per task is fixed (Snakemake outputs)
        fig, axes, plt = _figure(1)
        axes[0].text(0.5, 0.5, f"{task}: no per-step metrics recorded", ha="center", va="center")
        axes[0].set_axis_off()
        return _save(fig, plt, out_dir, f"{task}_steps")
    fig, axes, plt = _figure(len(panels))
    for ax, (key, xlab, ylab) in zip(axes, panels, strict=True):
        for cell, g in histories[histories["key"] == key].groupby("cell_id", sort=True):
            g = g.sort_values("step")
            ax.plot(g["step"], g["value"], lw=1, marker=".", ms=3, label=cell.split("/", 1)[1])
        ax.set_xlabel(xlab)
        ax.set_ylabel(ylab)
        ax.set_title(f"{task}: {key}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=5, ncol=2)
    return _save(fig, plt, out_dir, f"{task}_steps")
