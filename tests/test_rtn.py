"""RTN against brute force: every weight must land on the nearest level of its b-bit grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from quantbench.data import build_task
from quantbench.method import Budget, RunContext
from quantbench.methods.rtn import RTN, RTNParams
from quantbench.uniform import fake_quantize_uniform, quantize_uniform


def brute_force_levels(w: np.ndarray, bits: int, scheme: str) -> np.ndarray:
    """All grid values for one tensor/channel, from the definitions written out by hand."""
    if scheme == "minmax":
        lo, hi = float(w.min()), float(w.max())
        return np.array([lo + k * (hi - lo) / (2**bits - 1) for k in range(2**bits)])
    m = float(np.abs(w).max())
    half = 2 ** (bits - 1) - 1
    return np.array([m * k / half for k in range(-half, half + 1)])


@pytest.mark.parametrize("scheme", ["minmax", "symmetric"])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_rtn_picks_the_nearest_level(scheme, per_channel, bits):
    torch.manual_seed(bits)
    w = torch.randn(6, 40)
    rec = quantize_uniform(w, bits, scheme, per_channel)
    q = rec.dequantize().double().numpy()
    rows = [w.numpy()] if not per_channel else [w.numpy()[c:c + 1] for c in range(6)]
    qrows = [q] if not per_channel else [q[c:c + 1] for c in range(6)]
    for wr, qr in zip(rows, qrows, strict=True):
        levels = brute_force_levels(wr.astype(np.float64), bits, scheme)
        dist = np.abs(wr.reshape(-1, 1) - levels.reshape(1, -1))
        best = levels[dist.argmin(axis=1)]
        # the chosen level is a grid level and (up to fp32 storage of the scale) the nearest one
        assert np.allclose(qr.reshape(-1), best, atol=1e-5 * np.abs(levels).max())
        assert np.abs(wr.reshape(-1) - qr.reshape(-1)).max() <= (levels[1] - levels[0]) / 2 + 1e-6
    assert rec.size_bits() == 240 * bits + (6 if per_channel else 1) * 2 * 32


@pytest.mark.parametrize("scheme", ["minmax", "symmetric"])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_training_fake_quantizer_is_the_record_in_the_weights_dtype(scheme, per_channel, bits):
    """QAT's fake quantizer (float32, the weights' device) gives the record's values up to float32 rounding."""
    torch.manual_seed(10 + bits)
    w = torch.randn(8, 3, 5, 5)
    fake = fake_quantize_uniform(w, bits, scheme, per_channel)
    assert fake.dtype == torch.float32 and fake.shape == w.shape
    rec = quantize_uniform(w, bits, scheme, per_channel).dequantize()
    assert torch.allclose(fake, rec, rtol=0, atol=1e-6 * float(w.abs().max()))
    # exactly 2**b levels (minmax) or 2**b - 1 (symmetric) per grid, never more
    groups = fake.reshape(8, -1) if per_channel else fake.reshape(1, -1)
    assert max(len(torch.unique(g)) for g in groups) <= 2**bits - (scheme == "symmetric")


def test_symmetric_grid_holds_zero_and_constant_tensors_survive():
    rec = quantize_uniform(torch.tensor([0.0, 0.3, -1.0]), 2, "symmetric")
    assert rec.dequantize().tolist() == [0.0, 0.0, -1.0]
    const = torch.full((4,), 0.25)
    assert torch.equal(quantize_uniform(const, 3, "minmax").dequantize(), const)


def test_serves_integer_budgets_only():
    assert RTN.serves(Budget(4), RTNParams())
    assert not RTN.serves(Budget(1.5), RTNParams())
    assert RTN.serves(Budget(1), RTNParams(scheme="minmax"))
    assert not RTN.serves(Budget(1), RTNParams(scheme="symmetric"))
    assert not RTN.serves(Budget(17), RTNParams())


def test_rtn_quantizes_weights_and_keeps_biases_dense():
    task = build_task("digits")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    ctx = RunContext(task, "x", {}, seed=0, show_progress=False)
    cm = RTN(RTNParams()).compress(model, Budget(3), ctx)
    assert type(cm.records["1.weight"]).__name__ == "QuantizedTensor"
    assert type(cm.records["1.bias"]).__name__ == "DenseTensor"
    assert cm.stats()["bpw"] == pytest.approx(3 + 64 / 640)
