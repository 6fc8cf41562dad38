"""Training samples/s of a job on 1 and 2 processes (torchrun, gloo on CPU), and on 1..N GPUs (NCCL)
when the machine has several.

Each configuration runs the real reference recipe (``train``: DDP) and QAT's ``compress`` (the
``functional_call`` forward, gradients averaged by one all-reduce) under
``python -m torch.distributed.run --standalone --nproc-per-node N``, on a synthetic CIFAR-shaped
task, and times each epoch of :func:`quantbench.training.loop.train_epoch` (the one epoch loop); the figure
is the mean over the epochs after the first (warm-up). The global batch is the same for every
process count (the configured batch, computed in N parts), so samples/s compare directly. On CPU
the job's ``--threads`` are shared by its processes (1 process x 2 threads against 2 x 1 on a
2-core machine). No target on 2 cores.

    python benchmarks/ddp.py [--arch resnet20] [--batch 128] [--samples 4096] [--epochs 3] [--threads 2]
                             [--methods reference qat]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import TensorDataset

METHODS = ("reference", "qat")


def synthetic(samples: int, image: int = 32, classes: int = 10):
    from quantbench.data import Task

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(samples, 3, image, image, generator=gen)
    y = torch.randint(0, classes, (samples,), generator=gen)
    return Task("synthetic", TensorDataset(x, y), TensorDataset(x[:256], y[:256]), (3, image, image), classes)


def worker(args: argparse.Namespace) -> None:
    """One rank: train ``args.method`` for ``args.epochs`` epochs; rank 0 writes the epoch times."""
    import quantbench.methods.diffq as diffq
    from quantbench import distributed
    from quantbench.method import Budget, RunContext, make_params
    from quantbench.methods import get_method
    from quantbench.models import build_model
    from quantbench.training import loop as training

    device = distributed.init(torch.device(args.device))
    torch.set_num_threads(max(1, args.threads // distributed.local_processes()))
    training.seed_everything(0)
    task = synthetic(args.samples)
    kwargs = {"input_shape": [3, 32, 32], "num_classes": 10}
    model = build_model(args.arch, **kwargs).to(device)
    seconds, plain_epoch = [], training.train_epoch

    def timed_epoch(*a, **kw):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        loss = plain_epoch(*a, **kw)  # ends with an all-reduce of the loss: every rank is done
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - t0)
        return loss

    training.train_epoch = diffq.train_epoch = timed_epoch
    if args.method == "reference":
        settings = training.TrainSettings(epochs=args.epochs, batch_size=args.batch, amp=False)
        training.train(model, task, settings, 0, device, show_progress=False)
    else:
        cls = get_method(args.method)
        params = make_params(cls.Params, {"epochs": args.epochs, "batch_size": args.batch}, args.method)
        ctx = RunContext(task, args.arch, kwargs, seed=0, device=device, show_progress=False)
        cls(params).compress(model, Budget(2), ctx)
    if distributed.is_main():
        Path(args.out).write_text(json.dumps(seconds))
    distributed.shutdown()


def measure(args: argparse.Namespace, method: str, processes: int, device: str) -> float:
    """Samples/s of ``method`` on ``processes`` ranks (mean over the epochs after the first)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "seconds.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               __file__, "--worker", "--method", method, "--device", device, "--out", str(out),
               "--arch", args.arch, "--batch", str(args.batch), "--samples", str(args.samples),
               "--epochs", str(args.epochs), "--threads", str(args.threads)]
        subprocess.run(cmd, check=True, timeout=3600, stdout=subprocess.DEVNULL,
                       env={**os.environ, "OMP_NUM_THREADS": str(max(1, args.threads // processes))})
        seconds = json.loads(out.read_text())[1:]
    return args.samples / (sum(seconds) / len(seconds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet20")
    parser.add_argument("--batch", type=int, default=128, help="global batch")
    parser.add_argument("--samples", type=int, default=4096, help="training samples per epoch")
    parser.add_argument("--epochs", type=int, default=3, help="epochs (the first is warm-up)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of the job, shared by its processes")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", default="reference", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    parser.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    setups = [("cpu", 1), ("cpu", 2)]
    gpus = torch.cuda.device_count()
    setups += [("cuda", n) for n in sorted({1, 2, gpus}) if 1 <= n <= gpus]
    rows = []
    for method in args.methods:
        for device, processes in setups:
            rows.append({"method": method, "device": device, "processes": processes,
                         "samples/s": measure(args, method, processes, device)})
    table = pd.DataFrame(rows)
    base = table[table.processes == 1].set_index(["method", "device"])["samples/s"]
    table["vs 1 process"] = [r["samples/s"] / base[(r["method"], r["device"])] for _, r in table.iterrows()]
    print(f"{args.arch}, global batch {args.batch}, {args.samples} samples/epoch, {args.threads} CPU threads per job")
    print(table.to_markdown(index=False, floatfmt=".2f"))


if __name__ == "__main__":
    main()
