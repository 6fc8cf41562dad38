"""Our GPFQ and GPTQ against Brevitas' ``gpfq_mode`` and ``gptq_mode`` on the same networks.

For each (dataset, arch) one reference is trained with quantbench's own recipe (``train``, the
grid's ``recipes``; ``--epochs`` cuts it). For each bit width b and calibration seed s, both
implementations quantize every Linear/Conv2d weight of that reference, weight-only (no activation
or bias quantizer: Brevitas' ``QuantLinear``/``QuantConv2d`` with ``weight_quant`` only), from the
same calibration images (``methods.ptq.calibration_batches`` of a ``RunContext`` at seed s:
``calib_samples`` 1024 of the training split in batches of 256, our methods' defaults), and
the quantized network is evaluated on the test split by ``task.evaluate_examples``.

Brevitas is driven as its ImageNet example does (``ptq_common.apply_gptq`` / ``apply_gpfq``: once
per layer, every calibration batch through ``q.model``, then ``q.update()``), with
``use_quant_activations=False`` and its default float32 buffers. Its weight quantizer is set to
our grid through its injector API, initialised once from the original weights
(``ParameterFromStatsFromParameterScaling`` / ``...ZeroPoint``, as the example does), so the grid
does not move while the weights are updated. Settings (``SETTINGS``):

* ``gptq/matched``  ours: ``gptq`` minmax, K = 2^b. Brevitas: ``ShiftedUint8Weight{PerTensor,
  PerChannel}Float`` at b bits with ``quantize_zero_point=False``: scale (max − min)/(2^b − 1),
  zero point −min/scale, a float, exactly our grid.
* ``gptq/sum-h``    as matched, Brevitas' GPTQ class changed in one place to ours: H = 2 Σ X̃ᵀX̃,
  a sum, where Brevitas (as the authors' code) keeps the mean 2/n Σ X̃ᵀX̃. Only the dampening
  sees the difference: a dead input's H_jj = 1 weighs into λ·mean(diag H) at the mean's scale.
* ``gptq/int-zp``   ours as above. Brevitas: the same with its default integer zero point
  (round(−min/scale)), the example's ``asym`` weight quantizer; ours has no such setting.
* ``gpfq/matched``  ours: ``gpfq`` C = 1, K = 2^b. Brevitas: the unsigned b-bit quantizer with
  scale 2·max|w|/(2^b − 1) (AbsMax stats, affine rescaling 2) and float zero point
  max|w|/scale = (2^b − 1)/2: exactly our alphabet C·max|w|·linspace(−1, 1, 2^b), no 0 on it.
* ``gpfq/keep-dead`` as matched, Brevitas' GPFQ class changed in one place to ours: a weight whose
  input is 0 on every calibration row (H_tt = 0) is rounded on its own, Q(w_t), not set to Q(0).
* ``gpfq/narrow``   Brevitas: its symmetric ``Int8Weight{PerTensor,PerChannel}Float`` (signed,
  ``narrow_range=True``, AbsMax): 2^b − 1 levels on [−max|w|, max|w|], 0 included. Ours: ``gpfq``
  at K = 2^b − 1 levels, the same alphabet.

Columns: each side's accuracy (mean and 95 % t interval over the calibration seeds), the paired
difference ours − Brevitas over the same test examples and seeds (``quantbench.report.stats
.paired_difference``: bootstrap interval and p-value), each side's wall time per network (model
conversion, calibration passes and the method; ``--threads`` torch threads), and the share of
weights on which both chose the same level (comparable where the alphabets are the same).

    python benchmarks/ptq_peer.py                                    # digits (+ mnist_t10k if present)
    python benchmarks/ptq_peer.py --datasets digits --archs lenet300 --bits 2 --seeds 0   # quick
    python benchmarks/ptq_peer.py --settings matched --per-channel --csv peer.csv
    python benchmarks/ptq_peer.py --settings matched sum-h --brevitas-float64   # float32 vs float64
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from quantbench.config import Config, load_config
from quantbench.data import Task, build_task
from quantbench.format import CompressedModel
from quantbench.method import Budget, RunContext
from quantbench.methods import get_method, ptq
from quantbench.models import build_model
from quantbench.report.stats import Examples, format_p, paired_difference, t_interval
from quantbench.training.loop import seed_everything, train

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ROOT / "workflows" / "config" / "default.yaml"
CALIB_SAMPLES, CALIB_BATCH = 1024, 256  # our GPFQParams / GPTQParams defaults, used by both sides


def brevitas_quantizer(kind: str, bits: int, per_channel: bool) -> type:
    """Brevitas' weight quantizer for a setting (module docstring), grid fixed once from the weights."""
    from brevitas.core.scaling import ParameterFromStatsFromParameterScaling
    from brevitas.core.stats import AbsMax
    from brevitas.core.zero_point import ParameterFromStatsFromParameterZeroPoint
    from brevitas.quant import (
        Int8WeightPerChannelFloat,
        Int8WeightPerTensorFloat,
        ShiftedUint8WeightPerChannelFloat,
        ShiftedUint8WeightPerTensorFloat,
    )

    fixed = {"bit_width": bits, "scaling_impl": ParameterFromStatsFromParameterScaling}
    if kind == "narrow":
        return (Int8WeightPerChannelFloat if per_channel else Int8WeightPerTensorFloat).let(
            **fixed, narrow_range=True)
    base = ShiftedUint8WeightPerChannelFloat if per_channel else ShiftedUint8WeightPerTensorFloat
    fixed["zero_point_impl"] = ParameterFromStatsFromParameterZeroPoint
    if kind == "minmax":
        return base.let(**fixed, quantize_zero_point=False)
    if kind == "minmax-int-zp":
        return base.let(**fixed, quantize_zero_point=True)
    if kind == "alphabet":  # scale 2·max|w| / (2^b − 1), zero point max|w| / scale
        return base.let(**fixed, quantize_zero_point=False, scaling_stats_op="max", scaling_affine_rescaling_init=2.0,
                        zero_point_stats_impl=AbsMax)
    raise ValueError(kind)


