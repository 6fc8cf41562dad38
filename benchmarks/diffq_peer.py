"""DiffQ against its peer: our implementation and the authors' package, at equal λ.

For each (task, arch) and each λ (size penalty per MB), both train the same reference checkpoint
for the same epochs on the same batches (same seeds), with the same settings: group size g (the
largest g <= 8 that divides every weight, which the package requires), min/max/init bits 2/15/8,
Gaussian noise (the package's default), Adam for the weights (lr 1e-3) and for the bit logits
(its ``setup_optimizer`` group, lr ``bits_lr``), every linear/conv weight quantized (min_size 0):

* authors: ``diffq.DiffQuantizer`` and its ``model_size()`` penalty in their examples' loop
  (``loss = task + λ · model_size()``; ``model.train()`` adds the noise, ``model.eval()`` quantizes);
* ours: ``quantbench.methods.diffq.DiffQ`` with ``budget_control: false``, ``size_penalty: λ`` and
  ``final_fraction: 0`` (noise to the end, as the package).

Both results are packed into our format (the authors' rounded per-group widths and their weights
through the same range quantizer, which ``tests/test_diffq.py`` shows gives the package's codes),
so bpw is counted the same way, side information included; the metric is the rebuilt network's.
It prints mean ± std over seeds and whether ours matches (bpw within 2 %, metric within the seeds'
spread: |Δ mean| <= max(std) + 0.5 points).

    python benchmarks/diffq_peer.py                      # digits: lenet300, lenet5; 3 seeds
    python benchmarks/diffq_peer.py --data-root ../shared/data --tasks digits mnist_t10k
    python benchmarks/diffq_peer.py --config workflows/config/lm.yaml --data-root ../shared/data \
        --tasks tinyshakespeare --archs transformer_lm --epochs 2 --batch 32   # the LM (lm extra)
    python benchmarks/diffq_peer.py --at-bits 2 --archs lenet300 lenet5 resnet20 vgg16 vit
        # instead of λ: each implementation's noise against its own QAT, every tensor at 2 bits
"""

from __future__ import annotations

import argparse
import copy
import functools
import math
import sys
from pathlib import Path

# this folder has a file named like the authors' package: keep it off the import path
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from quantbench.config import load_config  # noqa: E402
from quantbench.data import build_task  # noqa: E402
from quantbench.method import DATA_ORDER, Budget, RunContext, compressible, derive_seed, make_params  # noqa: E402
from quantbench.methods import get_method  # noqa: E402
from quantbench.methods.diffq import range_record  # noqa: E402
from quantbench.models import build_model  # noqa: E402
from quantbench.training.loop import TrainSettings, seed_everything, train  # noqa: E402

DEFAULT = Path(__file__).resolve().parent.parent / "workflows" / "config" / "default.yaml"


def group_size(model: torch.nn.Module) -> int:
    params = dict(model.named_parameters())
    sizes = [params[n].numel() for n in compressible(model)]
    return max(d for d in range(1, 9) if all(n % d == 0 for n in sizes))


def packed_result(compressed, ctx: RunContext, task) -> dict:
    """bpw and metric of the network rebuilt from the packed ``compressed`` model."""
    from quantbench.format import CompressedModel

    packed = CompressedModel.unpack(compressed.pack())
    model = packed.to_dense(build_model(ctx.arch, **ctx.arch_kwargs))
    return {"bpw": packed.stats()["bpw"], "metric": task.evaluate(model)[task.metric]}


def authors(ref, task, ctx, lam: float, epochs: int, g: int, bits_lr: float, batch: int) -> dict:
    from diffq import DiffQuantizer

    model = copy.deepcopy(ref)
    names = compressible(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)  # created before the quantizer, as the package requires
    exclude = [n for n, _ in model.named_parameters() if n not in names]  # quantize our view only
    quantizer = DiffQuantizer(model, min_size=0.0, group_size=g, min_bits=2, max_bits=15, init_bits=8,
                              noise="gaussian", exclude=exclude)
    quantizer.setup_optimizer(opt, lr=bits_lr)
    torch.manual_seed(derive_seed(ctx.seed, 17))  # its noise draws from the global generator
    for epoch in range(epochs):
        model.train()
        for x, y in task.loader("train", batch, seed=derive_seed(ctx.seed, DATA_ORDER, epoch)):
            loss = task.loss(model(x), y) + lam * quantizer.model_size()
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    params = dict(model.named_parameters())
    records = {}
    for qp in quantizer._qparams:  # its rounded widths, and its weights through the same range quantizer
        name = next(n for n in names if params[n] is qp.param)
        bits = quantizer._get_bits(qp.logit).detach().round().clamp(1, 15)
        records[name] = range_record(qp.param.detach(), bits, g)
    trained = copy.deepcopy(ref)  # the trained dense entries (biases), without the package's logits
    trained.load_state_dict({k: v for k, v in model.state_dict().items() if k in ref.state_dict()})
    return packed_result(ctx.assemble(trained, records), ctx, task)


