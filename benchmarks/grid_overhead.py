"""How much of a finished grid's wall time was its runs' own compute (issue #26), and what one job
pays before it computes.

Reads a finished run where it lies: Snakemake's log of it (wall time and jobs: its ``Elapsed
time`` and ``N of N steps`` lines; default: the newest log under ``.snakemake/log``) and the
runs' recorded phase times (``time_train_s``, ``time_compress_s``, ``time_eval_s`` of every
``metrics.json`` under ``<results-dir>/runs/<experiment>``). Prints jobs, wall, cores, Σ compute
and the ratio wall × cores / Σ compute (1.0: no fixed cost; the target is ≤ 1.5), then the fixed
costs of one job, each measured as a fresh process (median of ``--repeat``), beside the bare
interpreter measured in the same run:

    snakemake --cores 2 && python benchmarks/grid_overhead.py
    python benchmarks/grid_overhead.py --results-dir /tmp/r --log .snakemake/log/<file>.snakemake.log
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parent.parent
PHASES = ("time_train_s", "time_compress_s", "time_eval_s")

JOB = "import quantbench.jobs.runner"
STORE = JOB + "; from quantbench.tracking import Tracker; Tracker('sqlite:///{tmp}/mlflow.db').ensure_experiment('x')"
DATA = (STORE + "; from quantbench.data import build_task; from quantbench.models import build_model; "
        "t = build_task('digits'); m = build_model('lenet300', input_shape=[1, 8, 8], num_classes=10)")
STEP = (DATA + "; from quantbench.training.loop import make_optimizer; o = make_optimizer(m.parameters(), 'sgd', 0.1); "
        "m(t.train[0][0][None]).sum().backward(); o.step()")
# (name, code, part of the job's chain): a chain step is a fresh process doing everything above it too,
# and its "step s" is what it adds; the others are what a package costs on its own
STEPS = [
    ("python (bare interpreter)", "pass", True),
    ("import torch (alone)", "import torch", False),
    ("import torch, torchvision (alone)", "import torch, torchvision", False),
    ("import torch, mlflow (alone)", "import torch, mlflow", False),
    ("job: import quantbench.jobs.runner", JOB, True),
    ("job: + MLflow store start (SQLite), an experiment", STORE, True),
    ("job: + digits task and LeNet300", DATA, True),
    ("job: + first optimizer step (quantbench.training.loop, a backward and a step)", STEP, True),
]


def snakemake_log(path: Path | None) -> tuple[Path, float, int]:
    """The log (given, or the newest), its wall time in seconds and its number of jobs."""
    if path is None:
        logs = sorted((REPO / ".snakemake" / "log").glob("*.snakemake.log"))
        if not logs:
            raise SystemExit("no Snakemake log under .snakemake/log: run the grid first, or name one with --log")
        path = logs[-1]
    text = path.read_text()
    elapsed = re.findall(r"^Elapsed time: (\d+):(\d\d):(\d\d(?:\.\d+)?)", text, flags=re.M)
    steps = re.findall(r"^(\d+) of (\d+) steps", text, flags=re.M)
    if not elapsed or not steps:
        raise SystemExit(f"{path}: no 'Elapsed time' or 'N of N steps' line: not a finished Snakemake run")
    h, m, s = elapsed[-1]
    return path, int(h) * 3600 + int(m) * 60 + float(s), int(steps[-1][0])


def recorded_compute(runs_dir: Path) -> tuple[int, float]:
    """How many runs recorded phase times under ``runs_dir``, and their sum in seconds."""
    files = sorted(runs_dir.rglob("metrics.json"))
    if not files:
        raise SystemExit(f"{runs_dir}: no metrics.json: not the results of a finished grid")
    total = 0.0
    for f in files:
        result = json.loads(f.read_text())
        total += sum(float(result.get(k, 0.0)) for k in PHASES)
    return len(files), total


def process_seconds(code: str, repeat: int) -> float:
    """Median wall time of a fresh ``python -c code``."""
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeat):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", code.format(tmp=tmp)], check=True, cwd=REPO,
                           capture_output=True)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results-dir", type=Path, default=REPO / "results")
    parser.add_argument("--experiment", default="default")
    parser.add_argument("--log", type=Path, default=None, help="Snakemake log of the run (default: the newest)")
    parser.add_argument("--cores", type=int, default=2, help="the --cores the grid ran with")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    log, wall, jobs = snakemake_log(args.log)
    runs, compute = recorded_compute(args.results_dir / "runs" / args.experiment)
    grid = pd.DataFrame([{"jobs": jobs, "runs recorded": runs, "wall s": round(wall, 1), "cores": args.cores,
                          "Σ compute s": round(compute, 1), "wall × cores / Σ compute": round(
                              wall * args.cores / compute, 2),
                          "fixed s per job": round((wall * args.cores - compute) / jobs, 2)}])
    print(f"grid: {log}\n")
    print(grid.to_markdown(index=False))

    rows, previous, bare = [], None, None
    for name, code, chain in STEPS:
        seconds = process_seconds(code, args.repeat)
        bare = seconds if bare is None else bare
        rows.append({"one job, fresh process": name, "s": round(seconds, 2),
                     "step s": round(seconds - previous, 2) if chain and previous is not None else None,
                     "× bare interpreter": round(seconds / bare, 1)})
        previous = seconds if chain else previous
    print()
    print(pd.DataFrame(rows).to_markdown(index=False))


if __name__ == "__main__":
    main()
