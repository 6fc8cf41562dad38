"""LC: C steps against brute force, exact 1-D k-means against a plain DP, multiplier updates by
hand, and the paper's claim (LC beats DC at K = 2) on digits/lenet300."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from helpers.jobs import compress_digits

from quantbench.method import Budget, RunContext, make_params
from quantbench.methods import get_method
from quantbench.methods.lc.algorithm import LCTraining, learning_compression, penalty, update_multipliers
from quantbench.methods.lc.csteps import (
    AdaptiveCodebook,
    Binary,
    PowersOfTwo,
    ScaledBinary,
    ScaledCodebook,
    ScaledTernary,
)
from quantbench.methods.lc.kmeans1d import distortion, kmeans1d_exact, kmeans1d_lloyd, optimal_breaks
from quantbench.models import build_model
from quantbench.training.loop import Schedule


# ----------------------------------------------------------------------------- 1-D k-means
def plain_dp(x: np.ndarray, k: int) -> float:
    """O(N^2 K) dynamic programme written from the recurrence, with plain loops."""
    xs = sorted(float(v) for v in x)
    n = len(xs)

    def sse(j, i):
        seg = xs[j:i]
        m = sum(seg) / len(seg)
        return sum((v - m) ** 2 for v in seg)

    d = [[float("inf")] * (n + 1) for _ in range(k + 1)]
    d[0][0] = 0.0
    for c in range(1, k + 1):
        for i in range(1, n + 1):
            d[c][i] = min(d[c - 1][j] + sse(j, i) for j in range(i))
    return d[k][n]


@pytest.mark.parametrize("seed", range(25))
def test_exact_kmeans_matches_the_plain_dp(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 40))
    k = int(rng.integers(1, min(n, 9) + 1))
    x = rng.standard_normal(n) * rng.uniform(0.01, 100) + rng.uniform(-50, 50)
    c, labels = kmeans1d_exact(x, k)
    assert distortion(x, c, labels) == pytest.approx(plain_dp(x, k), rel=1e-9, abs=1e-12)
    assert np.all(np.diff(c) > 0) and c.size == k


def test_exact_kmeans_on_tiny_inputs_against_all_partitions():
    rng = np.random.default_rng(0)
    for _ in range(50):
        x = rng.standard_normal(int(rng.integers(2, 9)))
        k = int(rng.integers(1, x.size + 1))
        best = min(
            sum(((seg - seg.mean()) ** 2).sum() for seg in np.split(np.sort(x), cuts))
            for cuts in itertools.combinations(range(1, x.size), k - 1))
        c, labels = kmeans1d_exact(x, k)
        assert distortion(x, c, labels) == pytest.approx(best, abs=1e-12)


def test_exact_kmeans_is_never_worse_than_lloyd():
    rng = np.random.default_rng(1)
    for trial in range(30):
        x = np.concatenate([rng.standard_normal(500), rng.laplace(3, 0.3, 200)])
        k = [2, 4, 8, 16][trial % 4]
        exact = distortion(x, *kmeans1d_exact(x, k))
        lloyd = distortion(x, *kmeans1d_lloyd(x, rng.choice(x, k, replace=False)))
        assert exact <= lloyd * (1 + 1e-12)


def _lloyd_by_the_definition(x, c, max_iter=100):
    """Lloyd written from its two steps: every x to its nearest centre, every centre to its cluster's mean."""
    c = np.sort(c)
    for _ in range(max_iter):
        labels = np.abs(x[:, None] - c[None, :]).argmin(axis=1)
        new = np.sort([x[labels == j].mean() if (labels == j).any() else c[j] for j in range(c.size)])
        if np.allclose(new, c, rtol=0, atol=1e-13):
            break
        c = new
    return c


