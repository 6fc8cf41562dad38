"""Training-step time with and without DiffQ: ours against the authors' package.

For lenet300 (digits, 1x8x8) and lenet5 (1x8x8, padding 2), batch 64: median milliseconds of
one training step (forward, loss, backward, optimizer step) of the plain model, of the model
under our DiffQ (pseudo-quantization noise parametrization + differentiable size penalty), and
under the official `diffq.DiffQuantizer` (same group size, its `model_size()` penalty). The
overhead columns are ratios to the plain step measured in the same run. Target: our overhead <=
the official package's.

    python benchmarks/diffq.py
"""

from __future__ import annotations

import copy
import statistics
import sys
import time
from pathlib import Path

# this file is named like the authors' package: keep its folder off the import path
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import pandas as pd  # noqa: E402
import torch  # noqa: E402
from torch.nn.utils import parametrize  # noqa: E402

from quantbench.method import compressible  # noqa: E402
from quantbench.methods.diffq import PseudoQuantizer  # noqa: E402
from quantbench.models import build_model  # noqa: E402

STEPS, WARMUP, BATCH, GROUP = 60, 10, 64, 4  # the package needs g to divide every weight


def time_steps(model, step_fn) -> float:
    x = torch.randn(BATCH, 1, 8, 8)
    y = torch.randint(0, 10, (BATCH,))
    times = []
    for i in range(STEPS + WARMUP):
        t0 = time.perf_counter()
        step_fn(x, y)
        if i >= WARMUP:
            times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def plain(model):
    opt = torch.optim.Adam(model.parameters(), 1e-3)

    def step(x, y):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


def ours(model):
    modules = dict(model.named_modules())
    quantizers = []
    for name in compressible(model):
        mod = modules[name.rsplit(".", 1)[0]]
        q = PseudoQuantizer(mod.weight.numel(), GROUP, 1.0, 15.0, 8.0, "uniform", torch.Generator())
        parametrize.register_parametrization(mod, "weight", q)
        quantizers.append(q)
    logits = [q.logit for q in quantizers]
    opt = torch.optim.Adam([p for n, p in model.named_parameters() if not n.endswith(".logit")], 1e-3)
    opt_bits = torch.optim.Adam(logits, 1e-3)

    def step(x, y):
        size = sum(q.size_bits() for q in quantizers) / (8 * 2**20)
        loss = torch.nn.functional.cross_entropy(model(x), y) + size
        opt.zero_grad()
        opt_bits.zero_grad()
        loss.backward()
        opt.step()
        opt_bits.step()
    return step


def official(model):
    from diffq import DiffQuantizer

    opt = torch.optim.Adam(model.parameters(), 1e-3)
    quantizer = DiffQuantizer(model, min_size=0.0, group_size=GROUP, min_bits=2, init_bits=8, exclude=["bias"])
    quantizer.setup_optimizer(opt, lr=1e-3)

    def step(x, y):
        loss = torch.nn.functional.cross_entropy(model(x), y) + quantizer.model_size()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


def main() -> None:
    torch.set_num_threads(2)
    rows = []
    for arch, kwargs in (("lenet300", {}), ("lenet5", {"padding": 2})):
        base = build_model(arch, input_shape=(1, 8, 8), num_classes=10, **kwargs)
        for _ in range(2):  # two rounds, the second one counts (warm caches and allocator)
            t = {name: time_steps(m, make(m)) for name, make, m in (
                ("plain", plain, copy.deepcopy(base)), ("ours", ours, copy.deepcopy(base)),
                ("official", official, copy.deepcopy(base)))}
        rows.append({"arch": arch, "plain_ms": t["plain"], "ours_ms": t["ours"], "official_ms": t["official"],
                     "ours_overhead": t["ours"] / t["plain"], "official_overhead": t["official"] / t["plain"]})
    with pd.option_context("display.float_format", "{:.3g}".format):
        print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
