"""GPFQ on single Linear layers: time and peak memory against one matrix product.

For each layer (n_out × N) and m calibration rows at 4 bits, one fresh process accumulates the
Gram matrices over row batches of 1024 (so memory does not grow with m) and quantizes the layer.
The table gives seconds, the process's peak resident memory above its start, and the ratio to
one product X Wᵀ of the same shapes (m × N times N × n_out, timed in the same process): the
lower bound the method cannot beat. Rows with m = 4096 and m = 16384 show memory against m.

    python benchmarks/gpfq.py
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

import pandas as pd

SHAPES = [(512, 512), (1024, 1024), (4096, 1024)]
ROWS = [4096, 16384]
BATCH = 1024


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one(n_out: int, n: int, m: int) -> dict:
    import torch

    from quantbench.methods.gpfq import alphabet, gpfq_layer

    torch.set_num_threads(2)
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(n_out, n, generator=gen, dtype=torch.float64)
    grid, qmax = alphabet(w, 4, 1.0, False)
    start = rss_mb()
    t0 = time.perf_counter()
    g = torch.zeros(n, n, dtype=torch.float64)
    for _ in range(0, m, BATCH):
        x = torch.randn(BATCH, n, generator=gen, dtype=torch.float64)
        g += x.T @ x  # first layer: X~ = X, so G = H
    gpfq_layer(w, g, g, grid, qmax)
    seconds = time.perf_counter() - t0
    peak = rss_mb() - start
    x = torch.randn(m, n, generator=gen, dtype=torch.float64)
    t0 = time.perf_counter()
    x @ w.T
    matmul = time.perf_counter() - t0
    return {"layer": f"{n_out}x{n}", "m": m, "gpfq_s": seconds, "matmul_s": matmul, "ratio": seconds / matmul,
            "peak_MB": peak}


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--one":
        print(json.dumps(one(*map(int, sys.argv[2:]))))
        return
    rows = []
    for n_out, n in SHAPES:
        for m in ROWS:
            out = subprocess.run([sys.executable, __file__, "--one", str(n_out), str(n), str(m)],
                                 capture_output=True, text=True, check=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    with pd.option_context("display.float_format", "{:.4g}".format):
        print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
