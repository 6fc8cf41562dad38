"""Exact 1-D k-means (the adaptive-codebook C step) and warm-started Lloyd.

Exact: dynamic programming on the sorted values x_1 <= ... <= x_N,

    D[k, i] = min_{j < i} D[k-1, j] + SSE(x_{j+1..i}),   D[1, i] = SSE(x_{1..i}),

with SSE from prefix sums (S1, S2): SSE(j, i) = (S2_i - S2_j) - (S1_i - S1_j)^2 / (i - j).
The optimal split j*(k, i) is non-decreasing in i, so each row is filled by divide and
conquer in O(N log N): O(K N log N) time. Back-tracking needs the split table; when
K x N int32 would exceed ``table_bytes``, only every s-th row of D is kept and blocks of rows
are recomputed while back-tracking (about twice the time, memory O(N K / s + s N)).
The result is the global optimum of sum_n min_k (x_n - c_k)^2 (up to floating-point ties),
deterministic, with no random restarts.

The kernels are compiled by numba and cached beside this file (``__pycache__``). The cache
records this module's import name (``quantbench.methods.lc.kmeans1d`` since the package mapping)
and is invalidated only when this file changes: a rename of the package must change this file.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit


@njit(cache=True)
def _fill_row(prev: np.ndarray, s1: np.ndarray, s2: np.ndarray, k: int, cur: np.ndarray, split: np.ndarray) -> None:
    """Row k (k >= 2 clusters) of D from row k-1 by divide and conquer on the monotone split."""
    n = prev.size - 1
    # explicit stack of (lo, hi, opt_lo, opt_hi)
    stack = np.empty((64 + 2 * int(math.log2(n + 2)) + 8, 4), dtype=np.int64)
    top = 0
    stack[0, 0], stack[0, 1], stack[0, 2], stack[0, 3] = k, n, k - 1, n - 1
    top = 1
    while top > 0:
        top -= 1
        lo, hi, olo, ohi = stack[top, 0], stack[top, 1], stack[top, 2], stack[top, 3]
        if lo > hi:
            continue
        mid = (lo + hi) // 2
        best, arg = np.inf, olo
        s1m, s2m = s1[mid], s2[mid]
        for j in range(olo, min(mid - 1, ohi) + 1):
            d1 = s1m - s1[j]
            c = prev[j] + (s2m - s2[j]) - d1 * d1 / (mid - j)
            if c < best:
                best, arg = c, j
        cur[mid] = best
        split[mid] = arg
        stack[top, 0], stack[top, 1], stack[top, 2], stack[top, 3] = lo, mid - 1, olo, arg
        stack[top + 1, 0], stack[top + 1, 1], stack[top + 1, 2], stack[top + 1, 3] = mid + 1, hi, arg, ohi
        top += 2


@njit(cache=True)
def _first_row(s1: np.ndarray, s2: np.ndarray, out: np.ndarray) -> None:
    for i in range(1, s1.size):
        out[i] = (s2[i] - s2[0]) - (s1[i] - s1[0]) ** 2 / i


def _rows(s1, s2, start_row: np.ndarray, k_from: int, k_to: int):
    """Rows k_from+1..k_to of D from row k_from; yields (k, row, split)."""
    n = s1.size - 1
    prev = start_row
    for k in range(k_from + 1, k_to + 1):
        cur = np.full(n + 1, np.inf)
        split = np.zeros(n + 1, dtype=np.int32 if n < 2**31 else np.int64)
        _fill_row(prev, s1, s2, k, cur, split)
        yield k, cur, split
        prev = cur


def optimal_breaks(x_sorted: np.ndarray, k: int, table_bytes: int = 2 * 1024**3) -> np.ndarray:
    """Start indices of the k clusters of the optimal partition of sorted ``x_sorted``."""
    n = x_sorted.size
    if not 1 <= k <= n:
        raise ValueError(f"k must lie in 1..{n}, got {k}")
    x = x_sorted - x_sorted.mean()  # centring keeps the prefix sums well conditioned
    s1 = np.concatenate([[0.0], np.cumsum(x)])
    s2 = np.concatenate([[0.0], np.cumsum(x * x)])
    if k == 1:
        return np.array([0])
    row1 = np.full(n + 1, np.inf)
    _first_row(s1, s2, row1)
    # rows are grouped in blocks of `block`; D is kept at block starts, splits for one block at a time
    per_row = 4 * (n + 1)
    block = k if k * per_row <= table_bytes else max(1, int(math.sqrt(k)))
    checkpoints = {1: row1}
    splits: dict[int, np.ndarray] = {}
    last_start = 1 + ((k - 2) // block) * block  # the block holding row k starts here
    for r, row, split in _rows(s1, s2, row1, 1, k):
        if (r - 1) % block == 0:
            checkpoints[r] = row
        if r > last_start:
            splits[r] = split
    breaks = np.zeros(k, dtype=np.int64)
    i = n
    start = last_start
    while True:
        for r in range(min(k, start + block), start, -1):
            j = int(splits[r][i])
            breaks[r - 1] = j
            i = j
        if start == 1:
            break
        start -= block
        splits = {r: s for r, _, s in _rows(s1, s2, checkpoints[start], start, start + block)}
    breaks[0] = 0
    return breaks


def kmeans1d_exact(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Globally optimal 1-D k-means: (centroids ascending, assignment of each x).

    ``k`` is reduced to the number of distinct values when there are fewer.
    """
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    order = np.argsort(x, kind="stable")
    xs = x[order]
    k = min(k, int(np.count_nonzero(np.diff(xs))) + 1)
    breaks = optimal_breaks(xs, k)
    ends = np.append(breaks[1:], xs.size)
    sums = np.add.reduceat(xs, breaks)
    centroids = sums / (ends - breaks)
    labels_sorted = np.repeat(np.arange(k), ends - breaks)
    labels = np.empty_like(labels_sorted)
    labels[order] = labels_sorted
    return centroids, labels


def assign_nearest(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest of the ascending ``centroids`` for every x (ties to the lower)."""
    mid = (centroids[1:] + centroids[:-1]) / 2
    return np.searchsorted(mid, x, side="left")


def kmeans1d_lloyd(x: np.ndarray, init: np.ndarray, max_iter: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's iterations from ``init`` (the paper's warm-started C step): a local optimum.

    In 1-D every cluster is an interval of the sorted values, so after one sort an iteration costs
    O(K log N): the cluster ends are binary searches for the midpoints (x on a midpoint goes to the
    lower cluster, as in :func:`assign_nearest`) and the cluster sums are differences of prefix sums
    (of the centred values). An empty cluster keeps its centre. Stops when the centroids repeat.
    """
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    xs = np.sort(x)
    shift = float(xs.mean()) if xs.size else 0.0
    prefix = np.concatenate([[0.0], np.cumsum(xs - shift)])
    c = np.sort(np.asarray(init, dtype=np.float64))
    for _ in range(max_iter):
        bounds = np.concatenate([[0], np.searchsorted(xs, (c[1:] + c[:-1]) / 2, side="right"), [xs.size]])
        counts = np.diff(bounds)
        means = (prefix[bounds[1:]] - prefix[bounds[:-1]]) / np.maximum(counts, 1) + shift
        new = np.sort(np.where(counts > 0, means, c))
        if np.array_equal(new, c):
            break
        c = new
    return c, assign_nearest(x, c)


def distortion(x: np.ndarray, centroids: np.ndarray, labels: np.ndarray) -> float:
    """sum_n (x_n - c_{label_n})^2"""
    return float(np.sum((np.asarray(x, dtype=np.float64).reshape(-1) - centroids[labels]) ** 2))
