"""GPTQ and GPFQ on single Linear layers: ours against Brevitas, and against one matrix product.

For each layer (n_out × n_in) and m calibration rows X (float32, Gaussian, in batches of 1024) at
``--bits``, in one process and on ``--threads`` torch threads:

* ours: the statistics as ``quantize_network`` accumulates them (float64; GPTQ H = 2 XᵀX, GPFQ
  G = X̃ᵀX and H = X̃ᵀX̃ with X̃ = X, as for a first layer), then ``gptq_layer`` / ``gpfq_layer``;
* Brevitas: a ``QuantLinear`` whose weight quantizer is our grid (the matched settings of
  ``benchmarks/ptq_peer.py``) inside ``gptq_mode`` / ``gpfq_mode``: the calibration batches
  through ``q.model`` (its hooks accumulate H, or G and H, in float32), then ``q.update()``;
* baseline: one product X Wᵀ of the same shapes in float32 (the layer's own forward over the
  calibration rows; the float64 product beside it).

Times are seconds, "stats" the accumulation and "solve" the per-layer method; ratios are totals.
``same %`` is the share of weights both implementations put on the same level (they differ by
float32 against float64 rounding only). The best of ``--repeat`` runs is kept.

    python benchmarks/ptq.py
    python benchmarks/ptq.py --shapes 256x256 1024x1024 --rows 2048 --csv ptq_speed.csv
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
from torch import nn

BATCH = 1024


def best_of(repeat: int, fn: Callable[[], object]) -> tuple[object, float]:
    """``fn()``'s result and its best wall time over ``repeat`` runs."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def fastest(repeat: int, fn: Callable[[], tuple[torch.Tensor, float, float]]) -> tuple[torch.Tensor, float, float]:
    """Of ``repeat`` runs of ``fn`` (weights, stats s, solve s), the one with the least total time."""
    return min((fn() for _ in range(repeat)), key=lambda r: r[1] + r[2])


def ours_gptq(w: torch.Tensor, batches: list[torch.Tensor], bits: int) -> tuple[torch.Tensor, float, float]:
    from quantbench.methods.gptq import gptq_layer
    from quantbench.methods.uniform import uniform_grid

    t0 = time.perf_counter()
    n = w.shape[1]
    h = torch.zeros(n, n, dtype=torch.float64)
    for x in batches:
        rows = x.double()
        h.addmm_(rows.T, rows, alpha=2.0)
    t1 = time.perf_counter()
    grid = uniform_grid(w, 2**bits)
    codes = gptq_layer(w, h, grid, 2**bits - 1)
    values = torch.from_numpy(grid.scale) * (codes.double() - torch.from_numpy(grid.zero))
    return values, t1 - t0, time.perf_counter() - t1


def ours_gpfq(w: torch.Tensor, batches: list[torch.Tensor], bits: int) -> tuple[torch.Tensor, float, float]:
    from quantbench.methods.gpfq import alphabet, gpfq_layer

    t0 = time.perf_counter()
    n = w.shape[1]
    g = torch.zeros(n, n, dtype=torch.float64)
    h = torch.zeros(n, n, dtype=torch.float64)
    for x in batches:
        rows = rows_t = x.double()  # a first layer: X̃ = X
        g += rows_t.T @ rows
        h += rows_t.T @ rows_t
    t1 = time.perf_counter()
    grid, qmax = alphabet(w, 2**bits, 1.0, False)
    codes = gpfq_layer(w, g, h, grid, qmax)
    values = torch.from_numpy(grid.scale) * (codes.double() - torch.from_numpy(grid.zero))
    return values, t1 - t0, time.perf_counter() - t1


def brevitas_layer(method: str, w: torch.Tensor, batches: list[torch.Tensor], bits: int
                   ) -> tuple[torch.Tensor, float, float]:
    """Brevitas' GPTQ or GPFQ on one QuantLinear: (dequantized weights, stats s, solve s)."""
    from brevitas.graph.gpfq import gpfq_mode
    from brevitas.graph.gptq import gptq_mode
    from ptq_peer import brevitas_quantizer, to_brevitas  # this folder (the script's) is on the path

    layer = nn.Linear(w.shape[1], w.shape[0], bias=False)
    with torch.no_grad():
        layer.weight.copy_(w)
    model = to_brevitas(nn.Sequential(layer), brevitas_quantizer("minmax" if method == "gptq" else "alphabet", bits,
                                                                 False))
    mode = gptq_mode if method == "gptq" else gpfq_mode
    with torch.no_grad(), mode(model, use_quant_activations=False) as q:
        t0 = time.perf_counter()
        for x in batches:
            q.model(x)
        t1 = time.perf_counter()
        q.update()
        t2 = time.perf_counter()
    return model[0].quant_weight().value.detach().double(), t1 - t0, t2 - t1


