"""What the paper grids ask a cluster for: per arch and rule, GPUs, threads, memory and runtime,
derived from each grid's schedule (issue #27). The ``resources`` of ``workflows/config/paper_*.yaml``
are this script's output, and a test checks that they still are.

No GPU was lent when these were set. ``benchmarks/paper_size.py`` ran every method of every grid
once on an NVIDIA H100 (2026-11-27; docs/methods/*.md, "On a GPU at paper size"), but one short
pass over 64 synthetic samples: those seconds are start-up costs (a pass of DeiT-B QAT took 2.87 s
for 64 images, i.e. 22 images/s, where the GPU trains hundreds per second), so they bound the
full-size time only from far above, and the docs keep no reference-epoch time. They are used as
they scale: post-training passes (GPFQ, MSQ: one pass per calibration sample, times
``calib_samples / 64``; OPQ's one-shot allocation and DC: once per job); their peak GPU memory is
what docs/cluster.md says each arch needs of a GPU. A
training job's time is its full schedule (reference: the recipe's epochs; cell: the most epochs
any training method of the grid runs, LC/iDC ``steps x epochs``) over the task's training
set at an assumed rate (:data:`RATE`, one H100 with the job's loader workers), times
:data:`METHOD_FACTOR` for a method's step (fake quantization, penalties, noise: ``train_step.py``
measured 1.00-1.16x the plain step at 224x224 and up to 2.2x at 64x64, on CPU), plus a fixed
cost per job (:data:`FIXED_MIN`: reading the data, evaluating, packing). The request is
:data:`MARGIN` times that, rounded up to :data:`STEP_MIN` minutes. MNIST jobs run on CPUs at the
rate measured here (``quantbench.training.loop.train``, lenet300 and lenet5, 6,000 synthetic samples, 2
threads, 2026-12-03: about 3,200 samples/s); every other task gets one GPU, one process per job
(several GPUs per job have not been run on GPUs here: docs/cluster.md).

    python benchmarks/paper_resources.py            # the table: schedule, estimate and request per job
    python benchmarks/paper_resources.py --yaml     # each grid's resources block
    python benchmarks/paper_resources.py --check    # exit 1 where a grid's resources differ from these
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path

from quantbench.config import TRAIN_SIZES, Config, load_config, task_archs
from quantbench.method import make_params
from quantbench.methods import get_method

CONFIG_DIR = Path(__file__).resolve().parent.parent / "workflows" / "config"

MARGIN = 2.0  # safety factor on every estimate: the rates below are assumptions, not measurements
STEP_MIN = 30  # runtimes are rounded up to this many minutes (and are at least this)
METHOD_FACTOR = 1.5  # a training method's step against the plain recipe's step
WIKITEXT103_TOKENS = 105_000_000  # wiki.train.tokens: ~103.2 M words plus one </s> per line (~1.8 M lines)
FIXED_MIN = {"mnist": 5, "cifar10": 5, "cifar100": 5, "imagenet": 20, "wikitext103": 15}

# Training samples/s on one H100 (bf16 autocast) with the job's loader workers (threads - 1); MNIST:
# on CPU, measured here. CIFAR nets are bound by kernel launches at 32x32 (deeper: slower), ImageNet
# CNNs by the JPEG pipeline (~100 images/s per worker, 15 workers), DeiT-B by the GPU (math
# attention: deterministic kernels), the LM by the GPU (blocks of 512 tokens; ~77k tokens/s).
RATE = {
    "mnist": {"lenet300": 3_000, "lenet5": 3_000},
    "cifar10": {"lenet5": 15_000, "resnet20": 10_000, "resnet32": 7_000, "resnet56": 4_000, "resnet110": 2_000,
                "resnet18": 5_000, "wrn": 1_200},
    "imagenet": {"alexnet": 1_500, "vgg16": 1_500, "resnet18": 1_500, "resnet50": 1_500, "mobilenet_v1": 1_500,
                 "vit": 1_000},
    "wikitext103": {"transformer_lm": 150},
}
RATE["cifar100"] = RATE["cifar10"]

# Seconds of one post-training pass on 64 calibration samples, H100 (docs/methods/gpfq.md, opq.md, lc.md);
# AlexNet has no GPFQ/MSQ row there: VGG16's, the larger network, stands in. GPTQ was not measured on
# a GPU: GPFQ's pass stands in for it (GPFQ runs two networks and accumulates G and H, GPTQ one and H).
PASS_S = {
    ("mnist", "lenet300"): {"msq": 0.02, "gpfq": 0.26, "gptq": 0.26, "dc": 2.4},
    ("mnist", "lenet5"): {"dc": 2.4},
    ("cifar10", "lenet5"): {"msq": 0.03, "gpfq": 0.42, "gptq": 0.42},
    ("imagenet", "vgg16"): {"msq": 4.6, "gpfq": 16.1, "gptq": 16.1},
    ("imagenet", "alexnet"): {"msq": 4.6, "gpfq": 16.1, "gptq": 16.1, "opq_oneshot": 13.3},
    ("imagenet", "resnet18"): {"msq": 0.36, "gpfq": 5.9, "gptq": 5.9},
    ("imagenet", "resnet50"): {"msq": 0.62, "gpfq": 13.2, "gptq": 13.2, "opq_oneshot": 4.9},
    ("imagenet", "mobilenet_v1"): {"opq_oneshot": 0.8},
}
PASS_SAMPLES = 64

# Threads (loader workers = threads - 1), host memory (MB) and GPUs per job, by task; MNIST on CPUs.
JOB = {"mnist": (4, 8_000, 0), "cifar10": (8, 16_000, 1), "cifar100": (8, 16_000, 1),
       "imagenet": (16, 32_000, 1), "wikitext103": (8, 32_000, 1)}
# VGG16's GPFQ: G and H of fc6 (25,088 inputs) are 5 GB each in float64; its pass peaked at 47.7 GB
# of GPU memory before G and H were accumulated in blocks (not re-measured since).
MEM_MB = {("vgg16", "cell"): 64_000}


@dataclasses.dataclass(frozen=True)
class Estimate:
    """One job kind of one (task, arch): what it runs and how long that is expected to take."""

    task: str
    arch: str
    rule: str
    schedule: str
    minutes: float
    methods: str = ""  # a cell's: the methods whose schedule this is


def samples(cfg: Config, task: str) -> int:
    if task == "wikitext103":
        return WIKITEXT103_TOKENS // cfg["task_params"].get(task, {}).get("tokens_per_sample", 512)
    return TRAIN_SIZES[task]


def epochs_of(method: str, params: dict) -> int:
    """Training epochs of a method's cell (0: post-training)."""
    if not get_method(method).trains:
        return 0
    p = make_params(get_method(method).Params, params, method)
    return p.steps * p.epochs if hasattr(p, "steps") else p.epochs


