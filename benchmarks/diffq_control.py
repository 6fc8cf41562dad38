"""DiffQ's budget controller against a fixed λ at equal achieved bpw (issue #15, item 2).

For each architecture, seed and λ: ``diffq_fixed`` (the paper: fixed λ, noise to the end) lands
at some bpw b; then ``diffq`` with the controller targets exactly b, in three forms:

* ``controller``: λ steered and the widths projected onto b after every epoch, to the end
  (``final_fraction: 0``, the controller before this issue);
* ``+ final noise``: the widths frozen at b for the last half of the epochs, noise there;
* ``+ final quantized``: the same, the last half trained through the quantized weights (STE) —
  the ``diffq`` default.

Everything else is the default grid's (digits, its toy members and references recipe, 6 epochs).
Prints mean ± std over seeds of accuracy and achieved bpw.

    python benchmarks/diffq_control.py                          # lenet300 lenet5 resnet20, λ 20 and 4
    python benchmarks/diffq_control.py --archs vgg16 vit --penalties 20
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
from pathlib import Path

import pandas as pd
import torch

from quantbench.config import load_config
from quantbench.data import build_task
from quantbench.format import CompressedModel
from quantbench.method import Budget, RunContext, make_params
from quantbench.methods import get_method
from quantbench.models import build_model
from quantbench.training.loop import seed_everything, train

DEFAULT = Path(__file__).resolve().parent.parent / "workflows" / "config" / "default.yaml"
FORMS = {"controller": {"final_fraction": 0.0}, "+ final noise": {"final_forward": "noise"},
         "+ final quantized": {}}


def compress(method: str, overrides: dict, budget: float, ref, task, arch: str, kwargs: dict, seed: int,
             cfg) -> tuple[float, float]:
    cls = get_method(method)
    params = make_params(cls.Params, {**dataclasses.asdict(cfg.params[method]), **overrides}, method)
    seed_everything(seed)
    ctx = RunContext(task, arch, kwargs, seed, show_progress=False)
    packed = CompressedModel.unpack(cls(params).compress(copy.deepcopy(ref), Budget(budget), ctx).pack())
    return packed.stats()["bpw"], task.evaluate(packed.to_dense(build_model(arch, **kwargs)))[task.metric]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archs", nargs="+", default=["lenet300", "lenet5", "resnet20"])
    parser.add_argument("--penalties", nargs="+", type=float, default=[20.0, 4.0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(DEFAULT)
    task = build_task("digits")
    rows = []
    for arch in args.archs:
        kwargs = {"input_shape": list(task.input_shape), "num_classes": task.num_classes,
                  **cfg["arch_params"].get(arch, {})}
        for seed in args.seeds:
            seed_everything(seed)
            ref = build_model(arch, **kwargs)
            train(ref, task, cfg.train_settings("digits", arch), seed, torch.device("cpu"), show_progress=False)
            for lam in args.penalties:
                bpw, acc = compress("diffq", {"budget_control": False, "size_penalty": lam, "final_fraction": 0.0},
                                    8.0, ref, task, arch, kwargs, seed, cfg)
                rows.append({"arch": arch, "lambda": lam, "seed": seed, "form": "fixed λ", "bpw": bpw, "acc": acc})
                for form, overrides in FORMS.items():
                    got_bpw, got = compress("diffq", overrides, bpw, ref, task, arch, kwargs, seed, cfg)
                    rows.append({"arch": arch, "lambda": lam, "seed": seed, "form": form, "bpw": got_bpw, "acc": got})
                print(rows[-4:], flush=True)
    df = pd.DataFrame(rows)
    summary = df.groupby(["arch", "lambda", "form"], sort=False).agg(
        bpw=("bpw", "mean"), acc=("acc", "mean"), std=("acc", "std"))
    summary["accuracy"] = [f"{a:.2f} ± {s:.2f}" for a, s in zip(summary["acc"], summary["std"], strict=True)]
    table = summary["accuracy"].unstack("form")
    table.insert(0, "bpw (fixed λ)", summary["bpw"].xs("fixed λ", level="form").round(3))
    table["bpw (controller)"] = summary["bpw"].xs("+ final quantized", level="form").round(3)
    print(table[["bpw (fixed λ)", "fixed λ", *FORMS, "bpw (controller)"]].to_markdown())


if __name__ == "__main__":
    main()