def one(n_out: int, n_in: int, m: int, bits: int, repeat: int, methods: tuple[str, ...] = ("gptq", "gpfq")) -> dict:
    gen = torch.Generator().manual_seed(0)
    w = 0.05 * torch.randn(n_out, n_in, generator=gen)
    x = torch.randn(m, n_in, generator=gen)
    batches = list(torch.split(x, BATCH))
    _, matmul = best_of(repeat, lambda: x @ w.T)
    xd, wd = x.double(), w.double()
    _, matmul64 = best_of(repeat, lambda: xd @ wd.T)
    row = {"layer": f"{n_out}x{n_in}", "m": m, "bits": bits, "matmul_s": matmul, "matmul64_s": matmul64}
    for method, ours_fn in (("gptq", ours_gptq), ("gpfq", ours_gpfq)):
        if method not in methods:
            continue
        ours_w, ours_stats, ours_solve = fastest(repeat, lambda f=ours_fn: f(w.double(), batches, bits))
        br_w, br_stats, br_solve = fastest(repeat, lambda k=method: brevitas_layer(k, w, batches, bits))
        step = (ours_w.max() - ours_w.min()) / (2**bits - 1)
        ours_t, br_t = ours_stats + ours_solve, br_stats + br_solve
        row.update({f"{method}_ours_stats_s": ours_stats, f"{method}_ours_solve_s": ours_solve,
                    f"{method}_brevitas_stats_s": br_stats, f"{method}_brevitas_solve_s": br_solve,
                    f"{method}_ours/matmul": ours_t / matmul, f"{method}_ours/brevitas": ours_t / br_t,
                    f"{method}_solve_ours/brevitas": ours_solve / br_solve,
                    f"{method}_same_%": 100 * float(((ours_w - br_w).abs() < 1e-3 * step).double().mean())})
    return row


def markdown(part: pd.DataFrame) -> str:
    """A table as Markdown: times and ratios to 3 significant digits, ``same_%`` to 2 decimals."""
    text = part.map(lambda v: f"{v:.3g}" if isinstance(v, float) else v)
    text["same_%"] = part["same_%"].map("{:.2f}".format)
    return text.to_markdown(index=False, disable_numparse=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["256x256", "1024x1024", "1024x4096"],
                        help="layers as n_out x n_in")
    parser.add_argument("--rows", type=int, default=4096, help="calibration rows m")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--methods", nargs="+", default=["gptq", "gpfq"], choices=["gptq", "gpfq"])
    parser.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    parser.add_argument("--csv", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    methods = tuple(args.methods)
    one(32, 32, BATCH, args.bits, 1, methods)  # warm up: imports, Brevitas' injectors, first kernels
    rows = []
    for shape in args.shapes:
        n_out, n_in = map(int, shape.split("x"))
        rows.append(one(n_out, n_in, args.rows, args.bits, args.repeat, methods))
        print(rows[-1], flush=True)
    df = pd.DataFrame(rows)
    print(f"\n{args.threads} thread(s), {args.bits} bits, m = {args.rows}")
    with pd.option_context("display.float_format", "{:.3g}".format, "display.width", 250,
                           "display.max_columns", 40):
        for method in methods:
            cols = ["layer", "m", "matmul_s", "matmul64_s"] + [c for c in df.columns if c.startswith(method)]
            print(f"\n{method.upper()}")
            part = df[cols].rename(columns=lambda c, p=f"{method}_": c.removeprefix(p))
            print(markdown(part) if args.markdown else part.to_string(index=False))
        if "gptq" in methods:
            met = all(df["gptq_ours/brevitas"] <= 1.0)
            print(f"\ntarget (our GPTQ time <= Brevitas' on every layer, stats + solve): {'met' if met else 'NOT met'}")
    if args.csv:
        df.to_csv(args.csv, index=False)


if __name__ == "__main__":
    main()
