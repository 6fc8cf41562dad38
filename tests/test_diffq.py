"""DiffQ against the authors' package (oracle), the budget controller and the final widths."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from helpers.jobs import compress_digits
from torch import nn
from torch.nn.utils import parametrize

from quantbench.method import Budget, ConfigError, RunContext, make_params
from quantbench.methods import get_method
from quantbench.methods.diffq import PseudoQuantizer, range_record


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 48, bias=False), nn.ReLU(), nn.Linear(48, 12, bias=False))


def _ours(model: nn.Module, group_size: int, logits: list[torch.Tensor]) -> list[PseudoQuantizer]:
    out = []
    for layer, logit in zip((model[0], model[2]), logits, strict=True):
        q = PseudoQuantizer(layer.weight.numel(), group_size, 2.0, 15.0, 8.0, "uniform", torch.Generator())
        with torch.no_grad():
            q.logit.copy_(logit)
        parametrize.register_parametrization(layer, "weight", q)
        out.append(q)
    return out


@pytest.mark.parametrize("group_size", [4, 16])
def test_size_term_and_quantized_weights_agree_with_the_official_package(group_size):
    official = pytest.importorskip("diffq", reason="the authors' diffq package (dev extra) is the oracle")
    model = _mlp()
    theirs = official.DiffQuantizer(copy.deepcopy(model), min_size=0.0, group_size=group_size, min_bits=2,
                                    max_bits=15, init_bits=8)
    theirs.no_optimizer()
    gen = torch.Generator().manual_seed(group_size)
    logits = [torch.randn(p.numel() // group_size, generator=gen) * 2 for p in model.parameters()]
    for qp, logit in zip(theirs._qparams, logits, strict=True):
        with torch.no_grad():
            qp.logit.copy_(logit)
    mine = _ours(model, group_size, logits)
    # sizes: ours counts 4 bits per group width; the package counts 8 + ceil(log2(1 + max b - b_min)) per
    # group. With that one accounting difference put back, the differentiable sizes are equal.
    ours_mb = sum(q.size_bits() for q in mine) / (8 * 2**20)
    adjust = 0.0
    for q in mine:
        bits_bits = math.ceil(math.log2(1 + (q.bits().max().round().item() - 2)))
        adjust += (8 + bits_bits * q.n_groups - 4 * q.n_groups) / (8 * 2**20)
    assert float((ours_mb + adjust).detach()) == pytest.approx(float(theirs.model_size().detach()), abs=1e-6)
    # gradients of the size with respect to the logits agree too
    (ours_mb + adjust).backward()
    theirs.model_size().backward()
    for q, qp in zip(mine, theirs._qparams, strict=True):
        assert torch.allclose(q.logit.grad, qp.logit.grad, rtol=1e-5, atol=1e-12)
    # true quantization: same rounded widths, same range, same weights
    for q, qp in zip(mine, theirs._qparams, strict=True):
        levels, scales, bits = theirs._quantize_param(qp)
        assert torch.equal(q.rounded_bits().long(), bits.long())
        rec = range_record(qp.param.data, q.rounded_bits(), group_size)
        assert np.array_equal(rec.codes.reshape(-1), levels.reshape(-1).long().numpy())
        expected = theirs._unquantize_param(qp, (levels, scales, bits))
        assert torch.allclose(rec.dequantize(), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("noise", ["uniform", "gaussian"])
def test_training_forward_adds_noise_of_the_quantization_step(noise):
    w = torch.randn(200, 100)
    q = PseudoQuantizer(w.numel(), 50, 1.0, 15.0, 4.0, noise, torch.Generator().manual_seed(0))
    noisy = q(w) - w
    step = (w.max() - w.min()) / (2**4 - 1)
    if noise == "uniform":
        assert noisy.abs().max() <= step / 2 + 1e-6
        assert noisy.std().item() == pytest.approx(step.item() / math.sqrt(12), rel=0.05)
    else:
        assert noisy.std().item() == pytest.approx(step.item() / 2, rel=0.05)


@pytest.mark.parametrize("numel,group_size", [(80, 16), (75, 16), (30, 30)])
def test_range_noise_gradients_are_those_of_the_plain_expression(numel, group_size):
    """The fused pseudo-quantization noise against autograd of w + ε (max w − min w) / (2^b − 1),
    written element by element (75 = 4 full groups of 16 and one of 11)."""
    from quantbench.methods.diffq import _RangeNoise

    gen = torch.Generator().manual_seed(numel)
    w = torch.randn(numel, generator=gen, dtype=torch.float64, requires_grad=True)
    groups = -(-numel // group_size)
    bits = (2 + 6 * torch.rand(groups, generator=gen, dtype=torch.float64)).requires_grad_()
    eps = torch.rand(numel, generator=gen, dtype=torch.float64) - 0.5
    upstream = torch.randn(numel, generator=gen, dtype=torch.float64)

    fused = _RangeNoise.apply(w, 2**bits - 1, eps, group_size)
    g_w, g_b = torch.autograd.grad((fused * upstream).sum(), (w, bits))
    widths = torch.stack([bits[i // group_size] for i in range(numel)])
    plain = w + eps * (w.max() - w.min()) / (2**widths - 1)
    r_w, r_b = torch.autograd.grad((plain * upstream).sum(), (w, bits))
    assert torch.allclose(fused, plain, rtol=1e-14) and torch.allclose(g_w, r_w) and torch.allclose(g_b, r_b)
    assert torch.autograd.gradcheck(lambda w, b: _RangeNoise.apply(w, 2**b - 1, eps, group_size), (w, bits))


def test_eval_forward_is_the_records_quantization_in_the_weights_dtype():
    """The device-resident eval forward (float32) against the float64 record and against brute force:
    every weight on the nearest of its group's 2^b levels of [min w, max w]."""
    torch.manual_seed(3)
    w = torch.randn(37, 29)
    q = PseudoQuantizer(w.numel(), 50, 1.0, 15.0, 4.0, "uniform", torch.Generator().manual_seed(0))
    with torch.no_grad():
        q.logit.copy_(torch.randn(q.n_groups) * 3)
    q.eval()
    bits = q.rounded_bits()
    out = q(w)
    assert out.dtype == torch.float32 and len(set(bits.tolist())) > 3
    rec = range_record(w, bits, 50).dequantize()
    span = float(w.max() - w.min())
    step = (span / (2 ** torch.repeat_interleave(bits, 50)[: w.numel()] - 1)).reshape(w.shape)
    differ = (out - rec).abs() > 4e-7 * span
    # float32 can round an exact tie of float64 the other way (at 15 bits a code is 2^-15 of the range)
    assert differ.sum() <= 2 and torch.allclose((out - rec).abs()[differ], step[differ], rtol=1e-3)
    lo, flat = float(w.min()), w.reshape(-1).double()
    for j, b in enumerate(bits.tolist()):
        levels = lo + torch.arange(2 ** int(b), dtype=torch.float64) * span / (2**b - 1)
        group = flat[50 * j: 50 * (j + 1)]
        nearest = (group[:, None] - levels[None, :]).abs().min(dim=1).values
        assert ((group - out.reshape(-1)[50 * j: 50 * (j + 1)].double()).abs() <= nearest + 1e-6 * span).all()


