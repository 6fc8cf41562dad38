"""Per-example results, intervals and paired tests (quantbench.report.stats), each held against a
closed form: the binomial (Wald) interval, the paired-difference normal interval, the t quantile,
Holm by hand, and the false-positive rate of the test on two methods that do not differ."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from quantbench.data import build_task
from quantbench.data.text import _lm_task
from quantbench.models import build_model
from quantbench.report.stats import (
    CI_EXAMPLES,
    EXAMPLES_ONLY,
    SEED_RANGE,
    SEED_T,
    SIGN_FLIP,
    Examples,
    ExamplesError,
    bootstrap_interval,
    bootstrap_weights,
    cell_interval,
    chance_level,
    collapsed,
    holm,
    paired_difference,
    seed_difference,
    split_identity,
    t_interval,
)

SPLIT = {"task": "toy", "split": "test", "n": 360, "order_sha256": "0" * 64}


def classification(correct, split=SPLIT) -> Examples:
    correct = np.asarray(correct, dtype=np.float64)
    return Examples("classification", correct, np.ones(len(correct)), {**split, "n": len(correct)},
                    np.where(correct > 0, 0.1, 2.0))


def test_the_examples_give_the_evaluated_metrics_and_survive_the_file(tmp_path):
    task = build_task("digits")
    torch.manual_seed(0)
    model = build_model("lenet300", input_shape=[1, 8, 8], num_classes=10)
    metrics, examples = task.evaluate_examples(model)
    assert metrics == task.evaluate(model)
    assert examples.n == len(task.test) == examples.split["n"]
    assert examples.metric("accuracy") == pytest.approx(metrics["accuracy"], abs=1e-12)
    assert examples.metric("error") == pytest.approx(metrics["error"], abs=1e-12)
    assert examples.metric("loss") == pytest.approx(metrics["loss"], rel=1e-6)
    back = Examples.load(examples.save(tmp_path / "examples.npz"))
    assert np.array_equal(back.numerator, examples.numerator) and back.split == examples.split
    # compact: float32 losses, a bitmap, and about 1 KiB of container (zip entries, the split as JSON)
    assert (tmp_path / "examples.npz").stat().st_size < 360 * 4 + 360 // 8 + 1024
    # the order is part of the identity: the same labels shuffled are another split
    ys = [y.numpy() for _, y in task.loader("test", 512)]
    assert split_identity("digits", "test", ys) == examples.split
    assert split_identity("digits", "test", [np.concatenate(ys)[::-1]]) != examples.split


def test_language_modelling_examples_are_blocks_of_summed_loss(tmp_path):
    text = list("to be or not to be, that is the question: " * 40)
    task = _lm_task("toy_lm", text[:1200], text[1200:], 16, None)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(task.num_classes, 8), torch.nn.Linear(8, task.num_classes))
    metrics, examples = task.evaluate_examples(model)
    assert metrics == task.evaluate(model)
    assert examples.kind == "language_modeling" and set(examples.denominator) == {16.0}
    assert examples.n == len(task.test) == examples.split["n"]
    assert examples.metric("perplexity") == pytest.approx(metrics["perplexity"], rel=1e-5)
    assert examples.metric("bits_per_token") == pytest.approx(metrics["bits_per_token"], rel=1e-5)
    back = Examples.load(examples.save(tmp_path / "e.npz"))
    assert back.metric("perplexity") == pytest.approx(metrics["perplexity"], rel=1e-5)
    with pytest.raises(ExamplesError, match="accuracy"):
        back.metric("accuracy")


def test_a_damaged_examples_file_is_refused_naming_it(tmp_path):
    bad = tmp_path / "examples.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ExamplesError, match="examples.npz"):
        Examples.load(bad)
    classification([1, 0, 1]).save(bad)
    with np.load(bad) as f:
        arrays = dict(f)
    arrays["n"] = np.array(5)
    np.savez(bad, **arrays)
    with pytest.raises(ExamplesError, match="examples.npz"):
        Examples.load(bad)


def test_bootstrap_weights_draw_n_examples_per_replicate():
    chunks = list(bootstrap_weights(50, 300, 0))
    counts = np.concatenate(chunks)
    assert counts.shape == (300, 50) and np.all(counts.sum(axis=1) == 50)
    assert counts.mean() == pytest.approx(1.0) and counts.var() == pytest.approx(1 - 1 / 50, abs=0.05)
    big = np.concatenate(list(bootstrap_weights(100_000, 80, 1)))  # in chunks of at most CHUNK_DRAWS draws
    assert big.shape == (80, 100_000) and np.all(big.sum(axis=1) == 100_000)
    assert np.array_equal(np.concatenate(list(bootstrap_weights(50, 300, 0))), counts)  # the same seed, the same draws


def test_the_interval_of_one_run_matches_the_binomial_interval():
    """Percentile bootstrap of an accuracy vs Wald's p ± 1.96·sqrt(p(1−p)/n)."""
    rng = np.random.default_rng(1)
    correct = rng.random(2000) < 0.9
    low, high = bootstrap_interval("accuracy", [classification(correct)])
    p = correct.mean()
    half = 100 * 1.959964 * math.sqrt(p * (1 - p) / len(correct))
    assert (high - low) / 2 == pytest.approx(half, rel=0.08)
    assert (low + high) / 2 == pytest.approx(100 * p, abs=0.15)


