"""Time of one training step of each training-based method against the plain step, at ResNet-18/50 size.

Black-box: each method's real ``compress`` (or the reference ``train``) runs one epoch over a
synthetic ImageNet-shaped task of K and of 2K batches; the per-step time is (T(2K) − T(K)) / K,
so set-up, the records made at the end, LC's C step and its per-step evaluation cancel out.
Methods: the plain reference step, QAT, LSQ, DiffQ (fixed λ), the LC L step (lc_adaptive, one LC
step) and OPQ finetuning, at 2 bits. Ratios are to the plain step measured in the same run.
Targets (issue #17): QAT and LSQ <= 1.3x, DiffQ <= 1.6x, the LC L step <= 1.2x.

    python benchmarks/train_step.py [--archs resnet18 resnet50] [--batch 16] [--image 64] [--k 4]

On the CPU use a small batch and image; on a GPU, e.g. --batch 128 --image 224 (AMP is the
methods' own business: the reference recipe uses it on CUDA).
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch
from torch.utils.data import TensorDataset

from quantbench.data import Task
from quantbench.method import Budget, RunContext, make_params
from quantbench.methods import get_method
from quantbench.models import build_model
from quantbench.train import TrainSettings, train

METHODS = {  # one epoch of training, the rest minimal
    "qat": {"epochs": 1},
    "lsq": {"epochs": 1},
    "diffq": {"epochs": 1, "budget_control": False, "group_size": 16},
    "lc_adaptive": {"steps": 1, "epochs_per_step": 1},
    "opq": {"epochs": 1},
}


def synthetic(batches: int, batch: int, image: int, classes: int = 1000) -> Task:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batches * batch, 3, image, image, generator=gen)
    y = torch.randint(0, classes, (batches * batch,), generator=gen)
    test = TensorDataset(x[:batch], y[:batch])
    return Task("synthetic", TensorDataset(x, y), test, (3, image, image), classes)


def timed(run) -> float:
    t0 = time.perf_counter()
    run()
    return time.perf_counter() - t0


def per_step(make_run, k: int) -> float:
    return (timed(make_run(2 * k)) - timed(make_run(k))) / k


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archs", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--image", type=int, default=64)
    parser.add_argument("--k", type=int, default=4, help="batches of the short run (the long one has 2k)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = []
    for arch in args.archs:
        kwargs = {"input_shape": [3, args.image, args.image], "num_classes": 1000}
        torch.manual_seed(0)
        ref = build_model(arch, **kwargs)
        settings = TrainSettings(epochs=1, batch_size=args.batch, lr=0.01)

        def plain(n, arch=arch, kwargs=kwargs, settings=settings):
            task = synthetic(n, args.batch, args.image)
            return lambda: train(build_model(arch, **kwargs).to(device), task, settings, 0, device, show_progress=False)

        base = per_step(plain, args.k)
        rows.append({"arch": arch, "method": "plain step", "ms/step": 1000 * base, "ratio": 1.0})
        for name in args.methods:
            cls = get_method(name)
            params = make_params(cls.Params, {**METHODS[name], "batch_size": args.batch}, name)

            def run(n, cls=cls, params=params, ref=ref, arch=arch, kwargs=kwargs):
                task = synthetic(n, args.batch, args.image)
                ctx = RunContext(task, arch, kwargs, 0, device, show_progress=False)
                return lambda: cls(params).compress(ref.to(device), Budget(2.0), ctx)

            step = per_step(run, args.k)
            rows.append({"arch": arch, "method": name, "ms/step": 1000 * step, "ratio": step / base})
            print(rows[-1], flush=True)
    print(f"batch {args.batch}, {args.image}x{args.image} inputs, 1000 classes, {device}, "
          f"per step = (T({2 * args.k} batches) - T({args.k})) / {args.k}")
    print(pd.DataFrame(rows).round(2).to_markdown(index=False))


if __name__ == "__main__":
    main()
