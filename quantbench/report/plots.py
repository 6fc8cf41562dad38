"""Plots from the MLflow record (the same summary the tables use), PNG and PDF per task.

* ``<task>_size``: the task metric against achieved bits per weight (side information included),
  one subplot per arch over the quantized points' range, one line per method through its budgets
  (mean over seeds), coloured by paper family (LC blues, post-training greens, OPQ oranges, DiffQ purples,
  baselines greys), the fp32 reference as a dashed line, and the Pareto front of all (method,
  budget) points — no other point is about as small (sizes within the tables' ``size_tolerance``
  count as equal, :func:`pareto_front`) and significantly better (the tables' paired test) — as
  a grey staircase, points ringed; each point has the spread the tables show as an error bar (the
  seeds' range, inside the metric's range; one seed: its interval over test examples), a marker
  of its own within its family; the cells without a point (diverged, failed, not run) and those
  whose mean leaves out a diverged seed are named in the panel's corner.
* ``<task>_steps``: the per-step curves the task's methods declare (``Method.step_curves``: LC's
  metric of Δ(Θ) per step, DiffQ's expected bits per weight per epoch, a plugin's own), a panel
  each, one line per cell (a figure saying so when no method logged any).
* ``<task>_calibration`` (grids with a ``calibration`` axis): the task metric against the size of
  the calibration set, a panel per (arch, budget), a line per method that calibrates through its
  ``<method>@n<samples>`` cells with their 95 % intervals, the methods that use no calibration
  (RTN, MSQ) and the fp32 reference as horizontal lines.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from quantbench.files import write_atomic
from quantbench.method import CALIBRATION_LABEL, PAPER_FAMILIES


def pareto_front(size: np.ndarray, metric: np.ndarray, higher_is_better: bool, tolerance: float,
                 separable: np.ndarray | None = None) -> np.ndarray:
    """Indices of the non-dominated points, by increasing size, where sizes within a relative
    ``tolerance`` count as equal (the tables' ``size_tolerance``: 1.0007 bpw is as small as 0.99999).
    ``separable[i, j]``: whether j's difference from i is significant (a paired test); a better
    point then dominates only where it is significantly better (None: every difference counts).

    Point *j* dominates point *i* when ``size[j] <= size[i] * (1 + tolerance)`` and *j*'s metric is
    at least as good, strictly better or with ``size[j] < size[i]``. A dominating point is better,
    or as good and smaller, so no two points dominate each other and the front is never empty; and
    of two front points the larger is strictly better (else the smaller would dominate it), so the
    front read by increasing size is a staircase. Exact duplicates are kept once (the first).
    """
    size = np.asarray(size, dtype=float)
    score = np.asarray(metric, dtype=float) if higher_is_better else -np.asarray(metric, dtype=float)
    # [i, j]: does j dominate i
    near = size[None, :] <= size[:, None] * (1 + tolerance)
    better = score[None, :] > score[:, None]
    if separable is not None:
        better &= np.asarray(separable, dtype=bool)
    as_good_smaller = (score[None, :] == score[:, None]) & (size[None, :] < size[:, None])
    dominated = (near & (better | as_good_smaller)).any(axis=1)
    front, seen = [], set()
    for i in np.lexsort((-score, size)):
        if not dominated[i] and (size[i], score[i]) not in seen:
            front.append(i)
            seen.add((size[i], score[i]))
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


FAMILY_COLOURS = dict(zip(PAPER_FAMILIES, ("Greys", "Blues", "Greens", "Oranges", "Purples"), strict=True))


MARKERS = "osD^v<>PX*hp"  # the methods of one family: one marker each, so shades need not be told apart


def method_markers(methods: pd.DataFrame) -> dict[str, str]:
    """A marker per method, distinct within its family (the family's methods in name order)."""
    markers = {}
    for _, g in methods.groupby("family", sort=False):
        for i, method in enumerate(sorted(set(g["method"]))):
            markers[method] = MARKERS[i % len(MARKERS)]
    return markers


def method_colours(methods: pd.DataFrame) -> dict[str, tuple]:
    """One colour family per paper family (a colormap each; other families share Reds), the
    methods of a family in shades of it."""
    import matplotlib

    colours = {}
    for family, g in methods.groupby("family", sort=False):
        cmap = matplotlib.colormaps[FAMILY_COLOURS.get(family, "Reds")]
        names = sorted(set(g["method"]))
        for i, method in enumerate(names):
            colours[method] = cmap(0.45 + 0.5 * (i + 1) / (len(names) + 1))
    return colours


def size_plot(part: pd.DataFrame, task: str, out_dir: Path, size_tolerance: float,
              separable: Callable[[pd.Series, pd.Series], bool] | None = None) -> list[Path]:
    """Metric vs achieved bits per weight for one task (``part``: rows of
    :func:`quantbench.report.summary.summarize`): a panel per arch, a line per method through its budgets
    with each point's spread (cell_interval) as an error bar, coloured by paper family, a marker
    per method; the x axis spans the quantized points, the fp32 reference is a dashed line; the
    Pareto front of all (method, budget) points, sizes within ``size_tolerance`` (relative)
    counting as equal and a better point dominating only where ``separable(row_i, row_j)`` (their
    difference is significant), is a grey staircase."""
    metric = part["metric"].iloc[0]
    higher = bool(part["higher_is_better"].iloc[0])
    archs = list(dict.fromkeys(part["arch"]))
    fig, axes, plt = _figure(len(archs))
    done = part[(part["status"] == "ok") & part["mean"].notna()]
    colours = method_colours(done[done["method"] != "reference"])
    markers = method_markers(done[done["method"] != "reference"])
    for ax, arch in zip(axes, archs, strict=True):
        rows = done[done["arch"] == arch]
        ref = rows[rows["method"] == "reference"]
        cells = rows[(rows["method"] != "reference") & rows["bpw"].notna()]
        ax.set_title(f"{task} / {arch}")
        for _, r in ref.iterrows():
            ax.axhline(r["mean"], color="k", ls="--", lw=1, label="reference (fp32)")
        _note_unplotted(ax, part[(part["arch"] == arch) & (part["method"] != "reference")])
        if cells.empty:
            ax.text(0.5, 0.5, "no finished quantized runs", ha="center", va="center", transform=ax.transAxes)
            continue
        for method, g in cells.groupby("method", sort=False):
            g = g.sort_values("bpw")
            errors = np.vstack([g["mean"] - g["ci_low"], g["ci_high"] - g["mean"]]) if "ci_low" in g else None
            ax.errorbar(g["bpw"], g["mean"], yerr=errors, marker=markers[method], ms=4, lw=1.2, elinewidth=0.8,
                        capsize=2, color=colours[method], label=method)
        matrix = None
        if separable is not None:
            rows_ = [r for _, r in cells.iterrows()]
            matrix = np.array([[separable(ri, rj) for rj in rows_] for ri in rows_], dtype=bool)
        idx = pareto_front(cells["bpw"].to_numpy(), cells["mean"].to_numpy(), higher, size_tolerance, matrix)
        front = cells.iloc[idx]
        ax.step(front["bpw"], front["mean"], where="post", color="0.4", lw=4, alpha=0.3, zorder=0,
                label="Pareto front")
        ax.scatter(front["bpw"], front["mean"], s=90, facecolors="none", edgecolors="0.2", zorder=3)
        lo, hi = float(cells["bpw"].min()), float(cells["bpw"].max())
        pad = max(0.05 * (hi - lo), 0.1)
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_xlabel("achieved bits per weight (side information included)")
        ax.set_ylabel(f"test {metric}")
        ax.grid(True, alpha=0.3)
        if metric == "perplexity":
            ax.set_yscale("log")
    handles, labels = [], []
    for ax in axes:  # one legend for the figure, methods in table order
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(h)
                labels.append(label)
    if handles:
        fig.legend(handles, labels, fontsize=7, loc="outside right upper")
    return _save(fig, plt, out_dir, f"{task}_size")


def _note_unplotted(ax, rows: pd.DataFrame) -> None:
    """A line per status in the panel's corner naming the cells that have no point (diverged at
    every seed, failed, killed, not run) and those whose point leaves out a diverged seed (§)."""
    lines = [f"{status}: " + ", ".join(f"{r.method} {r.budget:g}b" for r in g.itertuples())
             for status, g in rows[rows["status"] != "ok"].groupby("status")]
    partly = rows[(rows["status"] == "ok") & (rows.get("diverged", 0) > 0)]
    if len(partly):
        lines.append("§ diverged at some seed: " + ", ".join(
            f"{r.method} {r.budget:g}b (s{r.diverged_seeds.replace(' ', ', s')})" for r in partly.itertuples()))
    if lines:
        ax.text(0.01, 0.01, "\n".join(lines), transform=ax.transAxes, fontsize=6, va="bottom", color="tab:red",
                wrap=True)


def calibration_rows(part: pd.DataFrame) -> pd.DataFrame:
    """The finished cells of a calibration axis (labels ``<method>@n<samples>``), with ``base`` and ``samples``."""
    found = part["method"].str.extract(CALIBRATION_LABEL)
    rows = part[found["method"].notna() & (part["status"] == "ok") & part["mean"].notna()].copy()
    rows["base"] = found.loc[rows.index, "method"]
    rows["samples"] = found.loc[rows.index, "samples"].astype(int)
    return rows


def calibration_plot(part: pd.DataFrame, task: str, out_dir: Path) -> list[Path]:
    """Metric vs calibration set size for one task (``part``: rows of :func:`quantbench.report.summary.summarize`):
    a panel per (arch, budget) that has calibration cells, a line per method that calibrates, with
    each point's 95 % interval; the other methods of that column and the reference as horizontal lines."""
    metric = part["metric"].iloc[0]
    cal = calibration_rows(part)
    panels = list(dict.fromkeys(zip(cal["arch"], cal["budget"], strict=True)))
    fig, axes, plt = _figure(max(1, len(panels)))
    if not panels:
        axes[0].text(0.5, 0.5, f"{task}: no finished calibration cells", ha="center", va="center")
        axes[0].set_axis_off()
        return _save(fig, plt, out_dir, f"{task}_calibration")
    done = part[(part["status"] == "ok") & part["mean"].notna()]
    flat = done[~done.index.isin(cal.index) & (done["method"] != "reference")]
    colours = method_colours(pd.concat([cal.assign(method=cal["base"]), flat]))
    for ax, (arch, budget) in zip(axes, panels, strict=True):
        for base, g in cal[(cal["arch"] == arch) & (cal["budget"] == budget)].groupby("base", sort=True):
            g = g.sort_values("samples")
            errors = np.vstack([g["mean"] - g["ci_low"], g["ci_high"] - g["mean"]])
            ax.errorbar(g["samples"], g["mean"], yerr=errors, marker="o", ms=3.5, lw=1.2, elinewidth=0.8,
                        capsize=2, color=colours[base], label=base)
        for _, r in flat[(flat["arch"] == arch) & (flat["budget"] == budget)].iterrows():
            ax.axhline(r["mean"], color=colours[r["method"]], ls=":", lw=1.2, label=f"{r['method']} (no calibration)")
        for _, r in done[(done["arch"] == arch) & (done["method"] == "reference")].iterrows():
            ax.axhline(r["mean"], color="k", ls="--", lw=1, label="reference (fp32)")
        ax.set_xscale("log", base=2)
        ax.set_title(f"{task} / {arch} / {budget:g} bits")
        ax.set_xlabel("calibration samples")
        ax.set_ylabel(f"test {metric}")
        ax.grid(True, alpha=0.3)
    handles, labels = [], []
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(h)
                labels.append(label)
    fig.legend(handles, labels, fontsize=7, loc="outside right upper")
    return _save(fig, plt, out_dir, f"{task}_calibration")


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
