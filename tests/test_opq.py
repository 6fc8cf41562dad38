"""OPQ: the closed-form error model against numerical integration, the allocation against a
brute-force grid search, the format invariants, and the paper's ordering on digits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers.jobs import compress_digits

from quantbench.methods.opq import (
    _STEPS,
    LayerStats,
    allocate,
    channel_scales,
    layer_bits,
    pruning_error,
    shared_codebook,
    survivor_distortion,
)

V = np.linspace(0.0, 30.0, 60001)  # quadrature grid for |v|, v ~ Laplace(0, 1)
PDF = np.exp(-V)  # density of |v|


def numeric_error(t: float, step: float, k: int) -> float:
    """E[(v − Q(v))²] by the trapezoid rule: |v| <= t -> 0, else nearest of t + (i − ½)Δ, clipped."""
    levels = t + (np.arange(1, 2 ** (k - 1) + 1) - 0.5) * step
    q = np.where(V <= t, 0.0, levels[np.clip(np.round((V - t) / step + 0.5).astype(int) - 1, 0, levels.size - 1)])
    return float(np.trapezoid((V - q) ** 2 * PDF, V))


@pytest.mark.parametrize("step, k", [(0.3, 1), (0.8, 2), (0.5, 3), (0.2, 4)])
def test_closed_form_survivor_error_matches_integration(step, k):
    for t in (0.0, 0.7, 2.0):
        p = math.exp(-t)
        pruned = float(np.trapezoid(np.where(V <= t, V**2, 0.0) * PDF, V))
        assert pruning_error(np.array(p)) == pytest.approx(pruned, abs=2e-4)  # trapezoid error at the jump
        closed = pruned + p * survivor_distortion(step, 2 ** (k - 1))
        assert closed == pytest.approx(numeric_error(t, step, k), abs=2e-4)  # quadrature error at the jumps


def test_optimal_step_is_the_minimum():
    for k in (1, 2, 3, 4):
        step, value = _STEPS[k]
        grid = np.linspace(0.02, 3.0, 600)
        assert value <= min(survivor_distortion(s, 2 ** (k - 1)) for s in grid) + 1e-9


def test_allocation_matches_a_brute_force_grid_search_for_two_layers():
    rng = np.random.default_rng(0)
    shapes = [(20, 100), (10, 50)]  # (channels, weights per channel)
    layers = []
    for i, (c, per) in enumerate(shapes):
        b = rng.uniform(0.02, 0.1, c)
        layers.append(LayerStats(f"l{i}", c * per, c, float((b**2).sum()) * per))
    budget = 2.0
    total = budget * sum(la.numel for la in layers)
    # brute force over (t, Δ, k) per layer with the numerically integrated error
    ts = np.concatenate([[0.0], np.linspace(0.05, 3.5, 40)])
    steps = np.linspace(0.05, 2.5, 40)
    tables = []
    for la in layers:
        rows = []
        for k in (1, 2, 3, 4):
            for t in ts:
                kept = max(1, round(math.exp(-t) * la.numel))
                bits = float(layer_bits(la.numel, la.channels, np.array(kept), k))
                err = min(numeric_error(t, s, k) for s in steps)
                rows.append((la.weight * err, bits))
        tables.append(np.array(rows))
    a, b = tables
    best = min(ea + eb for ea, ba in a for eb, bb in b if ba + bb <= total)
    # ours, evaluated with the same numerical integration
    allocs = allocate(layers, budget)
    ours = sum(la.weight * numeric_error(-math.log(al.keep), _STEPS[al.bits][0], al.bits)
               for la, al in zip(layers, allocs, strict=True))
    used = sum(float(layer_bits(la.numel, la.channels, np.array(max(1, round(al.keep * la.numel))), al.bits))
               for la, al in zip(layers, allocs, strict=True))
    assert used <= total and used >= 0.98 * total
    assert ours <= best * 1.02, (ours, best)


def _run(name, bits, digits_reference, **params):
    cm, metrics, _ = compress_digits(name, bits, digits_reference, **params)
    return cm, metrics["accuracy"]


def test_records_masks_and_codebooks(digits_reference):
    oneshot, _ = _run("opq_oneshot", 2, digits_reference)
    tuned, _ = _run("opq", 2, digits_reference, epochs=2)
    _, _, ref = digits_reference
    for name, rec in tuned.records.items():
        if type(rec).__name__ != "QuantizedTensor":
            continue
        before = oneshot.records[name]
        assert (rec.mask is None) == (before.mask is None)
        if rec.mask is not None:
            assert np.array_equal(rec.mask, before.mask)  # masks fixed by the one-shot allocation
        assert np.array_equal(rec.codebook.values, before.codebook.values)
        # every weight = shared codebook value x its channel's scale; pruned ones exactly 0
        dense = rec.dequantize().reshape(rec.shape[0], -1).double()
        mask = np.ones(rec.numel, bool) if rec.mask is None else rec.mask
        kept = torch.from_numpy(mask.reshape(rec.shape[0], -1))
        assert torch.all(dense[~kept] == 0)
        values = torch.from_numpy(rec.codebook.values).float().double()
        scale = torch.from_numpy(rec.channel_scale).float().double()
        for c in range(rec.shape[0]):
            ratio = dense[c][kept[c]] / scale[c]
            assert torch.all(torch.isclose(ratio[:, None], values[None, :], rtol=1e-6).any(dim=1))
        np.testing.assert_allclose(rec.channel_scale, channel_scales(ref.state_dict()[name]).numpy(), rtol=1e-6)
        assert rec.codebook.values.size == 2 ** rec.bits
        np.testing.assert_allclose(np.sort(rec.codebook.values), np.sort(
            shared_codebook(type("A", (), {"bits": rec.bits, "keep": rec.kept / rec.numel})())), rtol=1e-3)


@pytest.mark.parametrize("budget", [1.0, 2.0, 4.0])
def test_achieved_bpw_within_two_percent(budget, digits_reference):
    for name in ("opq_oneshot", "prune_quant_uniform"):
        cm, _ = _run(name, budget, digits_reference, epochs=0)
        assert abs(cm.stats()["bpw"] - budget) <= 0.02 * budget


def test_finetuning_and_the_analytic_allocation_pay_off_at_low_budgets(digits_reference):
    # at 1.5 bpw the gaps are 6 and 10 points on this seed; at 2 bpw the one-shot allocation and
    # the uniform (k, p) are within a point of each other and change order with the data split
    _, opq = _run("opq", 1.5, digits_reference)
    _, oneshot = _run("opq_oneshot", 1.5, digits_reference)
    _, uniform = _run("prune_quant_uniform", 1.5, digits_reference, epochs=0)
    assert opq > oneshot + 3, (opq, oneshot)
    assert oneshot > uniform + 5, (oneshot, uniform)
