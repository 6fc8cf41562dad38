"""Planning a big grid: ``snakemake -n`` on a 10,000-cell grid (target: under 30 s).

The grid: digits × 5 archs × {diffq, opq, opq_oneshot} × 100 budgets in [1.1, 8] × 7 seeds
(10,395 cells that the methods serve + 35 references), planned by Snakemake exactly as a real
run would (config validation, the skipped-cell scan, one job per cell with its resolved spec),
in dry-run mode. The baseline,
measured in the same run, is the dry run of a one-cell grid: Snakemake's and the harness's
fixed start-up cost. The table gives both wall times, their ratio and the cost per cell.

    python benchmarks/plan_grid.py              # 10k cells
    python benchmarks/plan_grid.py --seeds 2    # a smaller grid
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parent.parent


def dry_run(config: dict, workdir: Path) -> tuple[float, int]:
    """Wall time of ``snakemake -n`` for ``config`` and the number of cell jobs it planned."""
    path = workdir / f"{config['name']}.yaml"
    path.write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(path), "--cores", "2", "-n", "--quiet", "rules"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"snakemake -n failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    cells = next(int(line.split()[1]) for line in proc.stdout.splitlines() if line.split()[:1] == ["cell"])
    return elapsed, cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=7)
    parser.add_argument("--budgets", type=int, default=100)
    args = parser.parse_args()
    big = {"name": "plan-big", "archs": ["lenet300", "lenet5", "resnet20", "vgg16", "vit"],
           "methods": ["diffq", "opq", "opq_oneshot"],
           "budgets": [round(float(b), 3) for b in np.linspace(1.1, 8, args.budgets)],
           "seeds": list(range(args.seeds))}
    small = {"name": "plan-one", "methods": ["rtn"], "budgets": [2], "seeds": [0]}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for config in (small, big):
            elapsed, cells = dry_run(config, Path(tmp))
            rows.append({"grid": config["name"], "cells": cells, "dry_run_s": elapsed})
    table = pd.DataFrame(rows)
    table["ratio_vs_one_cell"] = table["dry_run_s"] / table["dry_run_s"].iloc[0]
    table["ms_per_extra_cell"] = (table["dry_run_s"] - table["dry_run_s"].iloc[0]) / (table["cells"] - 1) * 1e3
    with pd.option_context("display.float_format", "{:.3g}".format):
        print(table.to_string(index=False))
    print(f"\n{table['cells'].iloc[1]} cells planned in {table['dry_run_s'].iloc[1]:.1f} s (target: under 30 s)")


if __name__ == "__main__":
    main()