def test_sorted_lloyd_matches_lloyd_written_from_the_definition():
    rng = np.random.default_rng(4)
    for trial in range(20):
        x = np.concatenate([rng.standard_normal(300), rng.laplace(2, 0.3, 100)])
        init = rng.choice(x, [2, 3, 8, 16][trial % 4], replace=False)
        c, labels = kmeans1d_lloyd(x, init)
        assert np.allclose(c, _lloyd_by_the_definition(x, init), rtol=0, atol=1e-10)
        assert np.array_equal(labels, np.abs(x[:, None] - c[None, :]).argmin(axis=1))


def test_memory_bounded_backtracking_gives_the_same_partition():
    x = np.sort(np.random.default_rng(2).standard_normal(3000))
    full = optimal_breaks(x, 23)
    assert np.array_equal(full, optimal_breaks(x, 23, table_bytes=1))


def test_fewer_distinct_values_than_clusters():
    c, labels = kmeans1d_exact(np.array([1.0, 1.0, 2.0, 2.0, 2.0]), 4)
    assert c.tolist() == [1.0, 2.0] and labels.tolist() == [0, 0, 1, 1, 1]


# ----------------------------------------------------------------------------- C steps
def brute_force_scaled(w: np.ndarray, unit: np.ndarray) -> float:
    """min over every assignment of the optimal scale a >= 0 (closed form for a fixed assignment)."""
    best = np.inf
    for assign in itertools.product(range(unit.size), repeat=w.size):
        u = unit[list(assign)]
        q = float(u @ u)
        a = max(float(w @ u) / q, 0.0) if q > 0 else 0.0
        best = min(best, float(np.sum((w - a * u) ** 2)))
    return best


def scale_grid_search(w: np.ndarray, unit: np.ndarray) -> float:
    """A fine grid of scales, each with its nearest assignment (an upper bound on the optimum)."""
    best = np.inf
    for a in np.linspace(1e-4, 3 * np.abs(w).max() / np.abs(unit).max(), 3001):
        q = a * unit[np.abs(w[:, None] - a * unit[None, :]).argmin(axis=1)]
        best = min(best, float(np.sum((w - q) ** 2)))
    return best


@pytest.mark.parametrize("cstep, unit", [
    (ScaledBinary(), np.array([-1.0, 1.0])),
    (ScaledTernary(), np.array([-1.0, 0.0, 1.0])),
    (PowersOfTwo(7), np.array([-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0])),
    (ScaledCodebook([-1.0, 0.3, 2.0]), np.array([-1.0, 0.3, 2.0])),
    (ScaledCodebook([0.0, 1.0, 3.0]), np.array([0.0, 1.0, 3.0])),
])
def test_scaled_c_steps_are_exact(cstep, unit):
    rng = np.random.default_rng(3)
    for _ in range(40):
        w = rng.standard_normal(int(rng.integers(1, 7))) * rng.uniform(0.1, 5)
        proj = cstep.project(w)
        got = proj.distortion(w)
        assert got == pytest.approx(brute_force_scaled(w, unit), rel=1e-9, abs=1e-12)
        assert got <= scale_grid_search(w, unit) + 1e-12
        scale = np.abs(proj.values).max() / np.abs(unit).max()
        assert np.allclose(proj.values, scale * unit)


def test_binary_and_adaptive_c_steps_against_brute_force():
    rng = np.random.default_rng(4)
    for _ in range(30):
        w = rng.standard_normal(int(rng.integers(1, 8)))
        # {-1, +1}: every assignment
        best = min(np.sum((w - np.array(s)) ** 2) for s in itertools.product([-1.0, 1.0], repeat=w.size))
        assert Binary().project(w).distortion(w) == pytest.approx(best)
        # K free centroids: every assignment of weights to K groups, centroids = group means
        k = int(rng.integers(1, 4))
        best = min(
            sum(((w[np.array(a) == g] - w[np.array(a) == g].mean()) ** 2).sum() for g in set(a))
            for a in itertools.product(range(k), repeat=w.size))
        assert AdaptiveCodebook(k).project(w).distortion(w) == pytest.approx(best, abs=1e-12)


