"""The adaptive-codebook C step: exact 1-D k-means (ours) against scikit-learn KMeans(n_init=10).

KMeans(n_init=10) is what the authors' LC toolkit runs in its C step. For every (N, K) the
table gives both wall times, their ratio (sklearn / ours: how many times faster ours is) and
the distortion ratio (ours / sklearn: <= 1 means ours is never worse). Data: N(0, 1) weights,
seeded. sklearn cells whose N·K·n_init exceeds --sklearn-budget are skipped (they take
hours); say --sklearn-budget 0 to run them all.

    python benchmarks/lc_cstep.py                    # N = 1e5, 1e6, 1e7; K = 2, 4, 16, 256
    python benchmarks/lc_cstep.py --n 1e5 1e6 --k 2 16
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans

from methods.lc.kmeans1d import distortion, kmeans1d_exact


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=float, nargs="+", default=[1e5, 1e6, 1e7])
    parser.add_argument("--k", type=int, nargs="+", default=[2, 4, 16, 256])
    parser.add_argument("--sklearn-budget", type=float, default=4e9, help="max N*K*n_init for sklearn (0: no limit)")
    args = parser.parse_args()
    kmeans1d_exact(np.arange(10.0), 2)  # compile once, outside the timings
    rows = []
    for n in (int(v) for v in args.n):
        x = np.random.default_rng(0).standard_normal(n)
        for k in args.k:
            t0 = time.perf_counter()
            c, labels = kmeans1d_exact(x, k)
            t_ours = time.perf_counter() - t0
            d_ours = distortion(x, c, labels)
            row = {"N": n, "K": k, "ours_s": t_ours, "sklearn_s": np.nan, "speedup": np.nan,
                   "distortion_ratio": np.nan}
            if not args.sklearn_budget or n * k * 10 <= args.sklearn_budget:
                t0 = time.perf_counter()
                km = KMeans(k, n_init=10, random_state=0).fit(x.reshape(-1, 1))
                row["sklearn_s"] = time.perf_counter() - t0
                d_sk = distortion(x, km.cluster_centers_.ravel(), km.labels_)
                row.update(speedup=row["sklearn_s"] / t_ours, distortion_ratio=d_ours / d_sk)
            rows.append(row)
            print(pd.DataFrame([row]).to_string(index=False, header=len(rows) == 1), flush=True)
    print()
    with pd.option_context("display.float_format", "{:.4g}".format):
        print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