def test_the_paired_interval_matches_the_normal_interval_of_the_differences():
    """Paired difference of two classifiers on the same examples vs mean(d) ± 1.96·sd(d)/√n."""
    rng = np.random.default_rng(2)
    a = rng.random(3000) < 0.85
    b = np.where(rng.random(3000) < 0.8, a, rng.random(3000) < 0.8)  # mostly agrees with a
    d = paired_difference("accuracy", [classification(a)], [classification(b)])
    diffs = 100.0 * (a.astype(float) - b.astype(float))
    half = 1.959964 * diffs.std(ddof=1) / math.sqrt(len(diffs))
    assert d.difference == pytest.approx(diffs.mean(), abs=1e-9)
    assert (d.high - d.low) / 2 == pytest.approx(half, rel=0.1)
    assert d.n_seeds == 1 and d.n_examples == 3000


def test_identical_cells_do_not_differ_and_a_clearly_better_one_does():
    rng = np.random.default_rng(3)
    a = rng.random(360) < 0.9
    same = paired_difference("accuracy", [classification(a)], [classification(a)])
    assert same.difference == 0 and same.p_value == 1.0 and same.low == same.high == 0
    worse = np.where(rng.random(360) < 0.3, False, a)  # loses about 30 % of a's hits
    d = paired_difference("accuracy", [classification(a)], [classification(worse)])
    assert d.difference > 20 and d.low > 0 and d.p_value < 0.001


def test_cells_on_different_examples_are_not_paired():
    a = classification([1, 0, 1, 1])
    b = classification([1, 1, 1, 0], split={**SPLIT, "order_sha256": "1" * 64})
    with pytest.raises(ExamplesError, match="same examples in the same order"):
        paired_difference("accuracy", [a], [b])
    with pytest.raises(ExamplesError, match="same seeds"):
        paired_difference("accuracy", [a, a], [a])


def test_the_t_interval_over_seeds_is_the_textbook_one():
    low, high = t_interval([90.0, 91.0, 95.0])
    mean, sd = 92.0, math.sqrt(((2**2) + 1 + 9) / 2)
    assert (low + high) / 2 == pytest.approx(mean)
    assert (high - low) / 2 == pytest.approx(4.302653 * sd / math.sqrt(3), rel=1e-6)  # t(0.975, 2)
    # beside a cell's mean: the seeds' range (inside the metric's range whatever the seeds did) ...
    assert cell_interval("accuracy", [90.0, 10.0, 95.0], None) == (10.0, 95.0, SEED_RANGE)
    assert t_interval([90.0, 10.0, 95.0])[1] > 100  # (where a t interval over them passes 100 %)
    assert cell_interval("accuracy", [90.0, 91.0], None) == (90.0, 91.0, SEED_RANGE)
    # ... one seed: its interval over test examples
    assert cell_interval("accuracy", [90.0], [classification([1, 0, 1])])[2] == CI_EXAMPLES
    assert math.isnan(cell_interval("accuracy", [90.0], None)[0])


def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04 -> 0.01·3 = 0.03, 0.03·2 = 0.06, max(0.06, 0.04·1) = 0.06
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []


def test_the_paired_test_rejects_about_alpha_of_the_time_when_nothing_differs():
    """Two methods that do not differ: on every test example both are right with the same
    probability p_i (examples vary in difficulty), drawn independently. At α = 0.05 the paired
    bootstrap should reject about 5 % of 1,000 such pairs (binomial sd 0.7 %; the normal test on
    the same draws rejects 4.95 % of 20,000)."""
    rng = np.random.default_rng(4)
    difficulty = rng.beta(8, 1.5, size=360)  # mean accuracy about 84 %
    rejections = 0
    trials = 1000
    for trial in range(trials):
        a = rng.random(360) < difficulty
        b = rng.random(360) < difficulty
        d = paired_difference("accuracy", [classification(a)], [classification(b)], replicates=400, seed=trial)
        rejections += d.p_value < 0.05
    assert 0.03 <= rejections / trials <= 0.07