def _run(name, bits, digits_reference, **params):
    cm, metrics, ctx = compress_digits(name, bits, digits_reference, **params)
    return cm, metrics["accuracy"], ctx


def test_controller_meets_three_bits_within_five_percent(digits_reference):
    cm, acc, ctx = _run("diffq", 3.0, digits_reference, epochs=6)
    assert abs(cm.stats()["bpw"] - 3.0) <= 0.05 * 3.0
    assert acc > 90
    bits_logged = {k for k, _, _ in ctx.step_metrics if k.startswith("diffq/bits/")}
    assert len(bits_logged) == 3  # per-layer bit widths over epochs
    widths = np.concatenate([r.group_bits for r in cm.records.values() if hasattr(r, "group_bits")
                             and r.group_bits is not None])
    assert widths.min() >= 1 and len(set(widths.tolist())) > 1  # learned, not uniform


def test_fixed_lambda_keeps_lambda(digits_reference):
    _, _, ctx = _run("diffq", 3.0, digits_reference, epochs=2, budget_control=False, size_penalty=5.0)
    assert {v for k, v, _ in ctx.step_metrics if k == "diffq/lambda"} == {5.0}
    assert not any(k == "diffq/shift" for k, _, _ in ctx.step_metrics)
    cls = get_method("diffq_fixed")
    params = make_params(cls.Params, {"penalties": {2: 7.0}, "epochs": 1}, "diffq_fixed")
    assert cls.serves(Budget(2), params) and not cls.serves(Budget(3), params)
    task, kwargs, ref = digits_reference
    ctx = RunContext(task, "lenet300", kwargs, seed=0, show_progress=False)
    cls(params).compress(ref, Budget(2), ctx)
    assert {v for k, v, _ in ctx.step_metrics if k == "diffq/lambda"} == {7.0}