def test_scaled_closed_forms_agree_with_the_generic_sweep():
    w = np.random.default_rng(5).standard_normal(2000)
    for closed, unit in ((ScaledBinary(), [-1.0, 1.0]), (ScaledTernary(), [-1.0, 0.0, 1.0])):
        assert closed.project(w).distortion(w) == pytest.approx(ScaledCodebook(unit).project(w).distortion(w))


# ----------------------------------------------------------------------------- the algorithm
def test_penalty_gradient_and_multiplier_update_by_hand():
    w = torch.tensor([1.0, -3.0], requires_grad=True)
    q, lam, mu = torch.tensor([2.0, -2.0]), torch.tensor([1.0, 1.0]), 2.0
    value = penalty(w, q, lam / mu, mu)  # λ/μ is fixed for the L step
    # mu/2 * ||w - q - lam/mu||^2 = 1 * ((1-2-0.5)^2 + (-3+2-0.5)^2) = 2.25 + 2.25
    assert value.item() == pytest.approx(4.5)
    value.backward()
    assert w.grad.tolist() == pytest.approx([2 * (1 - 2) - 1, 2 * (-3 + 2) - 1])  # mu (w - q) - lam
    assert update_multipliers(lam, w.detach(), q, mu).tolist() == [3.0, 3.0]  # lam - mu (w - q)


def test_lc_steps_follow_the_equations_on_two_weights():
    """No training (0 epochs), so w stays (1, -3); hand-computed with the scaled-binary C step.

    k=0, mu=1: target w - lam/mu = (1, -3)      -> a = 2, q = (2, -2); lam = 0 - 1 (w - q) = (1, 1)
    k=1, mu=2: target (0.5, -3.5)               -> a = 2, q = (2, -2); lam = (1, 1) - 2 (-1, -1) = (3, 3)
    k=2, mu=4: target (0.25, -3.75)             -> a = 2, q = (2, -2); lam = (3, 3) - 4 (-1, -1) = (7, 7)
    """
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -3.0]]))
    ctx = RunContext(_ToyTask(), "toy", {}, seed=0, show_progress=False)
    lc = LCTraining(model, 1, codebook="scaled_binary", mu=1.0)
    learning_compression(lc, ctx, Schedule(epochs=0, lr=0.1, momentum=0.0, batch_size=2), steps=3, mu0=1.0,
                         mu_growth=2.0, lr_decay=1.0)
    assert lc.lam["weight"].tolist() == [[7.0, 7.0]]
    assert lc.projections[0].dense().tolist() == [2.0, -2.0]
    assert [v for k, v, _ in ctx.step_metrics if k == "lc/mu"] == [1.0, 2.0, 4.0]
    assert [v for k, v, _ in ctx.step_metrics if k == "lc/distortion"] == [2.0, 2.0, 2.0]


class _ToyTask:
    metric = "accuracy"

    def evaluate(self, model, device=None):
        return {"accuracy": 0.0}


class _RegressionTask:
    """Least squares on 8 fixed samples, served in two batches of 4 in a fixed order."""

    metric = "loss"

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(8, 6, generator=g)
        self.y = self.x @ torch.tensor([0.9, -0.4, 0.2, -1.1, 0.6, 0.05]) + 0.1 * torch.randn(8, generator=g)
        self.train = list(range(8))

    def loader(self, split, batch_size, seed=None, shard=(0, 1)):
        return [(self.x[i:i + batch_size], self.y[i:i + batch_size]) for i in range(0, 8, batch_size)]

    def loss(self, output, target):
        return torch.mean((output.reshape(-1) - target) ** 2)

    def evaluate(self, model, device=None):
        return {"loss": 0.0}