def brevitas_algorithm(method: str, variant: str) -> dict:
    """``gptq_mode`` / ``gpfq_mode`` keyword arguments for Brevitas' class, or a subclass that takes
    one of our definitions where Brevitas' differs: ``sum-h`` (GPTQ: H = 2 Σ X̃ᵀX̃, a sum as ours,
    not Brevitas' running mean 2/n Σ X̃ᵀX̃) or ``keep-dead`` (GPFQ: a weight whose input is 0 on
    every calibration row rounded on its own, Q(w), as ours, not set to Q(0))."""
    if variant == "stock":
        return {}
    if method == "gptq" and variant == "sum-h":
        from brevitas.graph.gptq import GPTQ

        class SumGPTQ(GPTQ):
            def compute_iterative_covariance(self, module, input, current_layer) -> None:
                current_layer.layer_names.add(self.name)
                rows = self.process_input(input).to(self.dtype)  # [groups, in_features, rows]
                self.H += 2 * rows.bmm(rows.transpose(2, 1))

        return {"gptq_class": SumGPTQ}
    if method == "gpfq" and variant == "keep-dead":
        from brevitas.graph.gpfq import GPFQ

        class KeepDeadGPFQ(GPFQ):
            def single_layer_update(self) -> None:
                dead = torch.diagonal(self.H, dim1=1, dim2=2) == 0  # [groups, in_features]
                super().single_layer_update()
                with torch.no_grad():  # the argument of the dead weights' quantizer: w, not 0
                    w = self.layer.weight.data.flatten(1).view(self.groups, -1, dead.shape[1])
                    orig = self.layer.weight_orig.to(w.device).flatten(1).view(self.groups, -1, dead.shape[1])
                    for g in range(self.groups):
                        w[g][:, dead[g]] = orig[g][:, dead[g]].to(w.dtype)

        return {"algorithm_impl": KeepDeadGPFQ}
    raise ValueError(f"{method}: no variant {variant}")


@dataclass(frozen=True)
class Setting:
    method: str  # ours and Brevitas' algorithm: gptq or gpfq
    name: str
    quantizer: str  # brevitas_quantizer kind
    our_levels: Callable[[int], int]  # K of ours at b bits
    algorithm: str = "stock"  # brevitas_algorithm variant
    same_alphabet: bool = True  # both sides quantize to the same levels (else "same levels" means nothing)


SETTINGS = [
    Setting("gptq", "matched", "minmax", lambda b: 2**b),
    Setting("gptq", "sum-h", "minmax", lambda b: 2**b, "sum-h"),
    Setting("gptq", "int-zp", "minmax-int-zp", lambda b: 2**b, same_alphabet=False),
    Setting("gpfq", "matched", "alphabet", lambda b: 2**b),
    Setting("gpfq", "keep-dead", "alphabet", lambda b: 2**b, "keep-dead"),
    Setting("gpfq", "narrow", "narrow", lambda b: 2**b - 1),
]


