"""How often the tables' paired test calls two methods different when they are not, and how often
it finds a real difference (issues #30, #39).

A simulation shaped like the default grid's cells (359 test examples, about 85 % accuracy): seed
s is one reference network, example i has a difficulty ``θ_i``; a method run on it is right on
example i with probability ``σ(θ_i + u_s + e)``, where ``u_s`` (sd ``--network-sd``) is the
network's own effect, shared by both methods on seed s (they compress the same reference), and
``e`` is the run's own effect, drawn afresh for every run of every method. Three regimes:

* ``examples``: e = 0, the only noise is which examples a run gets right;
* ``shifts``: e ~ N(0, ``--run-sd``), a shift per run (a lucky or unlucky run);
* ``collapse``: as ``shifts`` at a quarter of the sd, and each run collapses with probability
  ``--collapse`` (then right with probability 0.1, chance on 10 classes).

Methods A and B are the same method, so every rejection is a false positive; the table prints,
per regime and number of seeds, the rejection rate at α of :func:`quantbench.report.stats.paired_difference`
(what bold, ``compare`` and the claims use: a paired t over the seeds, the exact sign-flip where
the differences have no spread, a bootstrap over test examples at one seed) over ``--trials``
pairs, with its Monte-Carlo standard error; and, per regime, the rate of the one-sided test of
"A worse than B" (``Difference.p_below(0)``): the test of the bold (multiple comparisons with the
best, at α/(k − 1)) and of ``A >= B`` claims, here at its boundary (a margin m shifts every
seed's difference by m, and the test sees only those differences, so the rate at Δ = −m is the
rate at Δ = 0 shown). ``power``: the rate at which it finds A better when A's runs are shifted
by 3 seed-sds (3 · run sd in logits) — the target is ≥ 80 % at 10 seeds.

    python benchmarks/paired_test_fpr.py
    python benchmarks/paired_test_fpr.py --trials 2000 --seeds 1 3 5 10
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import pandas as pd

from quantbench.report.stats import Examples, paired_difference

SPLIT = {"task": "simulated", "split": "test", "n": 0, "order_sha256": "0" * 64}
REGIMES = ("examples", "shifts", "collapse")


def run(rng: np.random.Generator, theta: np.ndarray, logit: float, collapsed: bool = False) -> Examples:
    p = np.full(len(theta), 0.1) if collapsed else 1 / (1 + np.exp(-(theta + logit)))
    right = (rng.random(len(theta)) < p).astype(np.float64)
    return Examples("classification", right, np.ones(len(theta)), {**SPLIT, "n": len(theta)})


def method_runs(rng: np.random.Generator, theta: np.ndarray, networks: np.ndarray, regime: str, run_sd: float,
                collapse: float, shift: float = 0.0) -> list[Examples]:
    """One run of a method per seed, in ``regime``; ``shift``: the method's own effect (logits)."""
    sd = {"examples": 0.0, "shifts": run_sd, "collapse": run_sd / 4}[regime]
    return [run(rng, theta, u + shift + rng.normal(0, sd), regime == "collapse" and rng.random() < collapse)
            for u in networks]


def rejection_rate(regime: str, seeds: int, args: argparse.Namespace, shift: float = 0.0) -> tuple[float, float]:
    """How often the two-sided test rejects at α, with A better when ``shift`` > 0 (power) or any
    way (null); and how often the one-sided test calls A worse at α."""
    rng = np.random.default_rng([REGIMES.index(regime), seeds, int(shift > 0)])
    theta = rng.normal(2.2, 1.5, size=args.examples)  # about 85 % right on average
    rejections = worse = 0
    for trial in range(args.trials):
        networks = rng.normal(0, args.network_sd, size=seeds)
        a = method_runs(rng, theta, networks, regime, args.run_sd, args.collapse, shift)
        b = method_runs(rng, theta, networks, regime, args.run_sd, args.collapse)
        d = paired_difference("accuracy", a, b, replicates=args.replicates, seed=trial)
        rejections += d.p_value < args.alpha and (shift == 0 or d.difference > 0)
        worse += d.p_below(0.0) < args.alpha
    return rejections / args.trials, worse / args.trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 3, 5, 10])
    parser.add_argument("--run-sd", type=float, default=0.3, help="sd of a run's shift in logits (shifts regime)")
    parser.add_argument("--collapse", type=float, default=0.2, help="probability that a run collapses")
    parser.add_argument("--network-sd", type=float, default=0.3)
    parser.add_argument("--examples", type=int, default=359)
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--replicates", type=int, default=1000, help="bootstrap replicates (one seed)")
    args = parser.parse_args()
    rows = []
    for regime in REGIMES:
        two, one = {"regime": regime, "test": "two-sided"}, {"regime": regime, "test": "one-sided (A worse)"}
        for seeds in args.seeds:
            column = f"{seeds} seed{'s' if seeds > 1 else ''}"
            two[column], one[column] = rejection_rate(regime, seeds, args)
        rows += [two, one]
    power = {"regime": "power: shifts, A 3 seed-sds better", "test": "two-sided"}
    for seeds in args.seeds:
        power[f"{seeds} seed{'s' if seeds > 1 else ''}"] = rejection_rate("shifts", seeds, args, 3 * args.run_sd)[0]
    rows.append(power)
    mc = math.sqrt(args.alpha * (1 - args.alpha) / args.trials)
    print(f"rejection rate at α = {args.alpha} over {args.trials} pairs of one method with itself; "
          f"{args.examples} test examples, network sd {args.network_sd}, run sd {args.run_sd} (logits), "
          f"collapse {args.collapse}; Monte-Carlo standard error at α: {mc:.3f} (target: ≤ α + 2·MC = "
          f"{args.alpha + 2 * mc:.3f}; power ≥ 0.80 at 10 seeds)\n")
    print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".3f"))


if __name__ == "__main__":
    main()
