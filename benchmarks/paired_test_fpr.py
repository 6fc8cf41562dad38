"""How often the tables' paired test calls two methods different when they are not (issue #30).

A simulation shaped like the default grid's cells (360 test examples, about 85 % accuracy): seed
s is one reference network, example i has a difficulty ``θ_i``; a method run on it is right on
example i with probability ``σ(θ_i + u_s + e)``, where ``u_s`` (sd ``--network-sd``) is the
network's own effect, shared by both methods on seed s (they compress the same reference), and
``e`` (sd ``run_sd``) is the run's own effect: the method's randomness, drawn afresh for every
run of every method. Methods A and B are the same method, so any rejection is a false positive.

Per (seeds, run_sd) the table prints the rejection rate at α of :func:`quantbench.stats.
paired_difference` (seeds paired, examples and seeds resampled) over ``--trials`` pairs, its
binomial standard error, and the rate / α ratio (1.0: the test holds its level):

    python benchmarks/paired_test_fpr.py
    python benchmarks/paired_test_fpr.py --trials 1000 --seeds 1 3 5 10

With ``run_sd = 0`` the only noise is which examples a network gets right: the test holds α at
any number of seeds. With ``run_sd > 0`` one seed cannot see the run-to-run variance (an
interval over test examples is test-set noise only), so two copies of one method differ
"significantly" more often than α; more seeds bring the rate back towards α.
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from quantbench.stats import Examples, paired_difference

SPLIT = {"task": "simulated", "split": "test", "n": 0, "order_sha256": "0" * 64}


def run(rng: np.random.Generator, theta: np.ndarray, network: float, run_sd: float) -> Examples:
    p = 1 / (1 + np.exp(-(theta + network + rng.normal(0, run_sd))))
    right = (rng.random(len(theta)) < p).astype(np.float64)
    return Examples("classification", right, np.ones(len(theta)), {**SPLIT, "n": len(theta)})


def rejection_rate(seeds: int, run_sd: float, network_sd: float, examples: int, trials: int, alpha: float,
                   replicates: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    theta = rng.normal(2.2, 1.5, size=examples)  # about 85 % right on average
    rejections = 0
    for trial in range(trials):
        networks = rng.normal(0, network_sd, size=seeds)
        a = [run(rng, theta, u, run_sd) for u in networks]
        b = [run(rng, theta, u, run_sd) for u in networks]
        rejections += paired_difference("accuracy", a, b, replicates=replicates, seed=trial).p_value < alpha
    return rejections / trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 3, 5, 10])
    parser.add_argument("--run-sd", type=float, nargs="+", default=[0.0, 0.1, 0.3])
    parser.add_argument("--network-sd", type=float, default=0.3)
    parser.add_argument("--examples", type=int, default=360)
    parser.add_argument("--trials", type=int, default=400)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--replicates", type=int, default=1000)
    args = parser.parse_args()
    rows = []
    for run_sd in args.run_sd:
        for seeds in args.seeds:
            rate = rejection_rate(seeds, run_sd, args.network_sd, args.examples, args.trials, args.alpha,
                                  args.replicates, seed=seeds * 1000 + int(run_sd * 100))
            rows.append({"run_sd": run_sd, "seeds": seeds, "false-positive rate": round(rate, 3),
                         "± (binomial se)": round((rate * (1 - rate) / args.trials) ** 0.5, 3),
                         "rate / α": round(rate / args.alpha, 2)})
    print(f"{args.trials} pairs of one method with itself per row, {args.examples} test examples, "
          f"network sd {args.network_sd}, α = {args.alpha}, {args.replicates} bootstrap replicates\n")
    print(pd.DataFrame(rows).to_markdown(index=False))


if __name__ == "__main__":
    main()
