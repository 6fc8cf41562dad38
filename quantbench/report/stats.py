"""How much of a difference is real: per-example outcomes, intervals and paired tests.

Every evaluation keeps, besides its metrics, what a paired test needs (:class:`Examples`):
per test example its correctness and loss (classification), or per block of tokens its summed
loss and token count (language modelling), with the identity of the split it saw (task, split,
number of examples and a sha256 of the targets in order). Each metric is a ratio of sums over
examples, ``metric = f(Σ_i w_i·num_i / Σ_i w_i·den_i)`` with weights ``w_i = 1`` (accuracy:
``num = 100·correct``, ``den = 1``; perplexity: ``num`` = summed loss, ``den`` = tokens,
``f = exp``), so a bootstrap replicate is the same formula with ``w`` = how often each example
was drawn.

- **Spread of a cell** (:func:`cell_interval`), shown beside its mean: with ≥ 2 seeds the range
  of the seeds' metrics, ``[min_s m(s), max_s m(s)]`` (run-to-run spread, inside the metric's range
  by construction: a t interval over 3 seeds of which one collapsed went past 100 %); with one seed
  a 95 % percentile bootstrap over test examples (test-set variance only: nothing about another
  seed). A seed has **collapsed** (:func:`collapsed`) when its metric is no better than chance
  (:func:`chance_level`) by more than :data:`COLLAPSE_MARGIN`.
- **Paired difference** (:func:`paired_difference`) of two cells on the same examples and the
  same seeds (seed s of both compressed the same reference s): ``d = mean_s d_s`` with
  ``d_s = m_A(s) − m_B(s)``. **The seed is the unit** (a seed is the whole pipeline run again:
  reference, method, calibration draw): with n ≥ 2 seeds, a paired t test on the ``d_s``,
  ``t = d̄ / (s_d/√n)`` on n − 1 degrees of freedom, interval ``d̄ ± t_{(1+c)/2, n−1}·s_d/√n``
  (:data:`SEED_T`); where the ``d_s`` are all equal (no spread: t is not defined) the exact
  sign-flip permutation over the seeds, whose smallest p is ``2/2^n`` (0.25 at 3 seeds: no
  difference can be called below 6, and its interval is then the whole range; :data:`SIGN_FLIP`).
  Example noise alone is not evidence about another seed: with one seed only, a paired
  bootstrap over the test examples (:data:`EXAMPLES_ONLY`, labelled as such): a
  replicate draws the examples with replacement (the same draw for both cells), the interval is
  the replicates' percentiles and the two-sided p-value
  ``2·(min(#{d* < 0}, #{d* > 0}) + #{d* = 0}/2 + 1)/(B + 1)`` (at most 1; ties at 0 half on each
  side), or, where fewer than :data:`RESOLVED_TAIL` replicates fall beyond 0 and the count
  cannot resolve it, the normal tail ``2·Φ(−|d|/sd(d*))`` of the replicates' spread instead.
- **Margins** (:data:`MARGINS`, :func:`margin_in_units`): "A not worse than B by more than m"
  and "A worse by more than m" are one-sided tests of the same differences against −m
  (:meth:`Difference.p_above`, :meth:`Difference.p_below`); equivalence within ±m is the two
  one-sided tests (:func:`tost`). m: points of accuracy or error, a fraction of B's perplexity.
- **Power** (:func:`t_power`, :func:`detectable_difference`, :func:`seeds_needed`): the paired
  t's power by the non-central t; what n seeds detect at 80 %, and the seeds a difference needs.
- **Where the variance comes from** (:func:`seed_components`): a column's methods × seeds as a
  two-way layout, the seed's shared part against a method's own run.
- **Several comparisons** (:func:`holm`): Holm's step-down adjustment of a family's p-values
  (family-wise error at most α).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from quantbench.errors import ExamplesError
from quantbench.examples import (  # noqa: F401 (the record stats reads)
    EXAMPLES_FILE,
    Examples,
    chance_level,
    metric_from_ratio,
    split_identity,
)

CONFIDENCE = 0.95
ALPHA = 0.05
REPLICATES = 2000
RESOLVED_TAIL = 5  # fewer replicates than this beyond 0: the p-value is the normal approximation
CHUNK_DRAWS = 4_000_000  # example draws per chunk of replicates: bounds the memory of a bootstrap
SEED_RANGE = "range of the seeds"
CI_EXAMPLES = "bootstrap over test examples"
COLLAPSE_MARGIN = 10.0  # accuracy/error points from chance; for a loss, 10 % of a uniform guess's
SEED_T = "paired t over seeds"  # the tests of a difference (Difference.test)
SIGN_FLIP = "exact sign-flip over seeds"
EXAMPLES_ONLY = "paired bootstrap over test examples (one seed: example noise only)"


def bootstrap_weights(n: int, replicates: int, seed: int) -> Iterable[np.ndarray]:
    """Count matrices (chunk, n): row r counts how often each of the ``n`` examples is drawn in
    replicate r (n draws with replacement, ``numpy.random.default_rng(seed)``); chunks of at most
    :data:`CHUNK_DRAWS` draws. The same (n, replicates, seed) gives the same draws: every test of
    a table uses the same replicates (common random numbers), and one chunk is kept for reuse."""
    if n * replicates <= CHUNK_DRAWS:
        yield _one_chunk(n, replicates, seed)
        return
    rng = np.random.default_rng(seed)
    per_chunk = max(1, CHUNK_DRAWS // max(n, 1))
    done = 0
    while done < replicates:
        b = min(per_chunk, replicates - done)
        done += b
        yield _counts(rng, n, b)


@functools.lru_cache(maxsize=4)
def _one_chunk(n: int, replicates: int, seed: int) -> np.ndarray:
    counts = _counts(np.random.default_rng(seed), n, replicates)
    counts.setflags(write=False)
    return counts


def _counts(rng: np.random.Generator, n: int, b: int) -> np.ndarray:
    draws = rng.integers(0, n, size=(b, n)) + n * np.arange(b)[:, None]  # row r's draws, offset by r·n
    return np.bincount(draws.ravel(), minlength=b * n).reshape(b, n).astype(np.float64)


def check_alpha(value: float) -> float:
    """``value`` when it is a test level in (0, 0.5], else a ValueError saying so."""
    if not 0 < value <= 0.5:  # NaN too
        raise ValueError(f"{value:g} is outside (0, 0.5]: a test level, 0.05 = 5 %")
    return value


def check_paired(a: Sequence[Examples], b: Sequence[Examples]) -> None:
    """Every result of ``a`` and ``b`` saw the same examples in the same order; else an
    :class:`ExamplesError` saying what differs."""
    splits = {json.dumps(e.split, sort_keys=True) for e in (*a, *b)}
    if len(splits) > 1:
        raise ExamplesError(f"not evaluated on the same examples in the same order "
                            f"({len(splits)} different test splits: {sorted(splits)[:2]}...)")


def percentile_interval(star: np.ndarray, confidence: float) -> tuple[float, float]:
    """The central ``confidence`` interval of bootstrap replicates ``star``: their (1 ∓ c)/2 quantiles."""
    tail = (1 - confidence) / 2
    low, high = np.quantile(star, [tail, 1 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class Difference:
    """``mean_s [m_A(s) − m_B(s)]`` with its ``confidence`` interval, two-sided p-value and the
    test that gave them (:data:`SEED_T`, :data:`SIGN_FLIP` or :data:`EXAMPLES_ONLY`);
    ``replicates``: the bootstrap's (0 for a test over seeds); ``sd``: the seeds' sd of the
    ``d_s`` (t test; 0 for the sign-flip) or the replicates' sd (one seed); ``star``: the
    replicates (one seed)."""

    difference: float
    low: float
    high: float
    p_value: float
    n_seeds: int
    n_examples: int
    replicates: int
    confidence: float = CONFIDENCE
    test: str = SEED_T
    sd: float = math.nan
    star: np.ndarray | None = field(default=None, repr=False, compare=False)

    def p_below(self, bound: float) -> float:
        """One-sided p-value of H0: Δ ≥ ``bound`` against Δ < ``bound`` (small: the difference is
        surely below the bound). Paired t: ``F_{t, n−1}((d̄ − bound)/(s_d/√n))``; sign-flip
        (every ``d_s`` equal): ``2^−n`` where ``d̄ < bound``, else 1 (only the all-plus pattern is as
        far below); one seed: the share of bootstrap replicates at or above the bound
        (``(#{d* > bound} + #{d* = bound}/2 + 1)/(B + 1)``), or the normal tail
        ``Φ((d − bound)/sd(d*))`` where fewer than :data:`RESOLVED_TAIL` replicates are there."""
        from scipy.stats import norm, t

        shift = self.difference - bound
        if self.test == SIGN_FLIP:
            return 2.0 ** -self.n_seeds if shift < 0 else 1.0
        if self.test == SEED_T:
            return float(t.cdf(shift / (self.sd / math.sqrt(self.n_seeds)), self.n_seeds - 1))
        star = self.star
        beyond = np.sum(star > bound) + np.sum(star == bound) / 2
        if beyond < RESOLVED_TAIL and self.sd > 0:
            return float(norm.cdf(shift / self.sd))
        return float(min(1.0, (beyond + 1) / (len(star) + 1)))

    def p_above(self, bound: float) -> float:
        """One-sided p-value of H0: Δ ≤ ``bound`` against Δ > ``bound`` (:meth:`p_below` mirrored)."""
        mirrored = dataclasses.replace(self, difference=-self.difference,
                                       star=None if self.star is None else -self.star)
        return mirrored.p_below(-bound)


def paired_difference(metric: str, a: Sequence[Examples], b: Sequence[Examples], confidence: float = CONFIDENCE,
                      replicates: int = REPLICATES, seed: int = 0) -> Difference:
    """``m_A − m_B`` paired over seeds (module docstring): ``a[s]`` and ``b[s]`` are the results of
    seed s of the two cells (the same reference), all on the same examples. Two or more seeds:
    the seed-level test (:func:`seed_difference`); one: the bootstrap over test examples."""
    if len(a) != len(b) or not a:
        raise ExamplesError(f"a paired test needs the same seeds on both sides, got {len(a)} and {len(b)}")
    check_paired(a, b)
    per_seed = [x.metric(metric) - y.metric(metric) for x, y in zip(a, b, strict=True)]
    if len(a) >= 2:
        return seed_difference(per_seed, a[0].n, confidence, metric)
    x, y = a[0], b[0]
    star = np.concatenate([x.metric(metric, w) - y.metric(metric, w)
                           for w in bootstrap_weights(x.n, replicates, seed)])
    low, high = percentile_interval(star, confidence)
    ties = np.sum(star == 0) / 2  # a tie is half on each side (mid-p): on a discrete metric it is not rare
    beyond = min(np.sum(star < 0) + ties, np.sum(star > 0) + ties)  # replicates on the far side of 0
    p = min(1.0, 2 * (beyond + 1) / (len(star) + 1))
    if beyond < RESOLVED_TAIL and star.std() > 0:  # the count cannot resolve p: the normal tail of the spread
        from scipy.stats import norm

        p = float(2 * norm.sf(abs(per_seed[0]) / star.std(ddof=1)))
    return Difference(per_seed[0], low, high, float(p), 1, x.n, len(star), confidence, EXAMPLES_ONLY,
                      float(star.std(ddof=1)), star)


BOUNDED = {"accuracy": 100.0, "error": 100.0}  # metrics on [0, B]: a difference lies in [−B, B]


def seed_difference(per_seed: Sequence[float], n_examples: int = 0, confidence: float = CONFIDENCE,
                    metric: str = "") -> Difference:
    """The seed-level test of ``d_s`` (n ≥ 2 seeds' paired differences): the paired t test,
    ``t = d̄ / (s_d/√n)`` on n − 1 degrees of freedom with its interval; where every ``d_s`` is
    the same (s_d = 0, up to rounding), the exact sign-flip permutation test, ``p = #{ε ∈ {±1}^n :
    |mean(ε·d)| ≥ |d̄|} / 2^n`` (1 when d̄ = 0, else 2/2^n), whose interval (the shifts δ it does not
    reject) is [d̄, d̄] where ``2/2^n < 1 − confidence`` and every δ where it is not (3 seeds: no
    difference can be called at α = 0.05; :func:`sign_flip_seeds`). A ``metric`` on [0, B]
    (:data:`BOUNDED`) keeps the interval inside [−B, B], where every difference lies."""
    from scipy.stats import t

    d = np.asarray(per_seed, dtype=np.float64)
    n, mean = len(d), float(d.mean())
    if n < 2:
        raise ExamplesError(f"a test over seeds needs at least 2 seeds, got {n}")
    bound = BOUNDED.get(metric, math.inf)
    if np.allclose(d, d[0], rtol=1e-9, atol=1e-12):  # equal up to rounding (one example each: 100/n apiece)
        resolved = 2.0 / 2**n < 1 - confidence
        low, high = (mean, mean) if resolved else (-bound, bound)
        return Difference(mean, low, high, 1.0 if mean == 0 else 2.0 / 2**n, n, n_examples, 0, confidence,
                          SIGN_FLIP, 0.0)
    low, high = t_interval(d, confidence)
    sd = float(d.std(ddof=1))
    p = float(2 * t.sf(abs(mean) / (sd / math.sqrt(n)), n - 1))
    return Difference(mean, max(low, -bound), min(high, bound), p, n, n_examples, 0, confidence, SEED_T, sd)


def sign_flip_seeds(alpha: float = ALPHA, sided: int = 2) -> int:
    """The fewest seeds at which the exact sign-flip can call a difference at level ``alpha``:
    the smallest n with ``sided/2^n < alpha`` (two-sided, α = 0.05: 6; 3 seeds give 0.25 at best)."""
    return math.floor(math.log2(sided / alpha)) + 1


def tost(d: Difference, margin: float) -> float:
    """The p-value of equivalence within ±``margin`` (two one-sided tests, Schuirmann 1987):
    ``max(p_above(−m), p_below(m))``; below α: the difference is surely inside (−m, m)."""
    return max(d.p_above(-margin), d.p_below(margin))


POWER = 0.8  # the power that "detectable" and "seeds needed" are at


def t_power(effect: float, sd: float, n: int, alpha: float = ALPHA) -> float:
    """Power of the two-sided paired t test at level ``alpha`` over ``n`` seeds to find a true
    mean difference ``effect`` when the seeds' differences have sd ``sd``: with ``δ = effect·√n/sd``
    and ``c = t_{1−α/2, n−1}``, ``P(T' > c) + P(T' < −c)``, T' non-central t(n − 1, δ)."""
    from scipy.stats import nct, t

    c = t.ppf(1 - alpha / 2, n - 1)
    nc = abs(effect) * math.sqrt(n) / sd
    far = nct.cdf(-c, n - 1, nc)  # the wrong-side tail: negligible where scipy's series gives NaN (large δ)
    return float(nct.sf(c, n - 1, nc) + (0.0 if math.isnan(far) else far))


def detectable_difference(sd: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest true difference the paired t over ``n`` seeds (sd ``sd`` of their
    differences) finds with probability ``power`` (:func:`t_power` solved for the effect); with
    no spread (sd 0, the sign-flip): 0 where n seeds can call a difference at all, else inf."""
    if n < 2:
        return math.inf
    if sd == 0:
        return 0.0 if n >= sign_flip_seeds(alpha) else math.inf
    from scipy.optimize import brentq

    high = sd
    while t_power(high, sd, n, alpha) < power:
        high *= 2
    return float(brentq(lambda e: t_power(e, sd, n, alpha) - power, 0.0, high, xtol=1e-10 * sd))


def seeds_needed(effect: float, sd: float, alpha: float = ALPHA, power: float = POWER,
                 most: int = 100_000) -> int | None:
    """The fewest seeds (≥ 2) at which the paired t finds a true difference ``effect`` with
    probability ``power``, the seeds' differences having sd ``sd``; with no spread (sd 0) the
    sign-flip's :func:`sign_flip_seeds`. None where ``effect`` is 0 or more than ``most`` would be needed."""
    if effect == 0 or not math.isfinite(effect):
        return None
    if sd == 0:
        return sign_flip_seeds(alpha)
    n = 2
    while t_power(effect, sd, n, alpha) < power:  # power rises with n: double, then bisect
        if n > most:
            return None
        n *= 2
    low = max(2, n // 2)
    while low < n:
        mid = (low + n) // 2
        low, n = (low, mid) if t_power(effect, sd, mid, alpha) >= power else (mid + 1, n)
    return n if n <= most else None


MARGINS = {"accuracy": 0.5, "error": 0.5, "perplexity": 0.01, "loss": 0.01, "bits_per_token": 0.01}
RELATIVE_MARGIN = frozenset({"perplexity", "loss", "bits_per_token"})  # a fraction of B's value; else metric points


def check_margin(value: float, where: str = "") -> float:
    """``value`` when it is a margin (a finite number ≥ 0), else a ValueError naming ``where``."""
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{where + ': ' if where else ''}{value!r} is not a margin: a number ≥ 0 (accuracy/error: "
                         f"points; perplexity, loss, bits per token: a fraction of the comparator's value, 0.01 = 1 %)")
    return float(value)


def grid_margin(metric: str, margins: dict[str, float] | None = None) -> float:
    """The margin for ``metric``: the grid's (``tables.margins``; a plan written before it had
    them has none), else :data:`MARGINS`; 0 for a metric with none."""
    return {**MARGINS, **(margins or {})}.get(metric, 0.0)


def margin_in_units(metric: str, margin: float, comparator: float) -> float:
    """A margin in the metric's own units: as given for accuracy and error (points); for a metric
    of :data:`RELATIVE_MARGIN` that fraction of the comparator's value ``|m_B|`` (1 % of B's perplexity)."""
    return margin * abs(comparator) if metric in RELATIVE_MARGIN else margin


@dataclass(frozen=True)
class SeedComponents:
    """Where a column's seed-to-seed variance comes from (:func:`seed_components`): ``shared``,
    what a seed fixes for every method (its reference network, its calibration draw); ``own``,
    what a method's own run adds (method × seed); over ``methods`` × ``seeds`` values."""

    shared: float
    own: float
    methods: int
    seeds: int

    @property
    def shared_share(self) -> float:
        """The share of one run's variance around its method's mean that the seed's shared part holds."""
        total = self.shared + self.own
        return self.shared / total if total > 0 else math.nan


def seed_components(values: np.ndarray) -> SeedComponents:
    """Variance components of a two-way layout without replication, ``y[m, s]`` (k methods × n
    seeds, every method at every seed), ``y = μ + a_m + b_s + e_ms`` with method effects
    ``a_m`` fixed, the seed's shared effect ``b_s ~ (0, σ²_shared)`` and the run's own
    ``e_ms ~ (0, σ²_own)``. Mean squares ``MS_seed = k·Σ_s (ȳ_·s − ȳ)²/(n − 1)`` and
    ``MS_own = Σ_ms (y − ȳ_m· − ȳ_·s + ȳ)²/((k − 1)(n − 1))``; method-of-moments estimates
    ``σ²_own = MS_own``, ``σ²_shared = max(0, (MS_seed − MS_own)/k)`` (E[MS_seed] = σ²_own + k·σ²_shared)."""
    y = np.asarray(values, dtype=np.float64)
    k, n = y.shape
    if k < 2 or n < 2:
        raise ValueError(f"a variance decomposition needs 2 or more methods and seeds, got {k} × {n}")
    grand, by_method, by_seed = y.mean(), y.mean(axis=1, keepdims=True), y.mean(axis=0, keepdims=True)
    ms_seed = k * float(((by_seed - grand) ** 2).sum()) / (n - 1)
    ms_own = float(((y - by_method - by_seed + grand) ** 2).sum()) / ((k - 1) * (n - 1))
    return SeedComponents(max(0.0, (ms_seed - ms_own) / k), ms_own, k, n)


def format_p(p: float) -> str:
    """A p-value for people: 3 significant digits, "< 1e-300" below what a float holds apart from 0."""
    return "< 1e-300" if p < 1e-300 else f"{p:.3g}"


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """``mean ± t_{(1+c)/2, n−1}·s/√n`` over ``values`` (n ≥ 2)."""
    from scipy.stats import t

    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    half = t.ppf((1 + confidence) / 2, n - 1) * values.std(ddof=1) / math.sqrt(n)
    return float(values.mean() - half), float(values.mean() + half)


def bootstrap_interval(metric: str, results: Sequence[Examples], confidence: float = CONFIDENCE,
                       replicates: int = REPLICATES, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap over test examples of the mean over ``results`` (the seeds) of the metric."""
    check_paired(results, [])
    star = np.concatenate([np.mean([r.metric(metric, w) for r in results], axis=0)
                           for w in bootstrap_weights(results[0].n, replicates, seed)])
    return percentile_interval(star, confidence)


def cell_interval(metric: str, values: Sequence[float], results: Sequence[Examples] | None,
                  confidence: float = CONFIDENCE) -> tuple[float, float, str]:
    """``(low, high, kind)`` shown beside a cell's mean: the range of ``values`` (the seeds'
    metrics) when there are ≥ 2, else a bootstrap over the test examples of ``results``; NaNs
    and "" where neither is possible (one seed recorded without per-example results)."""
    if len(values) >= 2:
        return float(min(values)), float(max(values)), SEED_RANGE
    if results:
        return (*bootstrap_interval(metric, results, confidence), CI_EXAMPLES)
    return math.nan, math.nan, ""


def collapsed(metric: str, value: float, chance: float) -> bool:
    """Whether a seed's ``value`` is no better than ``chance`` by more than :data:`COLLAPSE_MARGIN`:
    accuracy ≤ chance + 10 points, error ≥ chance − 10 points; a loss (perplexity on the log
    scale) at least 90 % of a uniform guess's. False where chance is unknown (NaN)."""
    if math.isnan(chance) or math.isnan(value):
        return False
    if metric == "accuracy":
        return value <= chance + COLLAPSE_MARGIN
    if metric == "error":
        return value >= chance - COLLAPSE_MARGIN
    if metric == "perplexity":
        return math.log(value) >= (1 - COLLAPSE_MARGIN / 100) * math.log(chance)
    return value >= (1 - COLLAPSE_MARGIN / 100) * chance


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values: sorted ascending, ``p_(i)·(m − i)`` (i from 0), made
    monotone and capped at 1. Rejecting where adjusted < α keeps the family-wise error ≤ α."""
    m = len(p_values)
    order = np.argsort(p_values, kind="stable")
    adjusted, running = [0.0] * m, 0.0
    for i, k in enumerate(order):
        running = max(running, min(1.0, p_values[k] * (m - i)))
        adjusted[k] = running
    return adjusted
