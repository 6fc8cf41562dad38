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
  sign-flip permutation over the seeds, whose smallest p is ``2/2^n`` (0.25 at 3 seeds:
  :data:`SIGN_FLIP`). Example noise alone is not evidence about another seed: with one seed
  only, a paired bootstrap over the test examples (:data:`EXAMPLES_ONLY`, labelled as such): a
  replicate draws the examples with replacement (the same draw for both cells), the interval is
  the replicates' percentiles and the two-sided p-value
  ``2·(min(#{d* < 0}, #{d* > 0}) + #{d* = 0}/2 + 1)/(B + 1)`` (at most 1; ties at 0 half on each
  side), or, where fewer than :data:`RESOLVED_TAIL` replicates fall beyond 0 and the count
  cannot resolve it, the normal tail ``2·Φ(−|d|/sd(d*))`` of the replicates' spread instead.
- **Several comparisons** (:func:`holm`): Holm's step-down adjustment of a family's p-values
  (family-wise error at most α).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from quantbench.errors import ExamplesError

CONFIDENCE = 0.95
ALPHA = 0.05
REPLICATES = 2000
RESOLVED_TAIL = 5  # fewer replicates than this beyond 0: the p-value is the normal approximation
CHUNK_DRAWS = 4_000_000  # example draws per chunk of replicates: bounds the memory of a bootstrap
EXAMPLES_FILE = "examples.npz"
SEED_RANGE = "range of the seeds"
CI_EXAMPLES = "bootstrap over test examples"
COLLAPSE_MARGIN = 10.0  # accuracy/error points from chance; for a loss, 10 % of a uniform guess's
SEED_T = "paired t over seeds"  # the tests of a difference (Difference.test)
SIGN_FLIP = "exact sign-flip over seeds"
EXAMPLES_ONLY = "paired bootstrap over test examples (one seed: example noise only)"


@dataclass(frozen=True)
class Examples:
    """Per-example outcomes of one evaluation. ``numerator``/``denominator``: per example
    (classification: ``correct`` in 0/1 and 1; language modelling: per block, the summed loss in
    nats and the token count); ``loss``: per-example cross-entropy (classification only, else
    None); ``split``: what was evaluated, in order (two results are paired only when equal)."""

    kind: str  # "classification" or "language_modeling"
    numerator: np.ndarray
    denominator: np.ndarray
    split: dict
    loss: np.ndarray | None = None

    @property
    def n(self) -> int:
        return len(self.numerator)

    def metric(self, name: str, weights: np.ndarray | None = None) -> np.ndarray | float:
        """The task metric ``name`` from the examples (``weights``: one row of counts per bootstrap
        replicate, shape (B, n); None: every example once, a float)."""
        num, den = self._terms(name)
        if weights is None:
            return float(metric_from_ratio(name, np.array([num.sum() / den.sum()]))[0])
        return metric_from_ratio(name, (weights @ num) / (weights @ den))

    def _terms(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        num, den = self.numerator.astype(np.float64), self.denominator.astype(np.float64)
        if self.kind == "classification" and name == "loss":
            if self.loss is None:
                raise ExamplesError("these per-example results carry no per-example loss")
            return self.loss.astype(np.float64), den
        if self.kind == "classification" and name not in ("accuracy", "error"):
            raise ExamplesError(f"no per-example form of the classification metric {name!r}")
        if self.kind == "language_modeling" and name not in ("perplexity", "loss", "bits_per_token"):
            raise ExamplesError(f"no per-example form of the language-modelling metric {name!r}")
        return num, den

    def save(self, path: str | Path) -> Path:
        """``path`` (an ``.npz``): correctness as a bitmap, losses as float32, counts as int32."""
        arrays = {"split": np.array(json.dumps(self.split, sort_keys=True)), "kind": np.array(self.kind)}
        if self.kind == "classification":
            arrays["correct_bits"] = np.packbits(self.numerator.astype(bool))
            arrays["n"] = np.array(self.n)
            if self.loss is not None:
                arrays["loss"] = self.loss.astype(np.float32)
        else:
            arrays["loss_sum"] = self.numerator.astype(np.float32)
            arrays["tokens"] = self.denominator.astype(np.int32)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        Path(path).write_bytes(buffer.getvalue())
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> Examples:
        """Read what :meth:`save` wrote; an :class:`ExamplesError` naming the file otherwise."""
        try:
            with np.load(path, allow_pickle=False) as f:
                kind, split = str(f["kind"]), json.loads(str(f["split"]))
                if kind == "classification":
                    n = int(f["n"])
                    correct = np.unpackbits(f["correct_bits"], count=n).astype(np.float64)
                    loss = f["loss"].astype(np.float64) if "loss" in f else None
                    out = cls(kind, correct, np.ones(n), split, loss)
                elif kind == "language_modeling":
                    out = cls(kind, f["loss_sum"].astype(np.float64), f["tokens"].astype(np.float64), split)
                else:
                    raise ValueError(f"unknown kind {kind!r}")
        except (OSError, EOFError, zipfile.BadZipFile, KeyError, ValueError, TypeError) as e:  # truncated, garbled
            raise ExamplesError(f"{path}: not a per-example results file ({EXAMPLES_FILE}): "
                                f"{type(e).__name__}: {e}") from None
        if not isinstance(split, dict) or split.get("n") != out.n or len(out.denominator) != out.n:
            raise ExamplesError(f"{path}: its split says {split.get('n') if isinstance(split, dict) else split!r} "
                                f"examples, its arrays hold {out.n}")
        return out


def split_identity(task: str, split: str, targets: Iterable) -> dict:
    """What an evaluation saw: ``task``, ``split``, ``n`` (examples or blocks) and the sha256 of
    the targets in order (``targets``: one array-like per batch; the first axis counts)."""
    digest, n = hashlib.sha256(), 0
    for t in targets:
        t = np.ascontiguousarray(np.asarray(t, dtype=np.int64))
        digest.update(t.tobytes())
        n += len(t)
    return {"task": task, "split": split, "n": n, "order_sha256": digest.hexdigest()}


def metric_from_ratio(name: str, ratio: np.ndarray) -> np.ndarray:
    """``f(Σ num / Σ den)`` for the metric ``name`` (see the module docstring)."""
    if name == "error":
        return 100.0 - 100.0 * ratio
    if name == "accuracy":
        return 100.0 * ratio
    if name == "perplexity":
        return np.exp(np.minimum(ratio, 700.0))
    if name == "bits_per_token":
        return ratio / math.log(2)
    return ratio  # loss


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
    ``replicates``: the bootstrap's (0 for a test over seeds)."""

    difference: float
    low: float
    high: float
    p_value: float
    n_seeds: int
    n_examples: int
    replicates: int
    confidence: float = CONFIDENCE
    test: str = SEED_T


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
    return Difference(per_seed[0], low, high, float(p), 1, x.n, len(star), confidence, EXAMPLES_ONLY)


BOUNDED = {"accuracy": 100.0, "error": 100.0}  # metrics on [0, B]: a difference lies in [−B, B]


def seed_difference(per_seed: Sequence[float], n_examples: int = 0, confidence: float = CONFIDENCE,
                    metric: str = "") -> Difference:
    """The seed-level test of ``d_s`` (n ≥ 2 seeds' paired differences): the paired t test,
    ``t = d̄ / (s_d/√n)`` on n − 1 degrees of freedom with its interval; where every ``d_s`` is
    the same (s_d = 0, up to rounding), the exact sign-flip permutation test, ``p = #{ε ∈ {±1}^n : |mean(ε·d)| ≥
    |d̄|} / 2^n`` (1 when d̄ = 0, else 2/2^n) with the interval [d̄, d̄]. A ``metric`` on [0, B]
    (:data:`BOUNDED`) keeps the interval inside [−B, B], where every difference lies."""
    from scipy.stats import t

    d = np.asarray(per_seed, dtype=np.float64)
    n, mean = len(d), float(d.mean())
    if n < 2:
        raise ExamplesError(f"a test over seeds needs at least 2 seeds, got {n}")
    if np.allclose(d, d[0], rtol=1e-9, atol=1e-12):  # equal up to rounding (one example each: 100/n apiece)
        return Difference(mean, mean, mean, 1.0 if mean == 0 else 2.0 / 2**n, n, n_examples, 0, confidence,
                          SIGN_FLIP)
    low, high = t_interval(d, confidence)
    p = float(2 * t.sf(abs(mean) / (d.std(ddof=1) / math.sqrt(n)), n - 1))
    bound = BOUNDED.get(metric, math.inf)
    return Difference(mean, max(low, -bound), min(high, bound), p, n, n_examples, 0, confidence, SEED_T)


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


def chance_level(metric: str, classes: int) -> float:
    """The metric of a uniform guess over ``classes`` (a task's classes, or an LM's vocabulary):
    accuracy 100/K, error 100 − 100/K, perplexity K, loss ln K, bits per token log2 K."""
    return {"accuracy": 100.0 / classes, "error": 100.0 - 100.0 / classes, "perplexity": float(classes),
            "loss": math.log(classes), "bits_per_token": math.log2(classes)}.get(metric, math.nan)


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