def to_brevitas(model: nn.Module, weight_quant: type) -> nn.Module:
    """A copy of ``model`` whose Linear/Conv2d are Brevitas layers with ``weight_quant`` only
    (no input, output or bias quantizer), their grids initialised from the original weights."""
    import brevitas.nn as qnn

    model = copy.deepcopy(model).eval()
    for name, module in list(model.named_modules()):
        if type(module) is nn.Linear:
            new = qnn.QuantLinear(module.in_features, module.out_features, bias=module.bias is not None,
                                  weight_quant=weight_quant, dtype=module.weight.dtype)
        elif type(module) is nn.Conv2d:
            if module.padding_mode != "zeros":
                raise ValueError(f"{name}: padding_mode {module.padding_mode}")
            new = qnn.QuantConv2d(module.in_channels, module.out_channels, module.kernel_size, module.stride,
                                  module.padding, module.dilation, module.groups, bias=module.bias is not None,
                                  weight_quant=weight_quant, dtype=module.weight.dtype)
        else:
            continue
        new.eval()
        with torch.no_grad():
            new.weight.copy_(module.weight)
            if module.bias is not None:
                new.bias.copy_(module.bias)
            new.quant_weight()  # ParameterFromStats*: the scale and zero point are fixed now, from these weights
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, new)
    return model


