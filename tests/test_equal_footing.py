"""Equal footing (issue #25): independent random streams at every seed, a round trip that fails on a
broken packer, codes that pay only for levels they can use, float16 training only with loss scaling,
and declared starting points that must exist."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from quantbench.config import load_config
from quantbench.data import build_task
from quantbench.format import AffineGrid, Codebook, CompressedModel, FormatError, QuantizedTensor
from quantbench.jobs.plan import plan_grid, reference_id
from quantbench.method import (
    DATA_ORDER,
    GENERATOR,
    REFERENCE_DATA_ORDER,
    SAMPLE,
    ConfigError,
    Method,
    RunContext,
    derive_seed,
)
from quantbench.registry import METHODS
from quantbench.training.loop import grad_scaler, train_step

STREAMS = (DATA_ORDER, REFERENCE_DATA_ORDER, GENERATOR, SAMPLE)


# --------------------------------------------------------------------------- seeds
@pytest.mark.parametrize("seed", [0, 1, 2, 12345])
def test_distinct_streams_and_offsets_never_share_a_seed(seed):
    pairs = list(itertools.product(STREAMS, range(300)))
    seeds = [derive_seed(seed, s, o) for s, o in pairs]
    assert len(set(seeds)) == len(pairs)
    assert all(0 <= s < 2**63 for s in seeds)
    # unrelated, not shifted copies: the differences of consecutive offsets are not one constant
    for stream in STREAMS:
        steps = {derive_seed(seed, stream, o + 1) - derive_seed(seed, stream, o) for o in range(20)}
        assert len(steps) == 20


def test_the_old_collisions_are_gone_at_seed_zero():
    """``seed · stream + offset`` made every stream at seed 0 just its offset."""
    for e in range(10):
        assert derive_seed(0, REFERENCE_DATA_ORDER, e) != derive_seed(0, DATA_ORDER, e)
    assert derive_seed(0, GENERATOR, 17) != derive_seed(0, DATA_ORDER, 17)
    assert derive_seed(0, DATA_ORDER, 3) != derive_seed(1, DATA_ORDER, 3)
    assert derive_seed(0, DATA_ORDER, 3) == derive_seed(0, DATA_ORDER, 3)  # deterministic
    with pytest.raises(ValueError, match="non-negative"):
        derive_seed(-1, DATA_ORDER, 0)


def _epoch_order(task, seed: int) -> list[int]:
    """The training split's labels in the order one epoch's loader yields them."""
    return [int(v) for _, y in task.loader("train", 64, seed=seed) for v in y]


def test_the_reference_epoch_order_differs_from_every_method_epoch_order_at_seed_zero():
    task = build_task("digits")
    for epoch in range(3):
        reference = _epoch_order(task, derive_seed(0, REFERENCE_DATA_ORDER, epoch))
        method = _epoch_order(task, derive_seed(0, DATA_ORDER, epoch))
        assert sorted(reference) == sorted(method) and reference != method
    # a method's own draws (ctx.generator(17)) are not the data order of epoch 17
    ctx = RunContext(task, "lenet300", {}, seed=0, show_progress=False)
    draws = torch.randperm(len(task.train), generator=ctx.generator(17))
    order = torch.randperm(len(task.train), generator=torch.Generator().manual_seed(derive_seed(0, DATA_ORDER, 17)))
    assert not torch.equal(draws, order)


# --------------------------------------------------------------------------- round trip
def _model() -> CompressedModel:
    gen = torch.Generator().manual_seed(0)
    a = QuantizedTensor((8, 30), torch.randint(0, 4, (240,), generator=gen).numpy(), AffineGrid([0.1], [1.5]), bits=2)
    b = QuantizedTensor((50,), torch.randint(0, 3, (50,), generator=gen).numpy(), Codebook([-1.0, 0.0, 1.0]), levels=3)
    return CompressedModel("toy", {"n": 1}, {"a.weight": a, "b.weight": b})


def test_the_round_trip_passes_on_a_faithful_packer():
    produced = _model()
    CompressedModel.unpack(produced.pack()).check_same_as(produced)


def test_a_packer_that_changes_a_code_fails_the_round_trip_but_not_the_old_check(monkeypatch):
    import quantbench.format as fmt

    produced = _model()
    real = fmt.QuantizedTensor.fields

    def broken(self):  # flips the last code of every tensor packed at whole bits
        out = real(self)
        name, values, widths = out[-1]
        if name == "codes" and self.levels is None:
            values = values.copy()
            values[-1] ^= np.uint64(1)
        return out[:-1] + [(name, values, widths)]

    monkeypatch.setattr(fmt.QuantizedTensor, "fields", broken)
    data = produced.pack()
    monkeypatch.setattr(fmt.QuantizedTensor, "fields", real)
    unpacked = CompressedModel.unpack(data)
    # the old check compares the model rebuilt from the file with that same file: it passes
    module = nn.Module()
    module.a, module.b = nn.Module(), nn.Module()
    module.a.weight = nn.Parameter(torch.zeros(8, 30))
    module.b.weight = nn.Parameter(torch.zeros(50))
    unpacked.verify_on_codebook(unpacked.to_dense(module))
    with pytest.raises(FormatError, match=r"tensor 'a.weight' read back differs .*field codes"):
        unpacked.check_same_as(produced, source="model.qbc")


def test_the_cell_fails_naming_the_tensor_when_packing_changes_it(tiny_config, tmp_path, monkeypatch):
    import quantbench.format as fmt
    from quantbench.jobs.runner import run_cell, run_reference
    from quantbench.tracking import Tracker

    cfg = load_config(tiny_config)
    ref_out = tmp_path / "ref" / "metrics.json"
    run_reference(plan_grid(cfg).spec(reference_id("digits", "lenet300", 0)), ref_out, show_progress=False)
    real = fmt.QuantizedTensor.fields

    def broken(self):
        out = real(self)
        name, values, widths = out[-1]
        values = values.copy()
        values[0] ^= np.uint64(1)  # rtn at 2 bits: still a valid code, just not the method's
        return out[:-1] + [(name, values, widths)]

    original_pack = fmt.CompressedModel.pack

    def pack_broken(self):
        monkeypatch.setattr(fmt.QuantizedTensor, "fields", broken)
        try:
            return original_pack(self)
        finally:
            monkeypatch.setattr(fmt.QuantizedTensor, "fields", real)

    monkeypatch.setattr(fmt.CompressedModel, "pack", pack_broken)
    out = tmp_path / "cell" / "metrics.json"
    with pytest.raises(FormatError, match=r"tensor '[\w.]+weight' read back differs"):
        run_cell(plan_grid(cfg).spec(cfg.cells[0]), ref_out, out, show_progress=False)
    assert not out.exists()
    runs = Tracker(cfg.tracking_uri()).runs("tiny")
    cell = runs[runs["tags.kind"] == "cell"]
    assert list(cell["tags.status"]) == ["failed"] and "read back differs" in cell["tags.failure_reason"].iloc[0]


# --------------------------------------------------------------------------- levels paid = levels used
def test_codes_that_pay_for_levels_their_codebook_lacks_are_refused():
    three = Codebook([-1.0, 0.0, 1.0])
    codes = np.array([0, 1, 2, 1])
    assert QuantizedTensor((4,), codes, three, levels=3).overpaid() is None  # base 3: log2 3 + < 1 %
    assert "2-bit codes address 3 levels" in QuantizedTensor((4,), codes, three, bits=2).overpaid()
    assert QuantizedTensor((4,), codes, Codebook([-1.0, 0.0, 1.0, 2.0]), bits=2).overpaid() is None
    assert QuantizedTensor((4,), codes, AffineGrid([0.5], [1.0]), bits=2).overpaid() is None
    model = CompressedModel("toy", {}, {"w": QuantizedTensor((4,), codes, three, bits=2)})
    with pytest.raises(FormatError, match="tensor 'w' pays for levels it cannot use"):
        model.check_code_costs()


# --------------------------------------------------------------------------- mixed precision
class _Regression:
    """A task whose loss is tiny: float16 gradients of it underflow without loss scaling."""

    def loss(self, out, y):
        return 1e-8 * torch.nn.functional.mse_loss(out.float(), y)


def _step(amp, scaler):
    torch.manual_seed(0)
    model = nn.Linear(16, 4)
    opt = torch.optim.SGD(model.parameters(), lr=1e6)
    x, y = torch.randn(32, 16), torch.randn(32, 4)
    before = model.weight.detach().clone()
    train_step(model, _Regression(), [opt], x, y, amp=amp, scaler=scaler)
    return model.weight.detach() - before


def test_float16_autocast_trains_with_loss_scaling_like_float32():
    full = _step(None, None)
    scaled = _step(torch.float16, grad_scaler(torch.device("cpu"), torch.float16))
    assert full.abs().max() > 0
    # float16 forward, scaled backward: the update matches full precision up to float16's rounding
    assert torch.allclose(scaled, full, rtol=0.02, atol=1e-2 * float(full.abs().max()))


def test_float16_without_a_scaler_is_refused_and_would_have_lost_the_gradients():
    with pytest.raises(ValueError, match="GradScaler"):
        _step(torch.float16, None)
    # why: the same step by hand in float16 autocast with no scaling loses every weight gradient to underflow
    torch.manual_seed(0)
    model = nn.Linear(16, 4)
    x, y = torch.randn(32, 16), torch.randn(32, 4)
    with torch.autocast("cpu", dtype=torch.float16):
        out = model(x)
    _Regression().loss(out, y).backward()
    assert torch.all(model.weight.grad == 0) and _step(None, None).abs().max() > 0
    assert grad_scaler(torch.device("cpu"), torch.bfloat16) is None and grad_scaler(torch.device("cpu"), None) is None


def test_reference_training_takes_the_float16_path_with_a_scaler(monkeypatch):
    import quantbench.training.loop as training
    from quantbench.models import build_model

    made = []
    real = training.grad_scaler

    def counting(device, dtype):
        made.append(dtype)
        return real(device, dtype)

    monkeypatch.setattr(training, "amp_dtype", lambda device, enabled: torch.float16 if enabled else None)
    monkeypatch.setattr(training, "grad_scaler", counting)
    task = build_task("digits")
    model = build_model("lenet300", input_shape=[1, 8, 8], num_classes=10)
    history = training.train(model, task, training.TrainSettings(epochs=2), 0, torch.device("cpu"), False)
    assert made == [torch.float16] and all(math.isfinite(v) for v in history) and history[1] < history[0]


# --------------------------------------------------------------------------- starting points
def test_a_starting_point_that_is_not_a_registered_method_is_refused_at_planning(monkeypatch):
    class Lost(Method):
        starts_from = "dcc"

    monkeypatch.setitem(METHODS._items, "lost", Lost)
    with pytest.raises(ConfigError, match=r"config.methods: lost's starts_from 'dcc' is not a registered method"):
        load_config({"name": "x", "methods": ["lost"], "budgets": [2]})


def test_the_built_in_starting_points_are_registered_methods():
    from quantbench.methods import available_methods, get_method

    declared = {m: get_method(m).starts_from for m in available_methods() if get_method(m).starts_from}
    assert declared["lc_adaptive"] == "dc" and declared["gpfq"] == "msq" and declared["opq"] == "opq_oneshot"
    assert {declared[m] for m in ("diffq", "diffq_fixed", "qat", "lsq")} == {"rtn"}
    assert set(declared.values()) <= set(available_methods())