def authors_at_bits(ref, task, ctx, bits: int, epochs: int, batch: int, rounding: bool) -> dict:
    """The package with every tensor at ``bits`` (one width per tensor): ``DiffQuantizer`` with its
    logits pinned there (pseudo-quantization noise), or ``UniformQuantizer(qat=True)`` (rounding
    with the STE); the same loop, optimiser and batches as ``authors``."""
    from diffq import DiffQuantizer, UniformQuantizer

    model = copy.deepcopy(ref)
    names = compressible(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    exclude = [n for n, _ in model.named_parameters() if n not in names]
    if rounding:
        quantizer = UniformQuantizer(model, bits=bits, min_size=0.0, qat=True, exclude=exclude)
    else:
        quantizer = DiffQuantizer(model, min_size=0.0, group_size=0, min_bits=bits, max_bits=15, init_bits=8,
                                  noise="gaussian", exclude=exclude)
        for qp in quantizer._qparams:
            qp.logit.data.fill_(-60.0)  # b = b_min + 13 σ(−60): the noise of exactly `bits` bits
        quantizer.setup_optimizer(opt, lr=0.0)
    torch.manual_seed(derive_seed(ctx.seed, 17))
    for epoch in range(epochs):
        model.train()
        for x, y in task.loader("train", batch, seed=derive_seed(ctx.seed, DATA_ORDER, epoch)):
            loss = task.loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    params = dict(model.named_parameters())
    records = {n: range_record(params[n].detach(), torch.tensor([float(bits)]), params[n].numel()) for n in names}
    trained = copy.deepcopy(ref)
    trained.load_state_dict({k: v for k, v in model.state_dict().items() if k in ref.state_dict()})
    return packed_result(ctx.assemble(trained, records), ctx, task)


def ours_at_bits(ref, task, ctx, bits: int, epochs: int, batch: int, rounding: bool) -> dict:
    """Ours, the same settings: ``qat`` (rounding, STE) or ``diffq`` with every tensor at ``bits``
    (one width per tensor, min_bits = bits, widths frozen from the start, noise to the end)."""
    common = {"epochs": epochs, "optimizer": "adam", "lr": 1e-3, "batch_size": batch}
    if rounding:
        cls = get_method("qat")
        params = make_params(cls.Params, common, "qat")
    else:
        cls = get_method("diffq")
        params = make_params(cls.Params, {**common, "group_size": 0, "min_bits": float(bits), "noise": "gaussian",
                                          "final_fraction": 1.0, "final_forward": "noise"}, "diffq")
    return packed_result(cls(params).compress(copy.deepcopy(ref), Budget(float(bits)), ctx), ctx, task)


def ours(ref, task, ctx, lam: float, epochs: int, g: int, bits_lr: float, batch: int) -> dict:
    cls = get_method("diffq")
    params = make_params(cls.Params, {"budget_control": False, "size_penalty": lam, "epochs": epochs,
                                      "final_fraction": 0.0, "group_size": g, "min_bits": 2.0, "max_bits": 15.0,
                                      "init_bits": 8.0,
                                      "noise": "gaussian", "optimizer": "adam", "lr": 1e-3, "bits_lr": bits_lr,
                                      "batch_size": batch}, "diffq")
    return packed_result(cls(params).compress(copy.deepcopy(ref), Budget(8.0), ctx), ctx, task)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["digits"])
    parser.add_argument("--archs", nargs="+", default=["lenet300", "lenet5"])
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--config", default=str(DEFAULT),
                        help="grid file giving the toy members, task parameters and reference recipes")
    parser.add_argument("--penalties", nargs="+", type=float, default=[1.0, 10.0, 100.0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--bits-lr", type=float, default=0.05)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--at-bits", type=int, default=None,
                        help="instead of the λ sweep: noise against rounding with every tensor at this width")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(args.config)
    rows = []
    for task_name in args.tasks:
        task = build_task(task_name, root=args.data_root, **cfg["task_params"].get(task_name, {}))
        for arch in args.archs:
            kwargs = {"input_shape": list(task.input_shape), "num_classes": task.num_classes,
                      **cfg["arch_params"].get(arch, {})}
            settings: TrainSettings = cfg.train_settings(task_name if task_name in cfg["recipes"] else "digits", arch)
            for seed in args.seeds:
                seed_everything(seed)
                ref = build_model(arch, **kwargs)
                train(ref, task, settings, seed, torch.device("cpu"), show_progress=False)
                g = group_size(ref)
                runs = at_bits_runs(args, ref, task) if args.at_bits else peer_runs(args, ref, task, g)
                for impl, run, lam in runs:
                    seed_everything(seed)
                    out = run(ctx=RunContext(task, arch, kwargs, seed, show_progress=False))
                    rows.append({"task": task_name, "arch": arch, "g": g, "lambda": lam, "impl": impl,
                                 "seed": seed, **out})
                    print(rows[-1], flush=True)
    df = pd.DataFrame(rows)
    print(at_bits_table(df) if args.at_bits else peer_table(df))


def peer_runs(args, ref, task, g: int) -> list:
    """(impl, run(ctx), λ) of the λ sweep: both implementations at every λ."""
    return [(impl, functools.partial(run, ref, task, lam=lam, epochs=args.epochs, g=g, bits_lr=args.bits_lr,
                                     batch=args.batch), lam)
            for lam in args.penalties for impl, run in (("authors", authors), ("ours", ours))]


def at_bits_runs(args, ref, task) -> list:
    """(impl_forward, run(ctx), None): each implementation with noise and with rounding at ``--at-bits``."""
    return [(f"{impl}_{forward}", functools.partial(run, ref, task, bits=args.at_bits, epochs=args.epochs,
                                                     batch=args.batch, rounding=forward == "rounding"), None)
            for impl, run in (("authors", authors_at_bits), ("ours", ours_at_bits))
            for forward in ("noise", "rounding")]


def at_bits_table(df: pd.DataFrame) -> str:
    """Mean ± std of each (implementation, forward); the gap rounding − noise of each implementation."""
    summary = df.groupby(["task", "arch", "impl"]).agg(bpw=("bpw", "mean"), metric=("metric", "mean"),
                                                       std=("metric", "std"))
    table = summary.unstack("impl")
    out = pd.DataFrame(index=table.index)
    for impl in ("authors_noise", "authors_rounding", "ours_noise", "ours_rounding"):
        out[impl] = [f"{m:.2f} ± {s:.2f}" for m, s in zip(table["metric"][impl], table["std"][impl], strict=True)]
    out["bpw"] = table["bpw"].mean(axis=1).round(3)
    for impl in ("authors", "ours"):
        out[f"{impl}: rounding − noise"] = (table["metric"][f"{impl}_rounding"]
                                           - table["metric"][f"{impl}_noise"]).round(2)
    return out.to_markdown()


def peer_table(df: pd.DataFrame) -> str:
    summary = df.groupby(["task", "arch", "g", "lambda", "impl"]).agg(
        bpw=("bpw", "mean"), bpw_std=("bpw", "std"), metric=("metric", "mean"), metric_std=("metric", "std"))
    table = summary.unstack("impl")
    table.columns = [f"{a}_{b}" for a, b in table.columns]
    table["bpw_ratio"] = table["bpw_ours"] / table["bpw_authors"]
    spread = table[["metric_std_ours", "metric_std_authors"]].max(axis=1)
    table["matches"] = [(abs(r - 1) <= 0.02) and (abs(a - b) <= s + 0.5) if not math.isnan(s) else abs(r - 1) <= 0.02
                        for r, a, b, s in zip(table["bpw_ratio"], table["metric_ours"], table["metric_authors"],
                                              spread, strict=True)]
    cols = ["bpw_authors", "bpw_std_authors", "bpw_ours", "bpw_std_ours", "bpw_ratio", "metric_authors",
            "metric_std_authors", "metric_ours", "metric_std_ours", "matches"]
    return table[cols].round(3).to_markdown()


if __name__ == "__main__":
    main()