def test_the_controller_rate_is_the_step_of_lambdas_update(digits_reference):
    """λ ← λ·exp(η (bpw − target)/target) after every step: with η = 0 λ stays where it starts;
    with η > 0 it grows while the widths (from init_bits 8) are above a 3-bit target."""
    _, _, still = _run("diffq", 3.0, digits_reference, epochs=2, control_rate=0.0, size_penalty=2.0)
    assert {v for k, v, _ in still.step_metrics if k == "diffq/lambda"} == {2.0}
    _, _, moving = _run("diffq", 3.0, digits_reference, epochs=2, control_rate=0.05, size_penalty=2.0)
    assert [v for k, v, _ in moving.step_metrics if k == "diffq/lambda"][0] > 2.0


def test_the_bit_widths_learn_at_bits_lr(digits_reference):
    """Without the controller's projection, the widths move only by their own optimizer: at
    bits_lr 0 every group keeps init_bits; at the default rate they spread."""
    def widths(bits_lr: float) -> np.ndarray:
        cm, _, _ = _run("diffq", 3.0, digits_reference, epochs=2, budget_control=False, bits_lr=bits_lr,
                        init_bits=6.0)
        return np.concatenate([r.group_bits for r in cm.records.values() if getattr(r, "group_bits", None) is not None])

    assert set(widths(0.0).tolist()) == {6}
    assert len(set(widths(0.05).tolist())) > 1


def test_the_result_does_not_depend_on_the_reference_s_train_or_eval_mode(digits_reference):
    """Registering the parametrization runs it once; it must draw the same noise whether the
    reference arrives in eval mode (after an evaluation, in process) or in train mode (a job)."""
    task, kwargs, ref = digits_reference
    packed = []
    for mode in ("eval", "train"):
        model = copy.deepcopy(ref)
        model.train(mode == "train")
        cls = get_method("diffq")
        ctx = RunContext(task, "lenet300", kwargs, seed=0, show_progress=False)
        packed.append(cls(make_params(cls.Params, {"epochs": 1}, "diffq")).compress(model, Budget(3), ctx).pack())
    assert packed[0] == packed[1]


def test_one_width_per_tensor_serves_budgets_down_to_min_bits():
    """group_size 0 stores one 4-bit width per tensor, not 4 bits per weight."""
    cls = get_method("diffq")
    per_tensor = make_params(cls.Params, {"group_size": 0, "min_bits": 2.0}, "diffq")
    grouped = make_params(cls.Params, {"group_size": 16, "min_bits": 2.0}, "diffq")
    assert cls.serves(Budget(2), per_tensor) and not cls.serves(Budget(1.5), per_tensor)
    assert not cls.serves(Budget(2), grouped) and cls.serves(Budget(2.25), grouped)


@pytest.mark.parametrize("numel", [5, 1024, 1025, 3000, 6144])
def test_arg_extremes_are_the_argmin_and_argmax(numel):
    from quantbench.methods.diffq import arg_extremes

    gen = torch.Generator().manual_seed(numel)
    for _ in range(20):
        x = torch.randn(numel, generator=gen)
        for direct_below in (0, 1 << 16):  # the row-wise reduction, and the direct one
            assert arg_extremes(x, direct_below=direct_below).tolist() == [int(x.argmin()), int(x.argmax())]
    x = torch.zeros(numel)
    x[-1], x[0] = 5.0, -5.0  # the extremes at the two ends (the tail and the first row)
    assert arg_extremes(x, direct_below=0).tolist() == [0, numel - 1]


