"""Paper-size check: every method of every paper grid on its paper-size architectures.

For each (task, arch) pair of ``workflows/config/paper_*.yaml`` the reference network is built at
paper size on the device (CUDA when present) and every method of that grid compresses it at the
smallest budget the grid gives it, with the grid's method parameters and a schedule cut to
``--epochs`` epochs / ``--steps`` LC steps on ``--samples`` synthetic examples (this checks that
each method runs at paper size on the device, fits in memory and how long one pass takes; it is
not an accuracy run: no dataset is read). The packed artifact is rebuilt, checked to lie on its
codebooks and evaluated, exactly as ``quantbench cell`` does. Methods that are in no paper grid
(``--extra``, default rtn) run on the first grid's first pair at 2 bits.

The table gives per row the compression wall time, its ratio to one training step of the same
reference measured in the same run (``ref_epoch_s``: one epoch of its recipe, batch ``--batch``,
AMP on CUDA, over the same samples), the packed size
(bits per weight, MB), the peak device memory, and with ``--repeat-below S`` whether a second
compression with the same seed packs to the same bytes. Rows that fail give the exception.

    python benchmarks/paper_size.py                          # all paper grids
    python benchmarks/paper_size.py --grids paper_gpfq --deadline 300 --csv out.csv
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import time
import traceback
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import TensorDataset

from quantbench.config import load_config
from quantbench.data import TASK_SHAPES, LanguageModelingTask, Task
from quantbench.format import CompressedModel
from quantbench.jobs.plan import plan_grid, reference_id
from quantbench.method import Budget, RunContext, make_params
from quantbench.methods import get_method
from quantbench.models import build_model
from quantbench.training.loop import TrainSettings, seed_everything, train

CONFIG_DIR = Path(__file__).resolve().parent.parent / "workflows" / "config"


def synthetic_task(task: str, samples: int) -> Task:
    """``samples`` random examples of the task's shape (train and test alike)."""
    shape, classes = TASK_SHAPES[task]
    gen = torch.Generator().manual_seed(0)
    if len(shape) == 1:  # token blocks
        x = torch.randint(4, classes, (samples, *shape), generator=gen)
        y = torch.randint(4, classes, (samples, *shape), generator=gen)
        data = TensorDataset(x, y)
        return LanguageModelingTask(task, data, data, shape, classes)
    x = torch.randn(samples, *shape, generator=gen)
    data = TensorDataset(x, torch.randint(0, classes, (samples,), generator=gen))
    return Task(task, data, data, shape, classes)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reference_epoch_seconds(model: torch.nn.Module, task: Task, settings: TrainSettings, device) -> float:
    """Wall time of one epoch of the reference recipe (``quantbench.training.loop.train``: its optimiser,
    schedule and AMP on CUDA) over the synthetic samples; the second of two epochs (warm)."""
    one = dataclasses.replace(settings, epochs=1, warmup_epochs=0)
    times = []
    for _ in range(2):
        sync(device)
        t0 = time.perf_counter()
        train(model, task, one, 0, device, show_progress=False)
        sync(device)
        times.append(time.perf_counter() - t0)
    return times[-1]


