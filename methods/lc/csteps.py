"""LC compression types: the C step Θ = argmin_Θ ||w − Δ(Θ)||² for each codebook family.

Every C step maps a flat float64 vector ``w`` to a :class:`Projection` (codebook values and
one code per weight) that is the *exact* minimiser of its projection problem:

* :class:`AdaptiveCodebook`  K = 2^b free centroids: 1-D k-means, exact by dynamic programming
  up to N·K = 3·10^7, Lloyd warm-started from the previous centroids (the paper's choice) beyond,
  where it came within 2·10^-6 of the optimum at a fraction of the time and memory (measured);
* :class:`Binary`            {−1, +1}: c = sign(w);
* :class:`ScaledBinary`      {−a, +a}: a = mean |w|;
* :class:`ScaledTernary`     {−a, 0, +a}: with |w| sorted decreasingly and s_j the sum of the j
  largest, j* = argmax_j s_j² / j, a = s_j* / j*, the j* largest magnitudes map to ±a;
* :class:`ScaledCodebook`    {a·u : u ∈ U} for a fixed unit codebook U and a learned a > 0
  (exact sweep over the breakpoints of a, below); :class:`PowersOfTwo` is U = {0, ±2^−k}.

Scaled codebook sweep: for fixed a every weight takes the nearest a·u, and the error
E(a) = Σw² − 2a·P + a²·Q with P = Σ w_i u(i), Q = Σ u(i)² is quadratic between the values
a = w_i / m_j (m_j the midpoints of U) where an assignment changes. Sorting those breakpoints
and minimising the quadratic on every interval (a* = clip(P/Q)) gives the global optimum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from quantbench.method import Budget
from quantbench.methods.lc.kmeans1d import assign_nearest, kmeans1d_exact, kmeans1d_lloyd


@dataclass
class Projection:
    values: np.ndarray  # the codebook (ascending)
    codes: np.ndarray  # index into ``values`` of every weight

    def dense(self) -> np.ndarray:
        return self.values[self.codes]

    def distortion(self, w: np.ndarray) -> float:
        return float(np.sum((w - self.dense()) ** 2))


class CStep:
    """A codebook family; ``levels`` is its size K, the number of distinct codes."""

    levels: int

    def project(self, w: np.ndarray) -> Projection:
        raise NotImplementedError


EXACT_MAX_WORK = 3e7  # N·K above which ``auto`` runs warm-started Lloyd (benchmarks/lc_cstep.py, docs/methods/lc.md)


class AdaptiveCodebook(CStep):
    """K free centroids (1-D k-means). ``exact``: global optimum; ``lloyd``: warm-started;
    ``auto``: exact while N·K <= :data:`EXACT_MAX_WORK`, warm-started Lloyd beyond (a measured choice)."""

    def __init__(self, levels: int, algorithm: str = "auto") -> None:
        self.levels, self.algorithm = levels, algorithm
        self.centroids: np.ndarray | None = None  # Lloyd's warm start

    def solver(self, numel: int) -> str:
        if self.algorithm == "auto":
            return "exact" if numel * self.levels <= EXACT_MAX_WORK else "lloyd"
        return self.algorithm

    def project(self, w: np.ndarray) -> Projection:
        lloyd = self.solver(w.size) == "lloyd"
        if lloyd and self.centroids is not None and self.centroids.size == self.levels:
            values, codes = kmeans1d_lloyd(w, self.centroids)
        elif lloyd:  # first call: deterministic quantile initialisation
            init = np.quantile(w, (np.arange(self.levels) + 0.5) / self.levels)
            values, codes = kmeans1d_lloyd(w, init)
        else:
            values, codes = kmeans1d_exact(w, self.levels)
        self.centroids = values
        return Projection(values, codes)


class Binary(CStep):
    """{−1, +1}: the nearest is sign(w) (0 maps to +1)."""

    levels = 2

    def project(self, w: np.ndarray) -> Projection:
        return Projection(np.array([-1.0, 1.0]), (w >= 0).astype(np.int64))


class ScaledBinary(CStep):
    """{−a, +a}: codes sign(w), a = mean |w| (set ∂/∂a Σ(|w_i| − a)² = 0)."""

    levels = 2

    def project(self, w: np.ndarray) -> Projection:
        a = float(np.mean(np.abs(w))) if w.size else 0.0
        return Projection(np.array([-a, a]), (w >= 0).astype(np.int64))


class ScaledTernary(CStep):
    """{−a, 0, +a}: keep the j* largest |w|, j* = argmax s_j²/j, a = s_j*/j*."""

    levels = 3

    def project(self, w: np.ndarray) -> Projection:
        mag = np.abs(w)
        order = np.argsort(-mag, kind="stable")
        sums = np.cumsum(mag[order])
        j = np.arange(1, w.size + 1)
        best = int(np.argmax(sums**2 / j))
        a = float(sums[best] / (best + 1))
        codes = np.ones(w.size, dtype=np.int64)  # code 1 is 0
        keep = order[: best + 1]
        codes[keep] = np.where(w[keep] >= 0, 2, 0)
        return Projection(np.array([-a, 0.0, a]), codes)


class ScaledCodebook(CStep):
    """{a·u : u ∈ U} with U fixed and a > 0 learned: exact sweep over the breakpoints of a."""

    def __init__(self, unit: list[float] | np.ndarray) -> None:
        self.unit = np.unique(np.asarray(unit, dtype=np.float64))
        if self.unit.size < 2:
            raise ValueError("a scaled codebook needs at least two distinct unit values")
        self.levels = self.unit.size

    def project(self, w: np.ndarray) -> Projection:
        u = self.unit
        mids = (u[1:] + u[:-1]) / 2
        # a -> infinity: w/a -> 0±, every weight sits at the level nearest 0 on its side
        inner = np.where(w > 0, np.searchsorted(mids, 0.0, side="right"),
                         np.where(w < 0, np.searchsorted(mids, 0.0, side="left"), assign_nearest(np.zeros(1), u)[0]))
        p_inf = float(np.sum(w * u[inner]))
        q_inf = float(np.sum(u[inner] ** 2))
        # as a decreases, weight i crosses midpoint m_j (same sign) at a = w_i / m_j and moves one
        # level outwards; every such move increases P = Σ w u and Q = Σ u², so the running sums
        # (taken from a = ∞ down) add positive terms only and stay accurate over many levels
        pos_j, neg_j = np.flatnonzero(mids > 0), np.flatnonzero(mids < 0)
        wp, wn = w[w > 0], w[w < 0]
        a_ev = np.concatenate([(wp[:, None] / mids[pos_j][None, :]).ravel(),
                               (wn[:, None] / mids[neg_j][None, :]).ravel()])
        dp = np.concatenate([(wp[:, None] * (u[pos_j + 1] - u[pos_j])[None, :]).ravel(),
                             (wn[:, None] * (u[neg_j] - u[neg_j + 1])[None, :]).ravel()])
        dq = np.concatenate([np.broadcast_to(u[pos_j + 1] ** 2 - u[pos_j] ** 2, (wp.size, pos_j.size)).ravel(),
                             np.broadcast_to(u[neg_j] ** 2 - u[neg_j + 1] ** 2, (wn.size, neg_j.size)).ravel()])
        order = np.argsort(-a_ev, kind="stable")
        a_ev, dp, dq = a_ev[order], dp[order], dq[order]
        p = p_inf + np.concatenate([[0.0], np.cumsum(dp)])  # interval m = [a_ev[m], a_ev[m-1]]
        q = q_inf + np.concatenate([[0.0], np.cumsum(dq)])
        hi = np.concatenate([[np.inf], a_ev])
        lo = np.concatenate([a_ev, [0.0]])
        with np.errstate(divide="ignore", invalid="ignore"):
            a_star = np.clip(np.where(q > 0, p / q, lo), lo, hi)
            err = np.where(q > 0, -2 * a_star * p + a_star**2 * q, 0.0)
        a = float(a_star[int(np.argmin(err))])
        if not (a > 0 and math.isfinite(a)):
            a = 1.0  # w = 0 (or nothing to scale): every scale is optimal
        codes = assign_nearest(w / a, u)
        return Projection(a * u, codes)


class PowersOfTwo(ScaledCodebook):
    """{0, ±a·2^−k, k = 0..(K − 3)/2}: K levels, K odd >= 3 (log2 K bits: 3, 7, 15 levels at
    1.58, 2.81, 3.91 bits), scale a learned."""

    def __init__(self, levels: int) -> None:
        if levels < 3 or levels % 2 == 0:
            raise ValueError(f"the powers-of-two codebook has an odd number of levels >= 3 (0 and ±a·2^−k), "
                             f"not {levels}")
        mags = 2.0 ** -np.arange((levels - 1) // 2)
        super().__init__(np.concatenate([-mags, [0.0], mags]))


# ---------------------------------------------------------------- the codebook a method names
CodebookKind = Literal["adaptive", "binary", "scaled_binary", "ternary", "pow2"]
MAX_ADAPTIVE_BITS = 8


def _near(bits: float, target: float) -> bool:
    return abs(bits - target) < 0.01


def serves(kind: str, budget: Budget, unit_codebook: list[float] | None = None) -> bool:
    """Budgets each codebook serves, b = log2 K: K = 2^b (adaptive), 2 (binary), 3 (ternary: 1.58),
    an odd K = 2^b (pow2: 3, 7, 15 levels at 1.58, 2.81, 3.91 bits), K = |U| (scaled). Base-K packing gives
    log2 K + <1%."""
    b = budget.int_bits
    if kind == "adaptive":
        return b is not None and 1 <= b <= MAX_ADAPTIVE_BITS
    if kind in ("binary", "scaled_binary"):
        return b == 1
    if kind == "ternary":
        return _near(budget.bits, math.log2(3))
    if kind == "pow2":
        k = budget.levels
        return k is not None and k % 2 == 1 and 3 <= k < 2**MAX_ADAPTIVE_BITS
    if kind == "scaled":
        k = len(set(unit_codebook or []))
        return k >= 2 and _near(budget.bits, math.log2(k))
    raise ValueError(f"unknown codebook kind {kind!r}")


def make_cstep(kind: str, budget: Budget, kmeans: str = "auto", unit_codebook: list[float] | None = None) -> CStep:
    if kind == "adaptive":
        return AdaptiveCodebook(2 ** budget.int_bits, kmeans)
    if kind == "pow2":
        return PowersOfTwo(budget.levels)
    if kind == "scaled":
        return ScaledCodebook(unit_codebook)
    return {"binary": Binary, "scaled_binary": ScaledBinary, "ternary": ScaledTernary}[kind]()