def estimates(cfg: Config, task: str, arch: str) -> list[Estimate]:
    """The reference and the longest cell of (task, arch) in ``cfg``, in minutes before the margin."""
    epoch_min = samples(cfg, task) / RATE[task][arch] / 60
    settings = cfg.train_settings(task, arch)
    if settings.pretrained:
        ref = Estimate(task, arch, "reference", "pretrained (load, evaluate)", FIXED_MIN[task])
    else:
        ref = Estimate(task, arch, "reference", f"{settings.epochs} epochs",
                       FIXED_MIN[task] + settings.epochs * epoch_min)
    cells: dict[tuple[str, float], list[str]] = {}  # (schedule, minutes) -> the methods that run it
    for method in cfg["methods"]:
        params = dataclasses.asdict(cfg.params[method])
        epochs = epochs_of(method, params)
        if epochs:
            key = (f"{epochs} epochs", FIXED_MIN[task] + epochs * epoch_min * METHOD_FACTOR)
        else:
            scale = params.get("calib_samples", PASS_SAMPLES) / PASS_SAMPLES
            key = ("post-training", FIXED_MIN[task] + PASS_S.get((task, arch), {}).get(method, 0.0) * scale / 60)
        cells.setdefault(key, []).append(method)
    (schedule, minutes), methods = max(cells.items(), key=lambda item: item[0][1])
    return [ref, Estimate(task, arch, "cell", schedule, minutes, ", ".join(methods))]


