from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from quantbench.data import build_task
from quantbench.format import CompressedModel
from quantbench.method import Budget, RunContext, make_params
from quantbench.methods import get_method
from quantbench.models import build_model
from quantbench.train import TrainSettings, seed_everything, train

FAULTY_METHODS = Path(__file__).resolve().parent / "fixtures" / "faulty_methods"


@pytest.fixture
def faulty_methods(monkeypatch) -> Path:
    """The method plugins ``raises`` and ``nan_weights`` (tests/fixtures/faulty_methods) found by entry
    point in this process and in the processes it starts (PYTHONPATH)."""
    from quantbench.registry import METHODS

    monkeypatch.syspath_prepend(str(FAULTY_METHODS))
    monkeypatch.setattr(METHODS, "_entry_points", None)  # read again, with them (and again after the test)
    monkeypatch.setenv("PYTHONPATH", ":".join(filter(None, [str(FAULTY_METHODS), os.environ.get("PYTHONPATH")])))
    return FAULTY_METHODS


@pytest.fixture
def tiny_config(tmp_path: Path) -> dict:
    """A small, fast grid writing into a temporary results folder."""
    return {
        "name": "tiny",
        "results_dir": str(tmp_path / "results"),
        "budgets": [2, 8],
        "reference": {"epochs": 3},
    }


@pytest.fixture(scope="session")
def digits_reference():
    """digits/lenet300 trained with the default recipe, seed 0: (task, builder kwargs, model)."""
    seed_everything(0)
    task = build_task("digits")
    kwargs = {"input_shape": [1, 8, 8], "num_classes": 10}
    ref = build_model("lenet300", **kwargs)
    train(ref, task, TrainSettings(), 0, torch.device("cpu"), show_progress=False)
    return task, kwargs, ref


def compress_digits(name: str, bits: float, digits_reference, **params):
    """Run method ``name`` on the digits reference; returns the model unpacked from its packed
    bytes, the test metrics of the network rebuilt from it, and the run context."""
    task, kwargs, ref = digits_reference
    cls = get_method(name)
    ctx = RunContext(task, "lenet300", kwargs, seed=0, show_progress=False)
    packed = cls(make_params(cls.Params, params, name)).compress(ref, Budget(bits), ctx).pack()
    cm = CompressedModel.unpack(packed)
    return cm, task.evaluate(cm.to_dense(build_model("lenet300", **kwargs))), ctx


def write_run(tracker, experiment_id: str, run_name: str, metrics: dict[str, float], tags: dict[str, str],
              artifacts: list[Path] = (), status: str = "FINISHED") -> str:
    """A complete run written as a job writes it: opened with its tags, closed with its outcome."""
    run_id = tracker.start_run(experiment_id, run_name, {}, tags)
    tracker.finish_run(run_id, metrics, [], {}, list(artifacts), status)
    return run_id


def job_args(cfg, job: str, where: Path) -> list[str]:
    """A job's command-line options as Snakemake gives them: the grid's plan written to
    ``where/plan.json``, the job's id and its digest."""
    from quantbench.plan import plan_grid

    plan = plan_grid(cfg)
    path = plan.write(where / "plan.json")
    job_id = job if isinstance(job, str) else job.id
    return ["--plan", str(path), "--job", job_id, "--digest", plan.digests[job_id][:16]]
