"""GPFQ: the vectorised, Gram-matrix quantizer against a per-weight loop from the paper's
equations; the paper's error behaviour on Gaussian data; conv layers against an explicit unfold."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.data import Inputs
from torch import nn

from quantbench.data import Task
from quantbench.format import QuantizedTensor
from quantbench.method import Budget, RunContext, make_params
from quantbench.methods import get_method
from quantbench.methods.gpfq import GPFQParams, alphabet, gpfq_layer, quantize_network
from quantbench.methods.ptq import calibration_batches, layer_rows
from quantbench.methods.uniform import round_to_grid


def paper_loop(w: np.ndarray, x: np.ndarray, xt: np.ndarray, levels_of) -> np.ndarray:
    """Per neuron, per weight: q_t = Q(<X~_t, u_{t-1} + w_t X_t> / ||X~_t||^2), u_t = u_{t-1} + w_t X_t - q_t X~_t."""
    n_out, n = w.shape
    codes = np.zeros((n_out, n), dtype=np.int64)
    for i in range(n_out):
        levels = levels_of(i)
        u = np.zeros(x.shape[0])
        for t in range(n):
            norm2 = float(xt[:, t] @ xt[:, t])
            v = float(xt[:, t] @ (u + w[i, t] * x[:, t])) / norm2 if norm2 > 0 else w[i, t]
            k = int(np.argmin(np.abs(levels - v)))  # nearest level (ties: the lower one)
            codes[i, t] = k
            u = u + w[i, t] * x[:, t] - levels[k] * xt[:, t]
    return codes


@pytest.mark.parametrize("levels", [2, 3, 4, 8, 16, 255])
@pytest.mark.parametrize("per_channel", [False, True])
def test_alphabet_is_the_authors_linspace(levels, per_channel):
    """The authors' code (Lybrand & Saab; Zhang, Zhou & Saab): ``C · max|w| · linspace(−1, 1, round(2**bits))``."""
    gen = torch.Generator().manual_seed(levels)
    w = torch.randn(5, 30, generator=gen, dtype=torch.float64)
    grid, qmax = alphabet(w, levels, 1.3, per_channel)
    assert qmax == levels - 1
    for c in range(5 if per_channel else 1):
        top = 1.3 * float((w[c] if per_channel else w).abs().max())
        ours = grid.scale[c] * (np.arange(levels) - grid.zero[c])
        assert np.allclose(ours, top * np.linspace(-1, 1, levels), rtol=1e-6, atol=1e-7 * top)
        assert (0.0 in ours) == (levels % 2 == 1)  # an odd alphabet holds 0 exactly


@pytest.mark.parametrize("levels", [3, 4, 7, 8, 16])
@pytest.mark.parametrize("per_channel", [False, True])
def test_vectorised_quantizer_matches_the_per_weight_loop(levels, per_channel):
    gen = torch.Generator().manual_seed(levels)
    m, n, n_out = 40, 37, 6
    x = torch.randn(m, n, generator=gen, dtype=torch.float64)
    xt = x + 0.1 * torch.randn(m, n, generator=gen, dtype=torch.float64)  # earlier layers quantized
    xt[:, 5] = 0.0  # a dead input: ||X~_t|| = 0 -> plain rounding
    w = torch.randn(n_out, n, generator=gen, dtype=torch.float64)
    grid, qmax = alphabet(w, levels, 1.3, per_channel)

    def levels_of(i):
        c = i if per_channel else 0
        return grid.scale[c] * (np.arange(qmax + 1) - grid.zero[c])

    expected = paper_loop(w.numpy(), x.numpy(), xt.numpy(), levels_of)
    for block in (1, 8, 128):  # lazy updates in blocks must not change anything
        codes = gpfq_layer(w, xt.T @ x, xt.T @ xt, grid, qmax, block=block)
        assert np.array_equal(codes.numpy(), expected)