def yaml_block(resources: dict, rows: list[Estimate]) -> str:
    """``resources`` as the grids write it: one line per arch and rule, with the estimate behind it."""
    lines = ["resources:", "  archs:"]
    for arch, rules in resources["archs"].items():
        lines.append(f"    {arch}:")
        for rule, res in rules.items():
            tasks: dict[str, list[str]] = {}  # what an estimate is -> the tasks it is for
            for e in rows:
                if (e.arch, e.rule) == (arch, rule):
                    tasks.setdefault(f"{e.schedule}, ~{e.minutes:.0f} min", []).append(e.task)
            why = "; ".join(f"{'/'.join(names)}: {what}" for what, names in tasks.items())
            values = ", ".join(f"{k}: {v}" for k, v in res.items())
            lines.append(f"      {rule}: {{{values}}}  # {why}")
    return "\n".join(lines)


def request_minutes(minutes: float) -> int:
    return max(STEP_MIN, math.ceil(MARGIN * minutes / STEP_MIN) * STEP_MIN)


def grid_resources(cfg: Config) -> tuple[dict, list[Estimate]]:
    """``cfg``'s ``resources`` block (per arch: the most any of its tasks needs) and the estimates behind it."""
    archs: dict[str, dict[str, dict]] = {}
    rows = []
    for task in cfg["tasks"]:
        for arch in task_archs(cfg.raw, task):
            for est in estimates(cfg, task, arch):
                rows.append(est)
                threads, mem_mb, gpu = JOB[task]
                new = {"gpu": gpu, "threads": threads, "mem_mb": MEM_MB.get((arch, est.rule), mem_mb),
                       "runtime": request_minutes(est.minutes)}
                old = archs.setdefault(arch, {}).setdefault(est.rule, new)
                archs[arch][est.rule] = {k: max(old[k], new[k]) for k in new}
    return {"archs": archs}, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grids", nargs="+", default=sorted(p.stem for p in CONFIG_DIR.glob("paper_*.yaml")))
    parser.add_argument("--yaml", action="store_true", help="print each grid's resources block")
    parser.add_argument("--check", action="store_true", help="exit 1 where a grid's resources differ")
    args = parser.parse_args()
    differ = []
    for grid in args.grids:
        cfg = load_config(CONFIG_DIR / f"{grid}.yaml")
        resources, rows = grid_resources(cfg)
        if args.check:
            if cfg["resources"] != resources:
                differ.append(grid)
            continue
        if args.yaml:
            print(f"# {grid}\n{yaml_block(resources, rows)}\n")
            continue
        print(f"\n{grid}\n| task / arch | job | longest schedule | estimate | request |\n|---|---|---|---|---|")
        for est in rows:
            res = resources["archs"][est.arch][est.rule]
            device = f"{res['gpu']} GPU" if res["gpu"] else "CPU"
            schedule = f"{est.methods}: {est.schedule}" if est.methods else est.schedule
            print(f"| {est.task} / {est.arch} | {est.rule} | {schedule} | {est.minutes:.0f} min | "
                  f"{device}, {res['threads']} threads, {res['mem_mb'] // 1000} GB, "
                  f"{res['runtime']} min |")
    if differ:
        sys.exit(f"resources differ from benchmarks/paper_resources.py in: {', '.join(differ)} "
                 f"(python benchmarks/paper_resources.py --yaml prints them)")


if __name__ == "__main__":
    main()
