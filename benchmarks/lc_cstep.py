"""The adaptive-codebook C step: exact 1-D k-means (ours) against scikit-learn KMeans(n_init=10).

KMeans(n_init=10) is what the authors' LC toolkit runs in its C step. For every (N, K) the
table gives both wall times, their ratio (sklearn / ours: how many times faster ours is) and
the distortion ratio (ours / sklearn: <= 1 means ours is never worse). Data: N(0, 1) weights,
seeded. sklearn cells whose N·K·n_init exceeds --sklearn-budget are skipped (they take
hours); say --sklearn-budget 0 to run them all.

Two independent exact 1-D k-means implementations are timed too when installed
(``pip install -e ".[bench]"``): ``ckwrap`` (the C++ of Ckmeans.1d.dp, Wang & Song 2011 / Song &
Zhong 2020, its O(K N log N) method) and ``kmeans1d`` (C++ of the O(K N) SMAWK algorithm of
Wu 1991 / Grønlund et al. 2017). Their columns are the time ratio to ours (> 1: ours is
faster) and must reach the same distortion (ratio 1.000): the context for how fast an exact
C step can be on this machine.

Beside the exact DP: Lloyd (``kmeans1d_lloyd``, sorted prefix sums), cold from quantile
centres and warm-started as in an LC run (from the centres of the previous C step, simulated as
Lloyd's centres of the weights before a change of 1 % of their spread), with time and distortion
ratio to the exact optimum (>= 1); and the peak memory each solver adds (Linux: VmHWM, reset per
call through /proc/self/clear_refs). These columns decide ``kmeans: auto`` (docs/methods/lc.md).

    python benchmarks/lc_cstep.py                    # N = 1e5, 1e6, 1e7; K = 2, 4, 16, 256
    python benchmarks/lc_cstep.py --n 1e7 1e8 --k 2 16 --sklearn-budget 1 --exact-budget 1
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans

from quantbench.methods.lc.kmeans1d import distortion, kmeans1d_exact, kmeans1d_lloyd


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith(key))


def measured(solve):
    """(result, seconds, MB of peak memory above the memory in use before the call; NaN off Linux)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the peak resident set (VmHWM) to the current one
        before = _status_mb("VmRSS")
    except OSError:
        before = None
    t0 = time.perf_counter()
    out = solve()
    seconds = time.perf_counter() - t0
    return out, seconds, (_status_mb("VmHWM") - before) if before is not None else float("nan")


def _exact_references() -> dict[str, object]:
    """Installed independent exact solvers: name -> f(x, k) returning (centroids, labels)."""
    refs: dict[str, object] = {}
    try:
        import ckwrap

        def _ckwrap(x, k):
            r = ckwrap.ckmeans(x, k, method="loglinear")
            return np.asarray(r.centers), np.asarray(r.labels)

        refs["ckwrap"] = _ckwrap
    except ImportError:
        pass
    try:
        import kmeans1d

        def _kmeans1d(x, k):
            labels, centroids = kmeans1d.cluster(x, k)
            return np.asarray(centroids), np.asarray(labels)

        refs["kmeans1d"] = _kmeans1d
    except ImportError:
        pass
    return refs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=float, nargs="+", default=[1e5, 1e6, 1e7])
    parser.add_argument("--k", type=int, nargs="+", default=[2, 4, 16, 256])
    parser.add_argument("--sklearn-budget", type=float, default=4e9, help="max N*K*n_init for sklearn (0: no limit)")
    parser.add_argument("--exact-budget", type=float, default=2e7, help="max N*K, exact references (0: no limit)")
    args = parser.parse_args()
    references = _exact_references()
    if not references:
        print("(ckwrap / kmeans1d not installed: pip install -e '.[bench]' adds their columns)")
    kmeans1d_exact(np.arange(10.0), 2)  # compile once, outside the timings
    rows = []
    for n in (int(v) for v in args.n):
        x = np.random.default_rng(0).standard_normal(n)
        for k in args.k:
            (c, labels), t_ours, mb_ours = measured(lambda x=x, k=k: kmeans1d_exact(x, k))
            d_ours = distortion(x, c, labels)
            row = {"N": n, "K": k, "ours_s": t_ours, "ours_MB": mb_ours, "sklearn_s": np.nan, "speedup": np.nan,
                   "distortion_ratio": np.nan}
            quantiles = np.quantile(x, (np.arange(k) + 0.5) / k)
            (c_cold, l_cold), t_cold, _ = measured(lambda x=x, q=quantiles: kmeans1d_lloyd(x, q))
            before = x - 0.01 * x.std() * np.random.default_rng(1).standard_normal(n)  # the weights one L step ago
            previous = kmeans1d_lloyd(before, quantiles)[0]
            (c_warm, l_warm), t_warm, mb_warm = measured(lambda x=x, p=previous: kmeans1d_lloyd(x, p))
            row.update(lloyd_cold_s=t_cold, lloyd_cold_ratio=distortion(x, c_cold, l_cold) / d_ours,
                       lloyd_warm_s=t_warm, lloyd_warm_ratio=distortion(x, c_warm, l_warm) / d_ours,
                       lloyd_MB=mb_warm)
            if not args.sklearn_budget or n * k * 10 <= args.sklearn_budget:
                km, row["sklearn_s"], _ = measured(lambda x=x, k=k: KMeans(k, n_init=10, random_state=0).fit(
                    x.reshape(-1, 1)))
                d_sk = distortion(x, km.cluster_centers_.ravel(), km.labels_)
                row.update(speedup=row["sklearn_s"] / t_ours, distortion_ratio=d_ours / d_sk)
            for name, solve in references.items():
                row[f"{name}_vs_ours"] = row[f"{name}_distortion_ratio"] = np.nan
                if not args.exact_budget or n * k <= args.exact_budget:
                    t0 = time.perf_counter()
                    c_ref, labels_ref = solve(x, k)
                    row[f"{name}_vs_ours"] = (time.perf_counter() - t0) / t_ours
                    row[f"{name}_distortion_ratio"] = distortion(x, c_ref, labels_ref) / d_ours
            rows.append(row)
            print(pd.DataFrame([row]).to_string(index=False, header=len(rows) == 1), flush=True)
    print()
    with pd.option_context("display.float_format", "{:.4g}".format):
        print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