def _dequantize(codes: torch.Tensor, grid) -> torch.Tensor:
    """Through the format's own dequantization."""
    return QuantizedTensor(tuple(codes.shape), codes.numpy(), grid, bits=8).dequantize().double()


def _relative_error(x, w, q):
    return float(torch.linalg.norm(x @ w.T - x @ q.T) / torch.linalg.norm(x @ w.T))


@pytest.mark.parametrize("levels", [3, 4, 8, 16])
def test_gaussian_layer_error_below_msq_and_decreasing_with_width(levels):
    gen = torch.Generator().manual_seed(10 + levels)
    m, n_out = 64, 32
    errors = []
    for n in (128, 512, 2048):
        x = torch.randn(m, n, generator=gen, dtype=torch.float64)
        w = torch.randn(n_out, n, generator=gen, dtype=torch.float64)
        grid, qmax = alphabet(w, levels, 1.0, False)
        gpfq = _relative_error(x, w, _dequantize(gpfq_layer(w, x.T @ x, x.T @ x, grid, qmax), grid))
        msq = _relative_error(x, w, _dequantize(round_to_grid(w, grid, qmax), grid))
        assert gpfq < msq
        errors.append(gpfq)
    assert errors[0] > errors[1] > errors[2], errors


def explicit_patches(x: torch.Tensor, conv: nn.Conv2d, group: int) -> torch.Tensor:
    """Patches written out with loops: rows (batch, out_y, out_x), columns (channel, ky, kx)."""
    kh, kw = conv.kernel_size
    sh, sw = conv.stride
    ph, pw = conv.padding
    dh, dw = conv.dilation
    cin = conv.in_channels // conv.groups
    xp = torch.nn.functional.pad(x, (pw, pw, ph, ph))
    out_h = (x.shape[2] + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    out_w = (x.shape[3] + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    rows = []
    for b in range(x.shape[0]):
        for oy in range(out_h):
            for ox in range(out_w):
                rows.append([xp[b, group * cin + c, oy * sh + ky * dh, ox * sw + kx * dw]
                             for c in range(cin) for ky in range(kh) for kx in range(kw)])
    return torch.tensor(rows, dtype=x.dtype)


def test_conv_rows_match_an_explicit_unfold():
    conv = nn.Conv2d(6, 4, kernel_size=3, stride=2, padding=1, dilation=1, groups=2)
    x = torch.randn(2, 6, 7, 9, dtype=torch.float64)
    for group in range(2):
        got = layer_rows(conv, x, group)
        assert torch.equal(got, explicit_patches(x, conv, group))
    dil = nn.Conv2d(3, 2, kernel_size=(2, 3), stride=(2, 1), padding=(1, 2), dilation=2)
    assert torch.equal(layer_rows(dil, x[:, :3], 0), explicit_patches(x[:, :3], dil, 0))


def test_conv_network_quantized_like_the_explicit_computation():
    """A grouped, strided conv as the first layer: the method's codes equal GPFQ run on the
    explicitly unfolded calibration patches (X~ = X for the first layer)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2), nn.ReLU(), nn.Flatten(),
                          nn.Linear(6 * 4 * 4, 3))
    x = torch.randn(24, 4, 8, 8)
    task = Task("toy", Inputs(x), Inputs(x[:4]), (4, 8, 8), 3)
    ctx = RunContext(task, "toy", {}, seed=0, show_progress=False)
    params = GPFQParams(calib_samples=24, calib_batch=10, scale_factor=1.2)
    batches = calibration_batches(ctx, params.calib_samples, params.calib_batch)
    records = quantize_network(model, 7, params, batches, ctx.generator(1), memoryless=False)
    conv = model[0]
    idx = torch.randperm(24, generator=ctx.generator(0))
    calib = x[idx].double()
    w = conv.weight.detach().double().reshape(6, -1)
    grid, qmax = alphabet(conv.weight, 7, 1.2, False)
    for g in range(2):
        rows = explicit_patches(calib, conv, g)
        codes = gpfq_layer(w[3 * g:3 * (g + 1)], rows.T @ rows, rows.T @ rows, grid, qmax)
        assert np.array_equal(records["0.weight"].codes.reshape(6, -1)[3 * g:3 * (g + 1)], codes.numpy())
    assert set(records) == {"0.weight", "3.weight"}


def test_layer_rows_in_blocks_give_the_same_codes(monkeypatch):
    """G and H summed over small blocks of calibration samples (the memory bound for paper-size
    inputs) give the codes of the one-block computation, conv and linear layers alike."""
    import quantbench.methods.ptq as ptq

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    x = torch.randn(20, 3, 6, 6)
    task = Task("toy", Inputs(x), Inputs(x[:4]), (3, 6, 6), 5)
    params = GPFQParams(calib_samples=20, calib_batch=20)
    ctx = RunContext(task, "toy", {}, seed=0, show_progress=False)
    batches = calibration_batches(ctx, params.calib_samples, params.calib_batch)
    whole = quantize_network(model, 8, params, batches, ctx.generator(1), False)
    monkeypatch.setattr(ptq, "ROWS_BUDGET", 3 * 9 * 36 * 3)  # three samples per block: 7 blocks of a batch of 20
    assert len(ptq.row_blocks(model[0], x)) == 7
    blocks = quantize_network(model, 8, params, batches, ctx.generator(1), False)
    for name in whole:
        assert np.array_equal(whole[name].codes, blocks[name].codes), name


def test_stochastic_rounding_is_seeded_and_unbiased():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(4, 50, generator=gen, dtype=torch.float64)
    x = torch.randn(30, 50, generator=gen, dtype=torch.float64)
    grid, qmax = alphabet(w, 7, 1.0, False)
    a = gpfq_layer(w, x.T @ x, x.T @ x, grid, qmax, "stochastic", torch.Generator().manual_seed(1))
    b = gpfq_layer(w, x.T @ x, x.T @ x, grid, qmax, "stochastic", torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert _relative_error(x, w, _dequantize(a, grid)) < 0.5


@pytest.mark.parametrize("bits, levels, margin", [(1.58, 3, 20), (2, 4, 2)])
def test_gpfq_beats_msq_on_digits_at_low_bits(bits, levels, margin):
    from quantbench.data import build_task
    from quantbench.models import build_model
    from quantbench.training.loop import TrainSettings, seed_everything, train

    seed_everything(0)
    task = build_task("digits")
    kwargs = {"input_shape": [1, 8, 8], "num_classes": 10}
    ref = build_model("lenet300", **kwargs)
    train(ref, task, TrainSettings(epochs=10), 0, torch.device("cpu"), show_progress=False)
    acc = {}
    for name in ("gpfq", "msq"):
        cls = get_method(name)
        ctx = RunContext(task, "lenet300", kwargs, seed=0, show_progress=False)
        cm = cls(make_params(cls.Params, {}, name)).compress(ref, Budget(bits), ctx)
        acc[name] = task.evaluate(cm.to_dense(build_model("lenet300", **kwargs)))["accuracy"]
        # the alphabet is K = round(2**b) levels and the codes pay exactly for them
        for record in (r for r in cm.records.values() if isinstance(r, QuantizedTensor)):
            assert int(record.codes.max()) + 1 <= levels
        assert cm.stats()["bpw"] <= np.log2(levels) * 1.01 + 0.01
    assert acc["gpfq"] > acc["msq"] + margin, acc


def test_serves_the_budgets_that_are_whole_numbers_of_levels():
    gpfq = get_method("gpfq")
    for bits in (1, 1.58, 2, 3, 8):
        assert gpfq.serves(Budget(bits), GPFQParams()), bits
    for bits in (0.5, 2.5, 9):
        assert not gpfq.serves(Budget(bits), GPFQParams()), bits