def plain_lc(x, y, w, steps, epochs, mu0, growth, lr, lr_decay, momentum, batch, clip=0.0):
    """LC from the paper's equations in float64 with plain loops: the L step is SGD with heavy-ball
    momentum (PyTorch's convention: b ← m·b + g, w ← w − η·b, b reset every L step) on
    L(w) + μ/2 ‖w − Δ(Θ) − λ/μ‖², L the mean squared error with gradient 2/n Xᵀ(Xw − y), g scaled
    to norm ``clip`` where it is longer (``clip`` > 0); the C step is the scaled-binary projection
    of w − λ/μ (a = mean |t|, Δ = a·sign t); λ ← λ − μ (w − Δ(Θ))."""
    x, y, w = x.double().numpy(), y.double().numpy(), w.double().numpy().copy()

    def project(t):
        a = np.mean(np.abs(t))
        return np.where(t >= 0, a, -a)

    q, lam = project(w), np.zeros_like(w)
    for k in range(steps):
        mu, eta, buf = mu0 * growth**k, lr * lr_decay**k, None
        for _ in range(epochs):
            for i in range(0, len(y), batch):
                xb, yb = x[i:i + batch], y[i:i + batch]
                grad = 2.0 / len(yb) * xb.T @ (xb @ w - yb) + mu * (w - q - lam / mu)
                if clip and np.linalg.norm(grad) > clip:
                    grad = grad * (clip / np.linalg.norm(grad))
                buf = grad.copy() if buf is None else momentum * buf + grad
                w = w - eta * buf
        q = project(w - lam / mu)
        lam = lam - mu * (w - q)
    return w, q, lam


@pytest.mark.parametrize("clip", [0.0, 0.5])
def test_lc_with_training_matches_lc_written_from_the_equations(clip):
    """The L steps (SGD through the shared epoch loop and the fused penalty), the C steps and the
    multipliers together, against :func:`plain_lc`; μ grows to where the penalty dominates the loss,
    so a penalty of the wrong size or sign, or a stale Δ(Θ) or λ, moves the result. With a gradient
    clip (0.5: below most of this problem's gradient norms) every update is the clipped one."""
    task = _RegressionTask()
    model = torch.nn.Linear(6, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.5, -0.2, 0.3, -0.8, 0.1, 0.4]]))
    w0 = model.weight.detach().reshape(-1).clone()
    hyper = {"steps": 5, "mu0": 0.05, "lr": 0.05, "lr_decay": 0.9, "momentum": 0.9, "batch_size": 4}
    ctx = RunContext(task, "toy", {}, seed=0, show_progress=False)
    lc = LCTraining(model, 1, codebook="scaled_binary", mu=hyper["mu0"])
    schedule = Schedule(epochs=3, optimizer="sgd", lr=hyper["lr"], momentum=hyper["momentum"],
                        batch_size=hyper["batch_size"], grad_clip=clip)
    learning_compression(lc, ctx, schedule, steps=hyper["steps"], mu0=hyper["mu0"], mu_growth=3.0,
                         lr_decay=hyper["lr_decay"])
    projections, lam = lc.projections, lc.lam
    w, q, lam_ref = plain_lc(task.x, task.y, w0, hyper["steps"], 3, hyper["mu0"], 3.0, hyper["lr"],
                             hyper["lr_decay"], hyper["momentum"], hyper["batch_size"], clip)
    if clip:  # the clip did bind: unclipped, the same steps end elsewhere
        free, _, _ = plain_lc(task.x, task.y, w0, hyper["steps"], 3, hyper["mu0"], 3.0, hyper["lr"],
                              hyper["lr_decay"], hyper["momentum"], hyper["batch_size"])
        assert not np.allclose(w, free, atol=1e-3)
    assert model.weight.detach().reshape(-1).double().numpy() == pytest.approx(w, rel=1e-4, abs=1e-5)
    assert projections[0].dense() == pytest.approx(q, rel=1e-4, abs=1e-5)
    assert lam["weight"].reshape(-1).double().numpy() == pytest.approx(lam_ref, rel=1e-3, abs=1e-5)
    assert not np.allclose(w, w0.double().numpy(), atol=1e-2)  # the L steps did move w