def short_schedule(method_params: dict, fields: set[str], epochs: int, steps: int) -> dict:
    """The grid's parameters with the schedule cut down (epochs, LC steps, calibration size)."""
    cut = {"epochs": 1 if "steps" in fields else epochs, "steps": steps, "calib_samples": 64}  # LC: steps x 1 epoch
    return {**method_params, **{k: v for k, v in cut.items() if k in fields}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grids", nargs="+", default=sorted(p.stem for p in CONFIG_DIR.glob("paper_*.yaml")))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--deadline", type=float, default=0, help="start no row after this many s (0: none)")
    parser.add_argument("--repeat-below", type=float, default=0,
                        help="rerun rows faster than this many s and compare the packed bytes (determinism)")
    parser.add_argument("--extra", nargs="*", default=["rtn"],
                        help="methods of no paper grid, run at 2 bits on the first grid's first pair")
    parser.add_argument("--csv", type=Path)
    args = parser.parse_args()
    device = torch.device(args.device)
    start = time.perf_counter()
    rows: list[dict] = []
    for grid in args.grids:
        cfg = load_config(CONFIG_DIR / f"{grid}.yaml")
        first_budget: dict[tuple[str, str], dict[str, float]] = {}  # (task, arch) -> method -> bits
        for c in cfg.cells:  # the smallest budget each method runs at on each pair of the grid
            per_method = first_budget.setdefault((c.task, c.arch), {})
            per_method[c.method] = min(per_method.get(c.method, float("inf")), float(c.budget))
        if grid == args.grids[0]:  # methods of no paper grid: on this grid's first pair, at 2 bits
            next(iter(first_budget.values())).update({m: 2.0 for m in args.extra})
        for (task_name, arch), methods in first_budget.items():
            if args.deadline and time.perf_counter() - start > args.deadline:
                rows.append({"grid": grid, "task": task_name, "arch": arch, "method": "-", "error": "deadline"})
                continue
            if arch == "transformer_lm" and importlib.util.find_spec("fairseq") is None:
                rows.append({"grid": grid, "task": task_name, "arch": arch, "method": "-",
                             "error": "fairseq (the lm extra) is not installed"})
                continue
            job = plan_grid(cfg).identity(reference_id(task_name, arch, 0))
            task = synthetic_task(task_name, args.samples)
            arch_kwargs = {"input_shape": list(task.input_shape), "num_classes": task.num_classes,
                           **job.arch_params}
            seed_everything(0)
            ref = build_model(arch, **arch_kwargs).to(device)
            n_params = sum(p.numel() for p in ref.parameters())
            settings = dataclasses.replace(cfg.train_settings(task_name, arch), batch_size=args.batch)
            ref_epoch = reference_epoch_seconds(ref, task, settings, device)
            t, a = task_name, arch
            for method, bits in methods.items():
                if args.deadline and time.perf_counter() - start > args.deadline:
                    rows.append({"grid": grid, "task": t, "arch": a, "method": method, "error": "deadline"})
                    continue
                row = {"grid": grid, "task": t, "arch": a, "params_M": n_params / 1e6, "method": method,
                       "bits": bits, "ref_epoch_s": ref_epoch}
                try:
                    cls = get_method(method)
                    fields = {f.name for f in dataclasses.fields(cls.Params)}
                    cell_params = dataclasses.asdict(cfg.params[method]) if method in cfg["methods"] else {}
                    params = make_params(cls.Params, short_schedule(cell_params, fields, args.epochs, args.steps),
                                         f"method_params.{method}")
                    ctx = RunContext(task, a, arch_kwargs, 0, device, show_progress=False)
                    if device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats(device)
                    seed_everything(0)  # as a job does: method RNG (dropout, drop path) starts from the seed
                    sync(device)
                    t0 = time.perf_counter()
                    compressed = cls(params).compress(ref, Budget(bits), ctx)
                    sync(device)
                    row["compress_s"] = time.perf_counter() - t0
                    blob = compressed.pack()
                    packed = CompressedModel.unpack(blob)
                    model = packed.to_dense(build_model(a, **arch_kwargs))
                    packed.verify_on_codebook(model)
                    metrics = task.evaluate(model.to(device), device=device)
                    stats = packed.stats()
                    row.update(ratio_to_ref_epoch=row["compress_s"] / ref_epoch, bpw=stats["bpw"],
                               packed_MB=stats["size_bits"] / 8e6, metric_on_synthetic=metrics[task.metric], error="")
                    if device.type == "cuda":
                        row["peak_GB"] = torch.cuda.max_memory_allocated(device) / 2**30
                    if args.repeat_below and row["compress_s"] < args.repeat_below:  # same seed, same bytes?
                        seed_everything(0)
                        again = cls(params).compress(ref, Budget(bits), RunContext(task, a, arch_kwargs, 0, device,
                                                                                  show_progress=False))
                        row["same_bytes"] = again.pack() == blob
                except Exception as e:  # noqa: BLE001 - a row reports its failure; the others still run
                    row["error"] = f"{type(e).__name__}: {e}"[:300]
                    traceback.print_exc()
                rows.append(row)
                print(pd.DataFrame([row]).to_string(index=False, header=len(rows) == 1), flush=True)
            del ref
            if device.type == "cuda":
                torch.cuda.empty_cache()
    table = pd.DataFrame(rows)
    print()
    with pd.option_context("display.float_format", "{:.4g}".format, "display.width", 250, "display.max_columns", 20):
        print(table.to_string(index=False))
    print(f"\n{len(table)} rows, {int((table['error'] == '').sum())} ok, device {device}"
          f"{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}, "
          f"{time.perf_counter() - start:.0f} s")
    if args.csv:
        table.to_csv(args.csv, index=False)


if __name__ == "__main__":
    main()
