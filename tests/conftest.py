from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from quantbench.data import build_task
from quantbench.models import build_model
from quantbench.training.loop import TrainSettings, seed_everything, train

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


