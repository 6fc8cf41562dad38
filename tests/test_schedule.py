"""The one training schedule (quantbench.training.loop.Schedule): every training method's Params is one,
its values are checked where the grid is read, naming the key, and what it says reaches the
method's training (here: the learning rate each epoch runs at)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from quantbench.errors import ConfigError
from quantbench.method import Budget, RunContext, make_params
from quantbench.methods import available_methods, get_method
from quantbench.training.loop import Schedule, TrainSettings


def test_every_training_method_and_the_reference_take_the_one_schedule():
    trained = [m for m in available_methods() if get_method(m).trains]
    assert {"qat", "lsq", "diffq", "lc_adaptive", "idc", "opq"} <= set(trained)
    for name in [*trained, "reference"]:
        params = TrainSettings if name == "reference" else get_method(name).Params
        assert issubclass(params, Schedule), name
        assert {f.name for f in dataclasses.fields(Schedule)} <= {f.name for f in dataclasses.fields(params)}


@pytest.mark.parametrize("key, value, expected", [
    ("lr", -0.1, "expected a learning rate above 0"),
    ("lr", math.nan, "expected a learning rate above 0"),
    ("epochs", -1, "expected an integer >= 0"),
    ("warmup_epochs", 3, "expected an integer in [0, epochs = 2]"),
    ("milestones", [2, 1], "expected increasing epochs in (0, epochs = 2]"),
    ("momentum", 1.0, "expected a momentum in [0, 1)"),
    ("grad_clip", -1.0, "expected a norm >= 0"),
])
def test_a_schedule_value_out_of_range_is_refused_naming_the_key(key, value, expected):
    with pytest.raises(ConfigError) as error:
        make_params(get_method("qat").Params, {"epochs": 2, key: value}, "method_params.qat")
    assert str(error.value).startswith(f"method_params.qat.{key}: {value!r} is out of range")
    assert expected in str(error.value)


def test_the_grid_refuses_a_bad_reference_schedule_naming_the_key(tmp_path):
    from quantbench.config import load_config

    grid = tmp_path / "grid.yaml"
    grid.write_text("name: tiny\ntasks: [digits]\narchs: [lenet300]\nmethods: [rtn]\nbudgets: [2]\nseeds: [0]\n"
                    "reference: {epochs: 2, warmup_epochs: 5}\n")
    with pytest.raises(ConfigError, match=r"reference\S*\.warmup_epochs: 5 is out of range; expected an integer in "
                                          r"\[0, epochs = 2\]"):
        load_config(grid)


@pytest.mark.parametrize("method", ["qat", "opq", "diffq", "lc_adaptive"])
def test_a_methods_schedule_sets_the_learning_rate_of_each_epoch(digits_reference, method, monkeypatch):
    """One warm-up epoch, then step decay × 0.1 from epoch 2: the optimizer of the method's weights
    runs epochs 0, 1, 2 at lr · (0 + 1)/(1 + 1), lr, lr · 0.1 (LC: its one L step, lr_decay^0 = 1)."""
    import quantbench.training.loop as training

    seen: list[float] = []
    original = training.train_epoch

    def spy(model, task, optimizers, *args, **kwargs):
        first = optimizers if isinstance(optimizers, torch.optim.Optimizer) else optimizers[0]
        seen.append(first.param_groups[0]["lr"])
        return original(model, task, optimizers, *args, **kwargs)

    monkeypatch.setattr(training, "train_epoch", spy)
    monkeypatch.setattr("quantbench.methods.diffq.train_epoch", spy)  # DiffQ runs its own epochs (two phases)
    task, kwargs, ref = digits_reference
    cls = get_method(method)
    schedule = {"epochs": 3, "lr": 0.02, "lr_schedule": "step", "milestones": [2], "gamma": 0.1, "warmup_epochs": 1}
    extra = {"steps": 1} if method == "lc_adaptive" else {}
    p = make_params(cls.Params, {**schedule, **extra}, method)
    cls(p).compress(ref, Budget(2), RunContext(task, "lenet300", kwargs, seed=0, show_progress=False))
    assert seen == pytest.approx([0.02 * 0.5, 0.02, 0.02 * 0.1], rel=1e-12)