def test_a_difference_beyond_every_replicate_gets_a_p_value_holm_can_use():
    """30 points apart on 360 examples: no replicate crosses 0, the count stops at 2/(B + 1);
    the normal tail of the replicates' spread goes on (and agrees with the normal test)."""
    rng = np.random.default_rng(5)
    a = rng.random(360) < 0.9
    b = np.where(rng.random(360) < 0.35, False, a)
    d = paired_difference("accuracy", [classification(a)], [classification(b)])
    diffs = 100.0 * (a.astype(float) - b.astype(float))
    z = diffs.mean() / (diffs.std(ddof=1) / math.sqrt(len(diffs)))
    from scipy.stats import norm

    assert d.p_value < 2 / (d.replicates + 1) / 80  # significant even after Holm over 80 cases
    assert math.log(d.p_value) == pytest.approx(math.log(2 * norm.sf(z)), rel=0.15)


def _seeds(accuracies: list[float], n: int = 400) -> list[Examples]:
    """One result per seed, right on the first round(acc·n) examples."""
    return [classification(np.arange(n) < round(acc * n / 100)) for acc in accuracies]


def test_the_seed_is_the_unit_a_paired_t_over_the_seeds_as_scipy_computes_it():
    from scipy.stats import ttest_rel

    a_acc, b_acc = [90.0, 80.0, 93.0, 88.5], [88.0, 81.0, 90.0, 85.0]
    d = paired_difference("accuracy", _seeds(a_acc), _seeds(b_acc))
    ref = ttest_rel(a_acc, b_acc)
    assert (d.test, d.n_seeds, d.replicates) == (SEED_T, 4, 0)
    assert d.difference == pytest.approx(np.mean(np.subtract(a_acc, b_acc)), abs=1e-12)
    assert d.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    assert (d.low, d.high) == pytest.approx(tuple(ref.confidence_interval(0.95)), rel=1e-9)
    # by hand: d = (1, 2, 3): mean 2, sd 1, t = 2√3 on 2 df, p = 2·P(T_2 > 3.4641) = 0.07418
    assert seed_difference([1.0, 2.0, 3.0]).p_value == pytest.approx(0.0741799, abs=1e-6)


def test_differences_without_spread_get_the_exact_sign_flip_whose_floor_is_two_over_two_to_the_seeds():
    """Every seed loses exactly one example: t is not defined; the sign-flip p, enumerated here
    over every sign pattern, is 2/2^n: 0.25 at 3 seeds, never significant at α = 0.05 below 6."""
    for n in (2, 3, 6):
        d = paired_difference("accuracy", _seeds([90.0 + s for s in range(n)]),
                              _seeds([90.0 + s - 0.25 for s in range(n)]))
        diffs = np.full(n, d.difference)
        brute = np.mean([abs(np.mean(np.array(signs) * diffs)) >= abs(diffs.mean()) - 1e-12
                         for signs in itertools.product([-1, 1], repeat=n)])
        assert d.test == SIGN_FLIP and d.p_value == pytest.approx(brute) == pytest.approx(2 / 2**n)
        # its interval: the shifts it does not reject; below 6 seeds it rejects none (the whole range)
        assert (d.low, d.high) == ((0.25, 0.25) if n >= 6 else (-100.0, 100.0))
    same = paired_difference("accuracy", _seeds([90.0, 91.0]), _seeds([90.0, 91.0]))
    assert (same.test, same.p_value, same.difference) == (SIGN_FLIP, 1.0, 0.0)


def test_one_seed_is_example_noise_only_and_says_so():
    d = paired_difference("accuracy", _seeds([90.0]), _seeds([85.0]))
    assert d.test == EXAMPLES_ONLY and d.n_seeds == 1 and d.replicates > 0 and d.p_value < 0.05
    with pytest.raises(ExamplesError, match="at least 2 seeds"):
        seed_difference([1.0])


def test_a_seed_collapses_where_it_is_no_better_than_chance_by_the_margin():
    assert chance_level("accuracy", 10) == 10.0 and chance_level("perplexity", 65) == 65.0
    assert chance_level("error", 4) == 75.0 and chance_level("loss", 2) == pytest.approx(math.log(2))
    assert collapsed("accuracy", 20.0, 10.0) and not collapsed("accuracy", 20.01, 10.0)  # chance + 10 points
    assert collapsed("error", 80.0, 90.0) and not collapsed("error", 79.9, 90.0)
    # perplexity on the log scale: 65^0.9 = 42.86 is 90 % of a uniform guess's loss over 65 characters
    assert collapsed("perplexity", 43.0, 65.0) and not collapsed("perplexity", 42.0, 65.0)
    assert not collapsed("accuracy", 5.0, math.nan)  # chance unknown (a run recorded before it was tagged)


def test_a_difference_of_accuracies_keeps_its_interval_inside_minus_100_to_100():
    d = seed_difference([90.0, 0.0, 85.0], metric="accuracy")  # one seed collapsed: a t interval would pass 100
    assert d.high == 100.0 and d.low > -100 and d.low == seed_difference([90.0, 0.0, 85.0]).low
    assert seed_difference([90.0, 0.0, 85.0], metric="perplexity").high > 100  # unbounded metrics are left alone