def _compress(name, bits, digits_reference, **params):
    cm, metrics, ctx = compress_digits(name, bits, digits_reference, **params)
    return cm, cm.to_dense(build_model("lenet300", **digits_reference[1])), metrics["error"], ctx


def test_lc_beats_direct_compression_at_one_bit(digits_reference):
    _, _, dc_error, _ = _compress("dc", 1, digits_reference)
    cm, model, lc_error, ctx = _compress("lc_adaptive", 1, digits_reference)
    assert lc_error < dc_error - 5.0, (lc_error, dc_error)  # the paper's central claim, with a margin
    # the final weights lie exactly on each layer's 2-entry codebook
    for name, record in cm.records.items():
        if type(record).__name__ == "QuantizedTensor":
            values = torch.tensor(record.codebook.values, dtype=torch.float32)
            assert values.numel() == 2
            assert torch.isin(model.state_dict()[name], values).all()
    steps = {k for k, _, _ in ctx.step_metrics}
    assert steps == {"lc/mu", "lc/train_loss", "lc/distortion", "lc/accuracy"}
    assert len([1 for k, _, _ in ctx.step_metrics if k == "lc/mu"]) == 20


def test_lc_ternary_beats_dc_ternary_and_packs_in_base_3(digits_reference):
    _, _, dc_error, _ = _compress("dc", 1.585, digits_reference, codebook="ternary")
    cm, _, lc_error, _ = _compress("lc_ternary", 1.585, digits_reference)
    assert lc_error < dc_error
    assert cm.stats()["bpw"] == pytest.approx(62 / 39, abs=0.01)


def test_lc_is_deterministic_and_shares_a_codebook_when_asked(digits_reference):
    a, _, err_a, _ = _compress("lc_adaptive", 2, digits_reference, steps=3, shared_codebook=True)
    b, _, err_b, _ = _compress("lc_adaptive", 2, digits_reference, steps=3, shared_codebook=True)
    assert a.pack() == b.pack() and err_a == err_b
    books = {tuple(r.codebook.values) for r in a.records.values() if type(r).__name__ == "QuantizedTensor"}
    assert len(books) == 1


def test_budgets_served():
    assert get_method("lc_ternary").serves(Budget(1.58), get_method("lc_ternary").Params())
    assert not get_method("lc_ternary").serves(Budget(2), get_method("lc_ternary").Params())
    assert get_method("lc_binary").serves(Budget(1), get_method("lc_binary").Params())
    pow2 = get_method("lc_pow2")
    assert not pow2.serves(Budget(1), pow2.Params())
    # an odd number of levels, paid at log2 K: 3 levels are the 1.58-bit column, 7 levels 2.81 bits
    assert pow2.serves(Budget(1.58), pow2.Params()) and pow2.serves(Budget(math.log2(7)), pow2.Params())
    assert not pow2.serves(Budget(2), pow2.Params()) and not pow2.serves(Budget(3), pow2.Params())
    with pytest.raises(ValueError, match="odd number of levels"):
        PowersOfTwo(4)
    assert get_method("dc").serves(Budget(1.58), make_params(get_method("dc").Params, {"codebook": "ternary"}, "x"))


def test_auto_kmeans_is_exact_up_to_the_measured_size_and_lloyd_beyond():
    from quantbench.methods.lc.csteps import EXACT_MAX_WORK

    cs = AdaptiveCodebook(16)
    assert cs.algorithm == "auto"
    assert cs.solver(int(EXACT_MAX_WORK) // 16) == "exact" and cs.solver(int(EXACT_MAX_WORK) // 16 + 1) == "lloyd"
    w = np.random.default_rng(6).standard_normal(5000)
    assert np.array_equal(cs.project(w).values, kmeans1d_exact(w, 16)[0])
