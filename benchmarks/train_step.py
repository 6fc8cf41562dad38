"""Time of one training step of each training-based method against the plain step, at ResNet-18/50 size.

Each method's real ``compress`` (or the reference ``train``) runs over a synthetic ImageNet-shaped
task, and every call of :func:`quantbench.training.loop.train_step` (the one step all of them share:
forward with the method's fake quantization / noise, its penalty, backward, optimizer steps and
its after-step hook) is timed; a method's figure is the median step after ``--warmup`` steps, so
set-up, data loading, the records made at the end, LC's C step and evaluation are left out. Rounds
alternate the methods, and each ratio is to the plain step's median over the same rounds.
Methods: the plain reference step, QAT, LSQ, DiffQ (with the budget controller), the LC L step
(lc_adaptive, quadratic penalty) and OPQ finetuning, at 2 bits.
Targets (issue #17): QAT and LSQ <= 1.3x, DiffQ <= 1.6x, the LC L step <= 1.2x.

    python benchmarks/train_step.py [--archs resnet18 resnet50] [--batch 16] [--image 224] [--steps 6]

The default is the paper's input size with a small batch (the CPU's); on a GPU use --batch 128 (AMP
is the methods' own business: the reference recipe uses it on CUDA). A smaller --image shrinks the
convolutions but not the per-weight work (fake quantization, DiffQ's noise, the optimizer), so the
ratios grow: benchmarks/README.md gives both.
"""

from __future__ import annotations

import argparse
import statistics
import time

import pandas as pd
import torch
from torch.utils.data import TensorDataset

import quantbench.training.loop
from quantbench.data import Task
from quantbench.method import Budget, RunContext, make_params
from quantbench.methods import get_method
from quantbench.models import build_model
from quantbench.training.loop import TrainSettings, train

METHODS = {  # one epoch of training, the rest minimal
    "qat": {"epochs": 1},
    "lsq": {"epochs": 1},
    "diffq": {"epochs": 1, "group_size": 16},
    "lc_adaptive": {"steps": 1, "epochs": 1},
    "opq": {"epochs": 1},
}


def synthetic(batches: int, batch: int, image: int, classes: int = 1000) -> Task:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batches * batch, 3, image, image, generator=gen)
    y = torch.randint(0, classes, (batches * batch,), generator=gen)
    test = TensorDataset(x[:batch], y[:batch])
    return Task("synthetic", TensorDataset(x, y), test, (3, image, image), classes)


def step_times(run) -> list[float]:
    """Seconds of every ``train_step`` call while ``run()`` runs."""
    times, step = [], quantbench.training.loop.train_step

    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        out = step(*args, **kwargs)
        if out.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        return out

    quantbench.training.loop.train_step = timed
    try:
        run()
    finally:
        quantbench.training.loop.train_step = step
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archs", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--image", type=int, default=224)
    parser.add_argument("--steps", type=int, default=6, help="training steps per run")
    parser.add_argument("--warmup", type=int, default=1, help="steps left out at the start of each run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    task = synthetic(args.steps, args.batch, args.image)
    rows = []
    for arch in args.archs:
        kwargs = {"input_shape": [3, args.image, args.image], "num_classes": 1000}
        torch.manual_seed(0)
        ref = build_model(arch, **kwargs).to(device)
        settings = TrainSettings(epochs=1, batch_size=args.batch, lr=0.01)
        runs = {"plain step": lambda arch=arch, kwargs=kwargs, settings=settings: train(
            build_model(arch, **kwargs).to(device), task, settings, 0, device, show_progress=False)}
        for name in args.methods:
            cls = get_method(name)
            params = make_params(cls.Params, {**METHODS[name], "batch_size": args.batch}, name)
            ctx = RunContext(task, arch, kwargs, 0, device, show_progress=False)
            runs[name] = lambda cls=cls, params=params, ctx=ctx, ref=ref: cls(params).compress(ref, Budget(2.0), ctx)
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.rounds):
            for name, run in runs.items():
                times[name] += step_times(run)[args.warmup:]
        base = statistics.median(times["plain step"])
        for name, t in times.items():
            rows.append({"arch": arch, "method": name, "ms/step": 1000 * statistics.median(t),
                         "ratio": statistics.median(t) / base, "steps timed": len(t)})
            print(rows[-1], flush=True)
    print(f"batch {args.batch}, {args.image}x{args.image} inputs, 1000 classes, {device}, "
          f"median of {args.rounds} x ({args.steps} - {args.warmup}) steps per method")
    print(pd.DataFrame(rows).round(2).to_markdown(index=False))


if __name__ == "__main__":
    main()
