"""quantbench.library: each call is the harness's method on a model of one's own (the same
records as a grid's cell on the same model and batches), docs/library.md runs as written, and a
bad argument is refused before any work, naming it."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from quantbench import library
from quantbench.errors import ConfigError
from quantbench.format import CompressedModel, QuantizedTensor
from quantbench.method import Budget, RunContext, make_params
from quantbench.methods import get_method
from quantbench.methods.ptq import calibration_batches

DOC = Path(__file__).resolve().parents[1] / "docs" / "library.md"


@pytest.mark.parametrize("method, bits, params", [
    ("rtn", 2, {"per_channel": True}), ("msq", 1.58, {}), ("gpfq", 2, {"rounding": "stochastic"}),
    ("gptq", 2, {"act_order": True}),
])
def test_a_library_call_packs_what_a_grid_cell_packs(digits_reference, method, bits, params):
    task, kwargs, ref = digits_reference
    cls = get_method(method)
    p = make_params(cls.Params, {**params, "calib_samples": 64} if cls.calibrated else params, method)
    ctx = RunContext(task, "lenet300", kwargs, seed=3, show_progress=False)
    cell = cls(p).compress(ref, Budget(bits), ctx)
    call = getattr(library, method)
    if cls.calibrated:
        batches = calibration_batches(ctx, p.calib_samples, p.calib_batch)  # the cell's draw
        extra = {"seed": 3} if method == "gpfq" else {}
        mine = call(ref, batches, bits, **params, **extra)
    else:
        mine = call(ref, bits, **params)
    assert set(mine.records) == set(cell.records)
    for name, record in cell.records.items():
        if isinstance(record, QuantizedTensor):
            assert np.array_equal(mine.records[name].codes, record.codes), name
    assert mine.stats() == cell.stats() and (mine.arch, cell.arch) == ("", "lenet300")


def test_the_library_page_runs_as_written(tmp_path, monkeypatch):
    """Every python block of docs/library.md, in order, in one namespace; the file it writes is
    read back by the harness's reader and evaluates to what the packed model's weights give."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 3
    monkeypatch.chdir(tmp_path)  # the page writes model.qbc where it runs
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)  # noqa: S102 (the page's own code)
    packed, logits = namespace["packed"], namespace["logits"]
    # 2-bit codes plus the per-channel scales counted; the file holds at least those bits
    assert 2 < packed.stats()["bpw"] < 3 and (tmp_path / "model.qbc").stat().st_size * 8 >= packed.stats()["size_bits"]
    weights = packed.state_dict()
    with torch.no_grad():
        direct = nn.functional.linear(nn.functional.conv2d(namespace["calibration"][0], torch.as_tensor(
            weights["0.weight"]), torch.as_tensor(weights["0.bias"]), padding=1).relu().flatten(1),
            torch.as_tensor(weights["3.weight"]), torch.as_tensor(weights["3.bias"]))
    assert torch.allclose(logits, direct.to(logits.dtype), atol=1e-5)
    for name in ("ternary", "memoryless", "baseline"):
        assert isinstance(namespace[name], CompressedModel)
    assert len(np.unique(namespace["ternary"].records["3.weight"].codes)) <= 3
    lc_packed = namespace["lc_packed"]
    for name in ("0.weight", "2.weight"):  # the trained weights sit on their 4-value codebooks
        record = lc_packed.records[name]
        assert len(record.codebook.values) == 4 and set(np.unique(record.codes)) <= {0, 1, 2, 3}
    # 2-bit codes and two 4-value float32 codebooks over its 640 weights
    assert lc_packed.stats()["bpw"] == pytest.approx(2 + 2 * 4 * 32 / 640)


@pytest.mark.parametrize("call, message", [
    (lambda m, c: library.gptq(m, c, 2, dampp=0.1), r"gptq\(\*\*params\)\.dampp: unknown parameter; allowed:"),
    (lambda m, c: library.gptq(m, c, 2, damp="a lot"), r"gptq\(\*\*params\)\.damp: expected float"),
    (lambda m, c: library.rtn(m, 2, scheme="symmetric"), r"rtn\(bits=2\): rtn does not serve 2 bits per weight"),
    (lambda m, c: library.gpfq(m, c, 0), r"gpfq\(bits=0\): expected a number of bits per weight above 0"),
    (lambda m, c: library.gptq(m, [], 2), r"gptq\(calibration\): no batches"),
    (lambda m, c: library.gptq(m, c[0], 2), r"gptq\(calibration\): expected an iterable of input batches"),
    (lambda m, c: library.gpfq(m, [(c[0], 0)], 2), r"gpfq\(calibration\): expected input tensors, got a tuple"),
    (lambda m, c: library.gptq(nn.ReLU(), c, 2), r"gptq\(model\): ReLU has no Linear or Conv weight"),
    (lambda m, c: library.msq("model", 2), r"msq\(model\): expected a torch.nn.Module, got str"),
])
def test_a_bad_argument_is_refused_naming_it(call, message):
    model = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(ConfigError, match=message):
        call(model, [torch.randn(5, 4)])


@pytest.mark.parametrize("method, bits", [("lc_adaptive", 2), ("lc_ternary", 1.58)])
def test_the_lc_object_in_the_cells_schedule_packs_what_the_cell_packs(digits_reference, method, bits):
    """library.LC driven by a loop with the harness's schedule (μ_k, the L step's epochs and data
    order) gives the records of the grid's LC cell, code for code."""
    import copy

    from quantbench.method import DATA_ORDER, derive_seed
    from quantbench.train import make_optimizer, train_epoch

    task, kwargs, ref = digits_reference
    cls = get_method(method)
    p = make_params(cls.Params, {"steps": 3, "epochs_per_step": 1}, method)
    cell = cls(p).compress(ref, Budget(bits), RunContext(task, "lenet300", kwargs, seed=0, show_progress=False))
    model = copy.deepcopy(ref).requires_grad_(True)
    lc = library.LC(model, bits, codebook=cls.codebook, mu=p.mu0, multipliers=p.multipliers, kmeans=p.kmeans)
    for k in range(p.steps):
        lc.mu = p.mu0 * p.mu_growth**k
        opt = make_optimizer(model.parameters(), p.optimizer, p.lr * p.lr_decay**k, p.momentum)
        for epoch in range(p.epochs_per_step):
            train_epoch(model, task, opt, p.batch_size, derive_seed(0, DATA_ORDER, k * 101 + epoch),
                        torch.device("cpu"), penalty=lc.penalty, grad_clip=p.grad_clip, epoch=epoch)
        lc.c_step()
    mine = lc.finalize()
    for name, record in cell.records.items():
        if isinstance(record, QuantizedTensor):
            assert np.array_equal(mine.records[name].codes, record.codes), name
            assert np.array_equal(mine.records[name].codebook.values, record.codebook.values), name
    assert mine.stats() == cell.stats()


@pytest.mark.parametrize("kwargs, message", [
    ({"bits": 3, "codebook": "binary"}, r"LC\(bits=3\): the binary codebook does not serve 3 bits"),
    ({"bits": 2, "codebook": "octal"}, r"LC\(codebook='octal'\): expected one of"),
    ({"bits": 2, "mu": 0.0}, r"LC\(mu=0.0\): expected μ above 0"),
])
def test_the_lc_object_refuses_what_it_cannot_do_naming_the_argument(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        library.LC(nn.Sequential(nn.Linear(4, 3)), **kwargs)
