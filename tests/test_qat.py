"""The DiffQ paper's baselines: QAT (straight-through estimator) and LSQ (learned step size)."""

from __future__ import annotations

import pytest
import torch
from helpers.jobs import compress_digits

from quantbench.method import Budget
from quantbench.methods import get_method
from quantbench.methods.qat import lsq_quantize


def test_lsq_step_gradient_matches_the_paper():
    """∂ŵ/∂s = −w/s + round(w/s) inside the range, −Q_N below, Q_P above (times g)."""
    w = torch.tensor([-3.0, -0.74, -0.2, 0.1, 0.55, 0.9, 2.5], requires_grad=True)
    s = torch.tensor(0.5, requires_grad=True)
    g = 0.3
    upstream = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    (lsq_quantize(w, s, 2, g) * upstream).sum().backward()  # Q_N = 2, Q_P = 1
    assert w.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]  # the STE inside [−Q_N s, Q_P s] only
    w = w.detach()
    v = w / 0.5
    expected = torch.where(v <= -2, torch.tensor(-2.0), torch.where(v >= 1, torch.tensor(1.0), -v + torch.round(v)))
    assert s.grad.item() == pytest.approx(g * expected.sum().item(), rel=1e-6)
    assert lsq_quantize(w, torch.tensor(0.5), 2, g).tolist() == [-1.0, -0.5, -0.0, 0.0, 0.5, 0.5, 0.5]


@pytest.mark.parametrize("name", ["qat", "lsq"])
def test_baselines_train_to_the_grid(name, digits_reference):
    """Each trains at 4 bits on digits, stores b bits plus its range per tensor, and logs its own
    per-epoch loss."""
    cm, metrics, ctx = compress_digits(name, 4, digits_reference, epochs=2)
    assert metrics["accuracy"] > 90
    assert [(k, step) for k, _, step in ctx.step_metrics] == [(f"{name}/train_loss", 0), (f"{name}/train_loss", 1)]
    assert cm.stats()["bpw"] == pytest.approx(4 + 3 * 64 / (64 * 300 + 300 * 100 + 100 * 10))  # + range per tensor


def test_each_serves_integer_budgets_from_its_fewest_bits():
    qat, lsq = get_method("qat"), get_method("lsq")
    assert qat.serves(Budget(1), qat.Params()) and not lsq.serves(Budget(1), lsq.Params())
    assert all(m.serves(Budget(b), m.Params()) for m in (qat, lsq) for b in (2, 16))
    assert not any(m.serves(Budget(b), m.Params()) for m in (qat, lsq) for b in (1.58, 17))
    assert qat.family == lsq.family == "DiffQ"  # their table group: the DiffQ paper's baselines
