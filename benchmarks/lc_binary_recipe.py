"""The default grid's lc_binary recipe against the one it replaced, per arch and seed (issue #38).

The unscaled binary codebook {−1, +1} on a network without normalization layers blew up the L
step's SGD (a loss of 1e34 at lenet5 seed 2, NaN at seed 3). For each arch and seed this trains
the reference with the default grid's recipe, then runs lc_binary at 1 bit with each recipe and
prints the packed artifact's test accuracy and the largest training loss of its LC steps (the
margin to overflow). ``old``: 11 steps, no clip (the grid before #38); ``grid``: the default
grid's lc_binary recipe as it is now.

    python benchmarks/lc_binary_recipe.py [--archs lenet5,lenet300] [--seeds 0,1,2,3,4]
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import pandas as pd
import yaml

from quantbench.config import load_config
from quantbench.jobs.plan import plan_grid, reference_id
from quantbench.jobs.runner import run_cell, run_reference
from quantbench.tracking import Tracker

GRID = Path(__file__).resolve().parent.parent / "workflows" / "config" / "default.yaml"
OLD = {"steps": 11, "epochs": 1, "mu0": 0.002, "mu_growth": 2.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="lenet5,lenet300")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    args = parser.parse_args()
    raw = yaml.safe_load(GRID.read_text())
    recipes = {"old": OLD, "grid": raw["method_params"]["lc_binary"]}
    rows = []
    with tempfile.TemporaryDirectory(prefix="lc-binary-") as tmp:
        for name, recipe in recipes.items():
            cfg = load_config({**raw, "name": f"lc_binary_{name}", "results_dir": tmp, "archs": args.archs.split(","),
                               "methods": ["lc_binary"], "budgets": [1], "claims": [], "batch": "cell",
                               "seeds": [int(s) for s in args.seeds.split(",")],
                               "method_params": {"lc_binary": recipe}})
            plan, tracker = plan_grid(cfg), Tracker(cfg.tracking_uri())
            for cell in cfg.cells:
                ref = Path(tmp) / "refs" / cell.arch / f"s{cell.seed}" / "metrics.json"
                if not ref.is_file():  # the references are the same for both recipes
                    run_reference(plan.spec(reference_id(cell.task, cell.arch, cell.seed)), ref, threads=2,
                                  show_progress=False)
                out = Path(tmp) / name / cell.id / "metrics.json"
                result = run_cell(plan.spec(cell), ref, out, threads=2, show_progress=False)
                losses = [m.value for m in tracker.client.get_metric_history(result["run_id"], "lc/train_loss")]
                rows.append({"arch": cell.arch, "seed": cell.seed, "recipe": name, "status": result["status"],
                             "accuracy": result.get("metrics", {}).get("accuracy", math.nan),
                             "max_train_loss": max(losses, default=math.nan), "reason": result.get("reason", "")})
    table = pd.DataFrame(rows)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print()
    print(table.groupby(["arch", "recipe"])[["accuracy", "max_train_loss"]].agg(["mean", "max"])
          .to_string(float_format=lambda v: f"{v:.4g}"))


if __name__ == "__main__":
    main()
