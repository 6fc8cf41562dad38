"""RTN against brute force: every weight must land on the nearest level of its K-level grid."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from quantbench.data import build_task
from quantbench.method import Budget, RunContext
from quantbench.methods.rtn import RTN, RTNParams
from quantbench.methods.uniform import fake_quantize_uniform, quantize_uniform


def brute_force_levels(w: np.ndarray, levels: int, scheme: str) -> np.ndarray:
    """All grid values for one tensor/channel, from the definitions written out by hand."""
    if scheme == "minmax":
        lo, hi = float(w.min()), float(w.max())
        return np.array([lo + k * (hi - lo) / (levels - 1) for k in range(levels)])
    m = float(np.abs(w).max())
    half = (levels - 1) // 2
    return np.array([m * k / half for k in range(-half, half + 1)])


GRIDS = [("minmax", k) for k in (2, 3, 4, 8, 256)] + [("symmetric", k) for k in (3, 5, 7, 15, 255)]


@pytest.mark.parametrize("scheme, levels", GRIDS)
@pytest.mark.parametrize("per_channel", [False, True])
def test_rtn_picks_the_nearest_level(scheme, per_channel, levels):
    torch.manual_seed(levels)
    w = torch.randn(6, 40)
    rec = quantize_uniform(w, levels, scheme, per_channel)
    q = rec.dequantize().double().numpy()
    rows = [w.numpy()] if not per_channel else [w.numpy()[c:c + 1] for c in range(6)]
    qrows = [q] if not per_channel else [q[c:c + 1] for c in range(6)]
    for wr, qr in zip(rows, qrows, strict=True):
        grid = brute_force_levels(wr.astype(np.float64), levels, scheme)
        dist = np.abs(wr.reshape(-1, 1) - grid.reshape(1, -1))
        best = grid[dist.argmin(axis=1)]
        # the chosen level is a grid level and (up to fp32 storage of the scale) the nearest one
        assert np.allclose(qr.reshape(-1), best, atol=1e-5 * np.abs(grid).max())
        assert np.abs(wr.reshape(-1) - qr.reshape(-1)).max() <= (grid[1] - grid[0]) / 2 + 1e-6
    side = (6 if per_channel else 1) * 2 * 32
    code_bits = rec.size_bits() - side
    # the codes cost what K levels cost: log2 K bits each (base-K packing: within 1 % above it)
    assert 240 * math.log2(levels) <= code_bits <= 240 * math.log2(levels) * 1.01 + 64
    if levels & (levels - 1) == 0:
        assert code_bits == 240 * int(math.log2(levels))


@pytest.mark.parametrize("scheme, levels", [g for g in GRIDS if g[1] <= 16])
@pytest.mark.parametrize("per_channel", [False, True])
def test_training_fake_quantizer_is_the_record_in_the_weights_dtype(scheme, per_channel, levels):
    """QAT's fake quantizer (float32, the weights' device) gives the record's values up to float32 rounding."""
    torch.manual_seed(10 + levels)
    w = torch.randn(8, 3, 5, 5)
    fake = fake_quantize_uniform(w, levels, scheme, per_channel)
    assert fake.dtype == torch.float32 and fake.shape == w.shape
    rec = quantize_uniform(w, levels, scheme, per_channel).dequantize()
    assert torch.allclose(fake, rec, rtol=0, atol=1e-6 * float(w.abs().max()))
    # exactly K levels per grid, never more
    groups = fake.reshape(8, -1) if per_channel else fake.reshape(1, -1)
    assert max(len(torch.unique(g)) for g in groups) <= levels


def test_symmetric_grid_holds_zero_and_constant_tensors_survive():
    rec = quantize_uniform(torch.tensor([0.0, 0.3, -1.0]), 3, "symmetric")
    assert rec.dequantize().tolist() == [0.0, 0.0, -1.0]
    assert rec.levels == 3 and rec.bits is None  # 3 levels packed in base 3, not at 2 bits
    const = torch.full((4,), 0.25)
    assert torch.equal(quantize_uniform(const, 8, "minmax").dequantize(), const)
    with pytest.raises(ValueError, match="odd"):
        quantize_uniform(torch.randn(5), 4, "symmetric")


def test_serves_the_budgets_whose_levels_its_grid_has():
    assert RTN.serves(Budget(4), RTNParams())
    assert not RTN.serves(Budget(1.5), RTNParams())  # 2^1.5 is no whole number of levels
    assert RTN.serves(Budget(1), RTNParams(scheme="minmax"))
    assert RTN.serves(Budget(1.58), RTNParams(scheme="minmax"))  # 3 levels over [min w, max w]
    assert RTN.serves(Budget(1.58), RTNParams(scheme="symmetric"))  # {−m, 0, m}
    assert not RTN.serves(Budget(2), RTNParams(scheme="symmetric"))  # 4 levels hold no symmetric grid with 0
    assert RTN.serves(Budget(math.log2(7)), RTNParams(scheme="symmetric"))
    assert not RTN.serves(Budget(17), RTNParams())


def test_rtn_quantizes_weights_and_keeps_biases_dense():
    task = build_task("digits")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    ctx = RunContext(task, "x", {}, seed=0, show_progress=False)
    cm = RTN(RTNParams()).compress(model, Budget(3), ctx)
    assert type(cm.records["1.weight"]).__name__ == "QuantizedTensor"
    assert type(cm.records["1.bias"]).__name__ == "DenseTensor"
    assert cm.stats()["bpw"] == pytest.approx(3 + 64 / 640)