def test_frozen_widths_train_through_the_quantized_weights_with_the_ste():
    """After ``freeze(quantized_training=True)`` the training forward is the eval forward (every
    weight on the nearest of its group's levels, brute force) and ∂ŵ/∂w is the identity; the logits
    are out of the graph. With ``quantized_training=False`` it is w + noise of the frozen widths."""
    torch.manual_seed(5)
    w = torch.randn(40, 20)
    q = PseudoQuantizer(w.numel(), 16, 1.0, 15.0, 4.0, "uniform", torch.Generator().manual_seed(0))
    with torch.no_grad():
        q.logit.copy_(torch.randn(q.n_groups) * 3)
    widths = q.bits().detach().round().clamp(1, 15)
    q.freeze(quantized_training=True)
    assert torch.equal(q.bits(), widths) and not q.logit.requires_grad
    w = w.requires_grad_()
    upstream = torch.randn(40, 20)
    out = q(w)
    (out * upstream).sum().backward()
    assert torch.equal(w.grad, upstream)
    w = w.detach()
    lo, span, flat = float(w.min()), float(w.max() - w.min()), w.detach().reshape(-1).double()
    for j, b in enumerate(widths.tolist()):
        levels = lo + torch.arange(2 ** int(b), dtype=torch.float64) * span / (2**b - 1)
        group, got = flat[16 * j: 16 * (j + 1)], out.detach().reshape(-1)[16 * j: 16 * (j + 1)].double()
        nearest = (group[:, None] - levels[None, :]).abs().min(dim=1).values
        assert ((group - got).abs() <= nearest + 1e-6 * span).all()
    q.eval()
    assert torch.equal(q(w.detach()), out.detach())

    noisy = PseudoQuantizer(w.numel(), 16, 1.0, 15.0, 4.0, "uniform", torch.Generator().manual_seed(0))
    with torch.no_grad():
        noisy.logit.copy_(q.logit)
    noisy.freeze(quantized_training=False)
    step = span / (2 ** torch.repeat_interleave(widths, 16)[: w.numel()] - 1)
    assert ((noisy(w.detach()) - w.detach()).reshape(-1).abs() <= step / 2 + 1e-6).all()


def test_the_final_epochs_keep_the_budgeted_widths(digits_reference):
    """epochs 4, final_fraction 0.5: the widths projected onto the budget after epoch 1 are the
    artifact's (rounded); λ and the widths stop moving; the budget is met."""
    cm, _, ctx = _run("diffq", 2.0, digits_reference, epochs=4, final_fraction=0.5)
    assert cm.stats()["bpw"] <= 2.0 + 1e-9
    series = {}
    for k, v, step in ctx.step_metrics:
        series.setdefault(k, {})[step] = v
    assert sorted(series["diffq/shift"]) == [0, 1]  # projected after the learning epochs only
    assert series["diffq/lambda"][1] == series["diffq/lambda"][2] == series["diffq/lambda"][3]
    quantized = {n: r for n, r in cm.records.items() if getattr(r, "group_bits", None) is not None}
    assert len(quantized) == 3
    for name, record in quantized.items():
        by_epoch = series[f"diffq/bits/{name}"]
        assert by_epoch[2] == by_epoch[3] == pytest.approx(float(np.mean(record.group_bits)))


def test_all_final_epochs_still_meet_the_budget(digits_reference):
    """final_fraction 1: no epoch learns widths; the equal initial widths are projected before
    freezing, by one common shift: to 2 bits each (3 + 4/16 side bits would exceed 3 bpw)."""
    cm, acc, _ = _run("diffq", 3.0, digits_reference, epochs=2, final_fraction=1.0)
    widths = np.concatenate([r.group_bits for r in cm.records.values() if getattr(r, "group_bits", None) is not None])
    assert set(widths.tolist()) == {2} and cm.stats()["bpw"] <= 3.0 and acc > 90
    with pytest.raises(ConfigError, match="final_fraction"):
        _run("diffq", 3.0, digits_reference, epochs=2, final_fraction=1.5)


def test_the_final_forward_is_what_the_frozen_epochs_train_through(digits_reference):
    """``final_forward`` reaches the frozen epochs: from the same widths (frozen after the first
    epoch's projection), ``quantized`` (ŵ with the STE) and ``noise`` (w̃, the paper's forward, which
    benchmarks/diffq_peer.py and diffq_control.py measure) train different weights."""
    runs = {f: _run("diffq", 2.0, digits_reference, epochs=2, final_fraction=0.5, final_forward=f)[0]
            for f in ("quantized", "noise")}
    widths = {f: [r.group_bits.tolist() for r in cm.records.values() if getattr(r, "group_bits", None) is not None]
              for f, cm in runs.items()}
    assert widths["quantized"] == widths["noise"] and len(widths["noise"]) == 3
    assert runs["quantized"].pack() != runs["noise"].pack()
    assert all(cm.stats()["bpw"] <= 2.0 + 1e-9 for cm in runs.values())
