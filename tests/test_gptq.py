"""GPTQ against the paper's algorithm written as a plain loop, and on networks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.data import Inputs
from torch import nn

from quantbench.data import Task
from quantbench.format import AffineGrid
from quantbench.method import RunContext
from quantbench.methods.gptq import GPTQParams, SingularHessian, gptq_layer, quantize_network
from quantbench.methods.ptq import calibration_batches, layer_rows
from quantbench.methods.uniform import nearest_code, uniform_grid


def obs_loop(w: torch.Tensor, h: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, qmax: int, damp: float,
             act_order: bool) -> torch.Tensor:
    """Frantar et al., Algorithm 1 without lazy blocks or the Cholesky form: quantize one column, spread
    its error over the columns still to come with the inverse Hessian's row, then remove the column from
    the inverse (H⁻¹ ← H⁻¹ − H⁻¹_:j H⁻¹_j: / H⁻¹_jj)."""
    w, h = w.double().clone(), h.double().clone()
    n = w.shape[1]
    for j in range(n):
        if h[j, j] == 0:
            h[j, j] = 1.0
            w[:, j] = 0.0
    h += damp * torch.diagonal(h).mean() * torch.eye(n, dtype=torch.float64)
    order = sorted(range(n), key=lambda j: -float(h[j, j])) if act_order else list(range(n))
    hinv = torch.linalg.inv(h)
    codes = torch.zeros(w.shape, dtype=torch.long)
    for pos, j in enumerate(order):
        c = torch.clamp(torch.round(w[:, j] / scale + zero), 0, qmax)
        codes[:, j] = c.long()
        e = (w[:, j] - scale * (c - zero)) / hinv[j, j]
        for k in order[pos + 1:]:
            w[:, k] -= e * hinv[j, k]
        hinv = hinv - torch.outer(hinv[:, j], hinv[j, :]) / hinv[j, j]
    return codes


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("per_channel", [False, True])
def test_codes_equal_the_plain_loop(seed, act_order, per_channel):
    gen = torch.Generator().manual_seed(seed)
    n_out, n, rows = 6, 37, 200
    mix = torch.randn(n, n, generator=gen, dtype=torch.float64)
    x = torch.randn(rows, n, generator=gen, dtype=torch.float64) @ mix  # correlated inputs
    x[:, 5] = 0.0  # a dead input
    h = 2 * x.T @ x
    w = torch.randn(n_out, n, generator=gen, dtype=torch.float64)
    levels = [3, 4, 8, 16][seed]
    grid = uniform_grid(w, levels, "minmax", per_channel)
    scale, zero = (torch.from_numpy(v) for v in (grid.scale, grid.zero))
    expected = obs_loop(w, h, scale, zero, levels - 1, 0.01, act_order)
    for block in (1, 8, 128):  # lazy updates every column, in blocks that do not divide N, in one block
        got = gptq_layer(w, h, grid, levels - 1, damp=0.01, block=block, act_order=act_order)
        assert torch.equal(got, expected), block


def test_error_feedback_lowers_the_layer_output_error_below_rtn():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(500, 64, generator=gen, dtype=torch.float64) @ torch.randn(64, 64, generator=gen,
                                                                               dtype=torch.float64)
    w = torch.randn(16, 64, generator=gen, dtype=torch.float64)
    grid = uniform_grid(w, 4)
    scale, zero = (torch.from_numpy(v) for v in (grid.scale, grid.zero))
    rtn = scale * (nearest_code(w, scale, zero, 3) - zero)
    gptq = scale * (gptq_layer(w, 2 * x.T @ x, grid, 3).double() - zero)
    assert torch.linalg.norm(x @ (w - gptq).T) < 0.8 * torch.linalg.norm(x @ (w - rtn).T)  # 0.71 here


def test_a_hessian_that_is_not_positive_definite_names_the_layer():
    h = torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=torch.float64)
    w = torch.randn(3, 2, dtype=torch.float64)
    with pytest.raises(SingularHessian, match="features.3: H .* not positive definite .* damp 0"):
        gptq_layer(w, h, uniform_grid(w, 4), 3, damp=0.0, name="features.3")


def test_network_layers_use_the_inputs_of_the_quantized_prefix():
    """The second layer's codes are GPTQ's on H from the input it sees once the first layer (a grouped
    conv, each group on its own H) is quantized; every weight lies on RTN's grid."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1, groups=2), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 5 * 5, 3))
    x = torch.randn(40, 4, 5, 5)
    task = Task("toy", Inputs(x), Inputs(x[:4]), (4, 5, 5), 3)
    params = GPTQParams(calib_samples=40, calib_batch=16, per_channel=True)
    ctx = RunContext(task, "toy", {}, seed=0, show_progress=False)
    records = quantize_network(model, 4, params, calibration_batches(ctx, params.calib_samples, params.calib_batch))
    assert set(records) == {"0.weight", "3.weight"}
    conv = model[0]
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(0))  # the calibration sample's order
    xs = x[perm].double()
    w0 = conv.weight.detach().double()
    grid0 = uniform_grid(w0, 4, per_channel=True)
    for g in range(2):
        rows = layer_rows(conv, xs, g)
        sl = slice(3 * g, 3 * (g + 1))
        sub = AffineGrid(grid0.scale[sl], grid0.zero[sl])
        codes = gptq_layer(w0[sl].reshape(3, -1), 2 * rows.T @ rows, sub, 3)
        assert np.array_equal(records["0.weight"].codes.reshape(6, -1)[sl], codes.numpy())
    quant_conv = nn.Conv2d(4, 6, 3, padding=1, groups=2).double()
    quant_conv.load_state_dict({"weight": records["0.weight"].dequantize().double(), "bias": conv.bias.double()})
    hidden = torch.relu(quant_conv(xs)).flatten(1)
    w1 = model[3].weight.detach().double()
    codes1 = gptq_layer(w1, 2 * hidden.T @ hidden, uniform_grid(w1, 4, per_channel=True), 3)
    assert np.array_equal(records["3.weight"].codes.reshape(3, -1), codes1.numpy())