@torch.no_grad()
def brevitas_run(ref: nn.Module, method: str, quantizer: type, batches: list[torch.Tensor],
                 dtype: torch.dtype = torch.float32, algorithm: str = "stock"
                 ) -> tuple[dict[str, torch.Tensor], dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """Brevitas' GPTQ or GPFQ on ``ref`` (its example's loop), network and buffers in ``dtype``
    (its default: float32); the dequantized weights per layer and each layer's (scale, zero point)."""
    from brevitas.graph.gpfq import gpfq_mode
    from brevitas.graph.gptq import gptq_mode

    model = to_brevitas(copy.deepcopy(ref).to(dtype), quantizer)
    mode = gptq_mode if method == "gptq" else gpfq_mode
    with mode(model, use_quant_activations=False, dtype=dtype, **brevitas_algorithm(method, algorithm)) as q:
        for _ in range(q.num_layers):
            for x in batches:
                q.model(x.to(dtype))
            q.update()
    weights, grids = {}, {}
    for name, module in model.named_modules():
        if hasattr(module, "quant_weight"):
            qt = module.quant_weight()
            weights[f"{name}.weight"] = qt.value.detach().clone()
            grids[f"{name}.weight"] = (qt.scale.detach().clone(), qt.zero_point.detach().clone())
    return weights, grids


def check_on_grid(weights: dict[str, torch.Tensor], grids: dict, bits: int, signed: bool) -> None:
    """Brevitas' result lies on its grid: ``w/scale + zero_point`` whole, within its code range."""
    for name, w in weights.items():
        scale, zero = grids[name]
        pos = w.double() / scale.double() + zero.double()
        lo, hi = (-(2 ** (bits - 1)) + 1, 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
        if (pos - pos.round()).abs().max() > 1e-3 or pos.round().min() < lo or pos.round().max() > hi:
            raise AssertionError(f"{name}: Brevitas' weights are not on its {bits}-bit grid")


def with_weights(ref: nn.Module, weights: dict[str, torch.Tensor]) -> nn.Module:
    """A copy of the float ``ref`` with ``weights`` in place (every other entry, biases too, as in ``ref``)."""
    model = copy.deepcopy(ref)
    state = model.state_dict()
    state.update({k: v.to(state[k].dtype) for k, v in weights.items()})
    model.load_state_dict(state)
    return model.eval()


def same_levels(a: nn.Module, b: nn.Module, names: list[str]) -> float:
    """Share of the quantized weights on which ``a`` and ``b`` hold the same value (to 1e-4 of max|w|)."""
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    same = total = 0
    for n in names:
        wa, wb = pa[n].detach().double(), pb[n].detach().double()
        same += int(((wa - wb).abs() <= 1e-4 * wa.abs().max()).sum())
        total += wa.numel()
    return same / total


def ours_run(ref: nn.Module, method: str, levels: int, per_channel: bool, ctx: RunContext) -> nn.Module:
    """Our ``method`` at K = ``levels`` (defaults otherwise), rebuilt from the packed artifact."""
    cls = get_method(method)
    params = cls.Params(per_channel=per_channel, calib_samples=CALIB_SAMPLES, calib_batch=CALIB_BATCH)
    budget = Budget(math.log2(levels))
    if budget.levels != levels:
        raise AssertionError(f"{levels} levels is no budget")
    compressed = cls(params).compress(ref, budget, ctx)
    packed = CompressedModel.unpack(compressed.pack())
    return packed.to_dense(build_model(ctx.arch, **ctx.arch_kwargs)).eval()


def reference(task: Task, task_name: str, arch: str, kwargs: dict, cfg: Config, epochs: int | None,
              cache: Path | None) -> nn.Module:
    """The reference: trained once (seed 0) with the grid's recipe, or read from ``cache``."""
    settings = cfg.train_settings(task_name if task_name in cfg["recipes"] else "digits", arch)
    if epochs is not None:
        settings = dataclasses.replace(settings, epochs=epochs)
    seed_everything(0)
    model = build_model(arch, **kwargs)
    path = cache / f"{task_name}_{arch}_e{settings.epochs}.pt" if cache else None
    if path is not None and path.is_file():
        model.load_state_dict(torch.load(path))
    else:
        train(model, task, settings, 0, torch.device("cpu"), show_progress=False)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(model.state_dict(), path)
    return model.eval()


def timed(fn: Callable[[], nn.Module]) -> tuple[nn.Module, float]:
    """``fn()`` and its wall time in seconds."""
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def run_pair(ref: nn.Module, task: Task, ctx: RunContext, s: Setting, bits: int, per_channel: bool,
             dtype: torch.dtype = torch.float32) -> dict:
    """One (setting, bits, seed): both sides on the same reference and calibration batches."""
    names = [n for n, m in ref.named_modules() if type(m) in (nn.Linear, nn.Conv2d)]
    names = [f"{n}.weight" for n in names]
    seed_everything(ctx.seed)
    ours, ours_s = timed(lambda: ours_run(ref, s.method, s.our_levels(bits), per_channel, ctx))
    seed_everything(ctx.seed)

    def brevitas() -> nn.Module:
        batches = ptq.calibration_batches(ctx, CALIB_SAMPLES, CALIB_BATCH)  # the images ours drew
        weights, grids = brevitas_run(ref, s.method, brevitas_quantizer(s.quantizer, bits, per_channel), batches,
                                      dtype, s.algorithm)
        check_on_grid(weights, grids, bits, signed=s.quantizer == "narrow")
        return with_weights(ref, weights)

    theirs, theirs_s = timed(brevitas)
    ours_m, ours_ex = task.evaluate_examples(ours)
    theirs_m, theirs_ex = task.evaluate_examples(theirs)
    return {"ours_acc": ours_m["accuracy"], "brevitas_acc": theirs_m["accuracy"], "ours_s": ours_s,
            "brevitas_s": theirs_s,
            "same_levels": same_levels(ours, theirs, names) if s.same_alphabet else float("nan"),
            "_ours_ex": ours_ex, "_brevitas_ex": theirs_ex}


def interval(values: list[float]) -> str:
    """``mean ± half-width`` of the 95 % t interval over the seeds (the mean alone for one seed)."""
    mean = float(np.mean(values))
    if len(values) < 2:
        return f"{mean:.2f}"
    low, high = t_interval(values)
    return f"{mean:.2f} ± {(high - low) / 2:.2f}"


def summarise(rows: list[dict]) -> pd.DataFrame:
    """One line per (dataset, arch, bits, method, setting): means and intervals over the seeds."""
    out = []
    keys = ["dataset", "arch", "bits", "method", "setting"]
    df = pd.DataFrame(rows)
    for key, g in df.groupby(keys, sort=False):
        a: list[Examples] = list(g["_ours_ex"])
        b: list[Examples] = list(g["_brevitas_ex"])
        d = paired_difference("accuracy", a, b)
        out.append({**dict(zip(keys, key, strict=True)), "reference": g["reference"].iloc[0], "seeds": len(g),
                    "ours": interval(list(g["ours_acc"])), "brevitas": interval(list(g["brevitas_acc"])),
                    "ours − brevitas": f"{d.difference:+.2f} [{d.low:+.2f}, {d.high:+.2f}]", "p": format_p(d.p_value),
                    "same levels %": 100 * g["same_levels"].mean(),
                    "ours s": g["ours_s"].mean(), "brevitas s": g["brevitas_s"].mean()})
    return pd.DataFrame(out)


def markdown(table: pd.DataFrame) -> str:
    """The table as Markdown (docs/methods/gptq.md, gpfq.md), times and shares rounded."""
    table = table.copy()
    table["reference"] = table["reference"].map("{:.2f}".format)
    table["same levels %"] = table["same levels %"].map(lambda v: "—" if pd.isna(v) else f"{v:.1f}")
    for col in ("ours s", "brevitas s"):
        table[col] = table[col].map("{:.2f}".format)
    return table.to_markdown(index=False, disable_numparse=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["digits", "mnist_t10k"],
                        help="tasks; one whose files are missing under --data-root is skipped")
    parser.add_argument("--archs", nargs="+", default=["lenet300", "lenet5", "resnet20", "vgg16"])
    parser.add_argument("--bits", nargs="+", type=int, default=[2, 3, 4])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="calibration draws")
    parser.add_argument("--methods", nargs="+", default=["gpfq", "gptq"], choices=["gpfq", "gptq"])
    parser.add_argument("--settings", nargs="+", default=["matched", "sum-h", "keep-dead", "int-zp", "narrow"],
                        help="which settings (module docstring) to run")
    parser.add_argument("--per-channel", action="store_true", help="one grid per output channel (both sides)")
    parser.add_argument("--brevitas-float64", action="store_true",
                        help="Brevitas' network and buffers in float64 (ours computes in float64 always)")
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--config", default=str(DEFAULT), help="grid giving the toy members and the recipes")
    parser.add_argument("--epochs", type=int, default=None, help="reference epochs (default: the recipe's)")
    parser.add_argument("--cache", type=Path, default=None, help="folder to keep the trained references in")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument("--csv", type=Path, help="also write the table here (and the per-seed rows to *.seeds.csv)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = torch.float64 if args.brevitas_float64 else torch.float32
    cfg = load_config(args.config)
    settings = [s for s in SETTINGS if s.method in args.methods and s.name in args.settings]
    rows: list[dict] = []
    start = time.perf_counter()
    for task_name in args.datasets:
        try:
            task = build_task(task_name, root=args.data_root, **cfg["task_params"].get(task_name, {}))
        except FileNotFoundError as e:
            print(f"skipping {task_name}: {e}", flush=True)
            continue
        for arch in args.archs:
            kwargs = {"input_shape": list(task.input_shape), "num_classes": task.num_classes,
                      **cfg["arch_params"].get(arch, {})}
            t0 = time.perf_counter()
            ref = reference(task, task_name, arch, kwargs, cfg, args.epochs, args.cache)
            train_s = time.perf_counter() - t0
            ref_acc = task.evaluate(ref)["accuracy"]
            print(f"{task_name}/{arch}: reference {ref_acc:.2f} % ({train_s:.0f} s)", flush=True)
            if not rows:  # warm up (imports, Brevitas' injectors, first kernels): the first pair, not timed
                run_pair(ref, task, RunContext(task, arch, kwargs, 0, show_progress=False), settings[0],
                         args.bits[0], args.per_channel, dtype)
            for s in settings:
                for bits in args.bits:
                    for seed in args.seeds:
                        ctx = RunContext(task, arch, kwargs, seed, show_progress=False)
                        row = {"dataset": task_name, "arch": arch, "reference": ref_acc, "bits": bits,
                               "method": s.method, "setting": s.name, "seed": seed,
                               **run_pair(ref, task, ctx, s, bits, args.per_channel, dtype)}
                        rows.append(row)
                        print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()
                               if not k.startswith("_")}, flush=True)
    if not rows:
        return
    table = summarise(rows)
    print(f"\n{'per channel' if args.per_channel else 'per tensor'}, Brevitas in {str(dtype).removeprefix('torch.')}, "
          f"{args.threads} thread(s), "
          f"{time.perf_counter() - start:.0f} s")
    if args.markdown:
        print(markdown(table))
    else:
        with pd.option_context("display.float_format", "{:.3g}".format, "display.width", 250,
                               "display.max_columns", 30):
            print(table.to_string(index=False))
    if args.csv:
        table.to_csv(args.csv, index=False)
        pd.DataFrame([{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]).to_csv(
            args.csv.with_suffix(".seeds.csv"), index=False)


if __name__ == "__main__":
    main()
