"""Margins, power and where the variance comes from (quantbench.report.stats), each held against an
independent reference: scipy's one-sample t tests, sign patterns enumerated by hand, a Monte
Carlo of scipy's t test for the power, and plain loops over the two-way layout's equations."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.stats import ttest_1samp

from quantbench.report.stats import (
    EXAMPLES_ONLY,
    MARGINS,
    SEED_T,
    SIGN_FLIP,
    Examples,
    check_margin,
    detectable_difference,
    margin_in_units,
    paired_difference,
    seed_components,
    seed_difference,
    seeds_needed,
    sign_flip_seeds,
    t_power,
    tost,
)

D = [1.0, 2.5, 0.5, 2.0]  # four seeds' paired differences A − B


@pytest.mark.parametrize("bound", [-1.0, 0.0, 0.8, 3.0])
def test_one_sided_p_values_are_scipys_t_tests_of_the_shifted_differences(bound):
    d = seed_difference(D)
    assert d.test == SEED_T
    shifted = np.subtract(D, bound)
    assert d.p_below(bound) == pytest.approx(ttest_1samp(shifted, 0, alternative="less").pvalue, rel=1e-9)
    assert d.p_above(bound) == pytest.approx(ttest_1samp(shifted, 0, alternative="greater").pvalue, rel=1e-9)


def test_tost_is_the_larger_of_scipys_two_one_sided_tests():
    d = seed_difference(D)
    for m in (0.5, 2.0, 4.0):
        lower = ttest_1samp(np.add(D, m), 0, alternative="greater").pvalue  # H0: Δ ≤ −m
        upper = ttest_1samp(np.subtract(D, m), 0, alternative="less").pvalue  # H0: Δ ≥ m
        assert tost(d, m) == pytest.approx(max(lower, upper), rel=1e-9)
    # by hand: mean 1.5, sd 0.9129, se 0.4564; m = 4: t = (1.5 − 4)/0.4564 = −5.477 on 3 df, p = 0.00598
    assert tost(d, 4.0) == pytest.approx(0.005978, abs=2e-5)


def test_the_sign_flips_one_sided_p_is_the_share_of_sign_patterns_as_far_out():
    n = 4
    d = seed_difference([-0.5] * n)  # every seed 0.5 worse: no spread
    assert d.test == SIGN_FLIP
    for bound in (0.0, 0.3, -0.2, -1.0):
        shifted = np.full(n, -0.5 - bound)
        brute = np.mean([np.mean(np.array(signs) * shifted) <= shifted.mean() + 1e-12
                         for signs in itertools.product([-1, 1], repeat=n)])
        assert d.p_below(bound) == pytest.approx(brute if shifted[0] < 0 else 1.0)
    assert d.p_below(0.0) == 1 / 16 and d.p_above(0.0) == 1.0


def test_the_fewest_seeds_a_sign_flip_can_call_a_difference_with():
    for alpha, sided in ((0.05, 2), (0.05, 1), (0.01, 2), (0.0625, 2)):
        smallest = next(n for n in itertools.count(1) if sided / 2**n < alpha)
        assert sign_flip_seeds(alpha, sided) == smallest
    assert sign_flip_seeds(0.05) == 6


def test_one_seed_tests_its_bound_on_the_bootstrap_replicates():
    n = 400
    a = Examples("classification", (np.arange(n) % 10 != 0).astype(float), np.ones(n), {"n": n})
    b = Examples("classification", (np.arange(n) % 5 != 0).astype(float), np.ones(n), {"n": n})
    d = paired_difference("accuracy", [a], [b])  # 90 % vs 80 %: +10 points
    assert d.test == EXAMPLES_ONLY and d.star is not None
    from scipy.stats import norm

    assert d.p_below(5.0) > 0.99  # 10 points is not below 5 ...
    # ... it is surely above: hardly a replicate is at or below 5, so the normal tail of their spread
    assert np.sum(d.star <= 5.0) < 5 and d.p_above(5.0) == pytest.approx(norm.sf(5.0 / d.star.std(ddof=1)))
    share = (np.sum(d.star > 12.0) + np.sum(d.star == 12.0) / 2 + 1) / (len(d.star) + 1)
    assert d.p_below(12.0) == pytest.approx(share)  # enough replicates beyond: their share
    assert d.p_below(10.0) == pytest.approx(0.5, abs=0.05)


def test_power_is_what_scipys_t_test_achieves_in_a_monte_carlo():
    rng = np.random.default_rng(0)
    for n, effect, sd in ((5, 1.0, 1.0), (3, 2.0, 0.8), (10, 0.5, 1.0)):
        trials = 4000
        hits = sum(ttest_1samp(rng.normal(effect, sd, n), 0).pvalue < 0.05 for _ in range(trials))
        mc = hits / trials
        assert t_power(effect, sd, n) == pytest.approx(mc, abs=4 * math.sqrt(mc * (1 - mc) / trials) + 1e-3)


def test_the_detectable_difference_and_the_seeds_needed_invert_the_power():
    sd = 1.3
    for n in (2, 3, 5, 10):
        mdd = detectable_difference(sd, n)
        assert t_power(mdd, sd, n) == pytest.approx(0.8, abs=1e-6)
        assert t_power(0.9 * mdd, sd, n) < 0.8
    for effect in (0.5, 1.0, 3.0, 10.0):
        n = seeds_needed(effect, sd)
        assert t_power(effect, sd, n) >= 0.8
        assert n == 2 or t_power(effect, sd, n - 1) < 0.8  # the fewest
    # the brief's target: a difference of 3 seed-sds is found at 10 seeds with ≥ 80 % power
    assert seeds_needed(3.0, 1.0) <= 10 and t_power(3.0, 1.0, 10) >= 0.8
    # no spread: the sign-flip decides; below its 6 seeds nothing is detectable
    assert (detectable_difference(0.0, 3), detectable_difference(0.0, 6)) == (math.inf, 0.0)
    assert seeds_needed(1.0, 0.0) == 6 and seeds_needed(0.0, 1.0) is None


def test_margins_are_points_or_a_fraction_of_the_comparator_and_bad_ones_are_refused():
    assert MARGINS["accuracy"] == 0.5 and MARGINS["perplexity"] == 0.01
    assert margin_in_units("accuracy", 0.5, 92.0) == 0.5
    assert margin_in_units("perplexity", 0.01, 250.0) == pytest.approx(2.5)
    for bad in (-0.1, math.nan, math.inf):
        with pytest.raises(ValueError, match="tables.margins.accuracy: .* is not a margin"):
            check_margin(bad, "tables.margins.accuracy")
    assert check_margin(0, "x") == 0.0


def _components_by_hand(y: list[list[float]]) -> tuple[float, float]:
    """The two-way layout's mean squares with plain loops, from the definitions."""
    k, n = len(y), len(y[0])
    grand = sum(sum(row) for row in y) / (k * n)
    method = [sum(row) / n for row in y]
    seed = [sum(y[m][s] for m in range(k)) / k for s in range(n)]
    ms_seed = k * sum((seed[s] - grand) ** 2 for s in range(n)) / (n - 1)
    ms_own = sum((y[m][s] - method[m] - seed[s] + grand) ** 2 for m in range(k) for s in range(n)) / ((k - 1) * (n - 1))
    return max(0.0, (ms_seed - ms_own) / k), ms_own


