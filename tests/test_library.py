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
    ("gptq", 2, {"act_order": True}), ("dc", 2, {}), ("opq_oneshot", 1.58, {}),
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
    """Every python block of docs/library.md, in order, in one namespace, on the page's own models;
    each packed model, written to a file and read back by the harness's reader, evaluates to what
    the trainer's own forward gives at the end (the quantized network it trained)."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 5
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
    for name in ("ternary", "memoryless", "baseline", "oneshot"):
        assert isinstance(namespace[name], CompressedModel)
    assert len(np.unique(namespace["ternary"].records["3.weight"].codes)) <= 3
    lc_packed = namespace["lc_packed"]
    for name in ("0.weight", "2.weight"):  # the trained weights sit on their 4-value codebooks
        record = lc_packed.records[name]
        assert len(record.codebook.values) == 4 and set(np.unique(record.codes)) <= {0, 1, 2, 3}
    # 2-bit codes and two 4-value float32 codebooks over its 64·128 + 128·4 weights
    assert lc_packed.stats()["bpw"] == pytest.approx(2 + 2 * 4 * 32 / (64 * 128 + 128 * 4))
    x = namespace["x"]
    for trainer, result in (("qat", "qat_packed"), ("lsq", "lsq_packed"), ("opq", "opq_packed"),
                            ("idc", "idc_packed"), ("dq", "dq_packed")):
        namespace[result].save(tmp_path / f"{result}.qbc")
        rebuilt = CompressedModel.load(tmp_path / f"{result}.qbc").to_dense(namespace["mlp"]())
        model = namespace[trainer].eval()
        with torch.no_grad():
            assert torch.allclose(rebuilt(x), model(x), atol=1e-5), trainer
        trained = namespace["mlp"]()
        assert not torch.allclose(rebuilt(x), trained(x), atol=1e-3), trainer  # quantized, not the float model
    assert namespace["dq_packed"].stats()["bpw"] <= 3
    opq = namespace["opq"]
    assert namespace["opq_packed"].stats()["bpw"] <= 1.58 and set(opq.allocations) == {"0.weight", "2.weight"}


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
    from quantbench.training.loop import make_optimizer, train_epoch

    task, kwargs, ref = digits_reference
    cls = get_method(method)
    p = make_params(cls.Params, {"steps": 3, "epochs": 1}, method)
    cell = cls(p).compress(ref, Budget(bits), RunContext(task, "lenet300", kwargs, seed=0, show_progress=False))
    model = copy.deepcopy(ref).requires_grad_(True)
    lc = library.LC(model, bits, codebook=cls.codebook, mu=p.mu0, multipliers=p.multipliers, kmeans=p.kmeans)
    for k in range(p.steps):
        lc.mu = p.mu0 * p.mu_growth**k
        opt = make_optimizer(model.parameters(), p.optimizer, p.lr * p.lr_decay**k, p.momentum)
        for epoch in range(p.epochs):
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


@pytest.mark.parametrize("method, bits", [("qat", 2), ("lsq", 2), ("opq", 1.58), ("prune_quant_uniform", 2),
                                          ("idc", 1)])
def test_a_trainer_in_the_cells_schedule_packs_what_the_cell_packs(digits_reference, method, bits):
    """Each training method's trainer, driven by a loop written here with the grid's schedule (its
    optimizer, epochs and data order), gives the records of the grid's cell, code for code: the
    cell is the trainer and the schedule, nothing else."""
    import copy

    from quantbench.method import DATA_ORDER, derive_seed
    from quantbench.training.loop import make_optimizer, train_epoch

    task, kwargs, ref = digits_reference
    cls = get_method(method)
    p = make_params(cls.Params, {"epochs": 1, "steps": 2} if method == "idc" else {"epochs": 1}, method)
    cell = cls(p).compress(ref, Budget(bits), RunContext(task, "lenet300", kwargs, seed=0, show_progress=False))
    model = copy.deepcopy(ref).requires_grad_(True)
    trainer = {"qat": lambda: library.QAT(model, bits), "lsq": lambda: library.LSQ(model, bits),
               "opq": lambda: library.OPQ(model, bits), "idc": lambda: library.IDC(model, bits),
               "prune_quant_uniform": lambda: library.OPQ(model, bits, uniform=True)}[method]()
    forward = None if method == "idc" else trainer
    for k in range(getattr(p, "steps", 1)):
        opt = make_optimizer(trainer.parameters(), p.optimizer, p.lr * getattr(p, "lr_decay", 1.0)**k, p.momentum)
        for epoch in range(p.epochs):
            order = k * 101 + epoch if method == "idc" else epoch
            train_epoch(model, task, opt, p.batch_size, derive_seed(0, DATA_ORDER, order), torch.device("cpu"),
                        forward=forward, epoch=epoch)
        if method == "idc":
            trainer.c_step()
    mine = trainer.finalize()
    for name, record in cell.records.items():
        if isinstance(record, QuantizedTensor):
            assert np.array_equal(mine.records[name].codes, record.codes), name
    assert mine.stats() == cell.stats()


@pytest.mark.parametrize("make, message", [
    (lambda m: library.QAT(m, 2.5), r"QAT\(bits=2.5\): expected a whole number of bits in \[1, 16\]"),
    (lambda m: library.LSQ(m, 1), r"LSQ\(bits=1\): expected a whole number of bits in \[2, 16\]"),
    (lambda m: library.OPQ(m, 12), r"OPQ\(bits=12\): expected bits per weight in \[0.05, 10\]"),
    (lambda m: library.IDC(m, 3, codebook="ternary"), r"IDC\(bits=3\): the ternary codebook does not serve"),
    (lambda m: library.dc(m, 2, codebook="scaled"), r"dc\(codebook='scaled'\): give the unit codebook"),
    (lambda m: library.DiffQ(m, min_bits=4, init_bits=2), r"DiffQ\(min_bits=4, init_bits=2, max_bits=15.0\): "
                                                          r"expected 0 < min_bits < init_bits < max_bits"),
    (lambda m: library.DiffQ(m, noise="pink"), r"DiffQ\(noise='pink'\): expected 'uniform' or 'gaussian'"),
    (lambda m: library.DiffQ(m, min_size=1.0), r"DiffQ\(min_size=1.0\): no weight of Sequential is that large"),
    (lambda m: library.SizeController(library.DiffQ(m), 2, rate=-0.1), r"SizeController\(rate=-0.1\): expected a rate"),
    (lambda m: library.QAT(nn.ReLU(), 2), r"QAT\(model\): ReLU has no Linear or Conv weight"),
])
def test_a_trainer_refuses_a_bad_argument_naming_it(make, message):
    with pytest.raises(ConfigError, match=message):
        make(nn.Sequential(nn.Linear(4, 3)))


def test_the_size_controller_follows_its_update_and_the_projection_meets_the_budget():
    """λ ← λ · exp(η (bpw − target) / target), bpw the expected bits per weight (side information
    included), computed here by hand from the widths; after project() the rounded widths' bpw is
    within the target and one more shift step would exceed it."""
    torch.manual_seed(0)
    dq = library.DiffQ(nn.Sequential(nn.Linear(64, 32), nn.Linear(32, 8)), group_size=4, init_bits=6.0,
                       size_penalty=2.0)
    control = library.SizeController(dq, bits=3, rate=0.5)
    groups = [(q.group_sizes, q.bits().detach(), q.n_groups, q.numel) for q in dq.quantizers.values()]
    bits = sum(float((n * b).sum()) + 4 * g + 64 for n, b, g, _ in groups)
    bpw = bits / sum(numel for *_, numel in groups)
    control.step()
    assert float(dq.lam) == pytest.approx(2.0 * np.exp(0.5 * (bpw - 3) / 3))
    shift = control.project()
    from quantbench.methods.diffq import rounded_bpw
    assert rounded_bpw(dq.quantizers) <= 3 < rounded_bpw(dq.quantizers, 1e-6 * abs(shift) + 1e-3)