def test_variance_components_are_the_two_way_layouts_mean_squares():
    y = [[90.0, 85.0, 88.0], [80.0, 76.0, 79.5], [70.0, 66.0, 71.0]]  # seed 1 low for every method
    parts = seed_components(np.array(y))
    assert (parts.shared, parts.own) == pytest.approx(_components_by_hand(y), rel=1e-12)
    assert (parts.methods, parts.seeds) == (3, 3) and parts.shared > parts.own
    # a method's shift moves no component; a seed's shift (all methods) moves only the shared one
    shifted = np.array(y) + np.array([[5.0], [0.0], [-3.0]])
    assert (seed_components(shifted).shared, seed_components(shifted).own) == pytest.approx((parts.shared, parts.own))
    with pytest.raises(ValueError, match="2 or more methods and seeds"):
        seed_components(np.ones((3, 1)))


def test_variance_components_recover_known_ones_on_average():
    rng = np.random.default_rng(1)
    shared, own = [], []
    for _ in range(3000):
        y = np.arange(5.0)[:, None] + rng.normal(0, 2.0, (1, 4)) + rng.normal(0, 1.0, (5, 4))  # σ² 4 and 1
        parts = seed_components(y)
        shared.append(parts.shared)
        own.append(parts.own)
    assert np.mean(own) == pytest.approx(1.0, abs=0.05)
    assert np.mean(shared) == pytest.approx(4.0, rel=0.1)
