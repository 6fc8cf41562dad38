"""Training steps stay on the weights' device, in their dtype (issue #17), proved on a CPU-only machine.

Every training step runs under :class:`HostGuard`, which fails the test on

* a host round trip or device synchronisation asked for in Python: ``Tensor.cpu``, ``.numpy``,
  ``.item``, ``.tolist``, and truth/float/int of a tensor (``if loss:``, ``float(t)``), which
  copy a device value to the host (``aten._local_scalar_dense`` at the dispatcher);
* any operator that produces a float64 tensor (a ``.double()`` copy of the weights, or float64
  arithmetic), seen at the dispatcher, below every Python wrapper.

One read is allowed: torch.optim's own step counter, which it keeps on the host on purpose.
``.cpu()`` of a device tensor is a copy; on this CPU-only machine it is a no-op the dispatcher never
sees, so the Python-level hook is what proves it here. The guard is shown to catch each kind of
offence (the old QAT fake quantizer among them), so a pass means something.
"""

from __future__ import annotations

import sys

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import quantbench.training.loop
from quantbench.method import Budget, RunContext, make_params
from quantbench.methods import get_method
from quantbench.methods.uniform import quantize_uniform
from quantbench.models import build_model
from quantbench.training.loop import TrainSettings, train

HOST_CALLS = {torch.Tensor.cpu, torch.Tensor.numpy, torch.Tensor.item, torch.Tensor.tolist,
              torch.Tensor.__bool__, torch.Tensor.__float__, torch.Tensor.__int__}


class HostRoundTrip(AssertionError):
    pass


def _optimizer_step_counter() -> bool:
    """True when the read comes from torch.optim's ``_get_value``: the optimizers keep their step
    counter on the host on purpose (``capturable=False``), so reading it never waits for the device."""
    frame = sys._getframe(2)
    for _ in range(6):
        if frame is None:
            return False
        if frame.f_code.co_name == "_get_value" and frame.f_code.co_filename.endswith("torch/optim/optimizer.py"):
            return True
        frame = frame.f_back
    return False


class _PythonCalls(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in HOST_CALLS and not _optimizer_step_counter():
            raise HostRoundTrip(f"{func.__name__} in a training step")
        return func(*args, **(kwargs or {}))


class _Operators(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default and not _optimizer_step_counter():
            raise HostRoundTrip("a device value read on the host (item / bool / float) in a training step")
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.dtype == torch.float64:
                raise HostRoundTrip(f"{func} made a float64 tensor {tuple(t.shape)} in a training step")
        return out


class HostGuard:
    """Both modes together, for the body of one training step."""

    def __enter__(self):
        self.modes = [_PythonCalls(), _Operators()]
        for m in self.modes:
            m.__enter__()

    def __exit__(self, *exc):
        for m in reversed(self.modes):
            m.__exit__(*exc)


@pytest.fixture
def guarded_steps(monkeypatch):
    """Run every ``train_step`` (forward, backward, optimizer steps, ``after_step``) under the guard;
    returns the list of steps that ran, so a test can check the guard was on."""
    ran = []
    step = quantbench.training.loop.train_step

    def guarded(*args, **kwargs):
        with HostGuard():
            out = step(*args, **kwargs)
        ran.append(out.dtype)
        return out

    monkeypatch.setattr(quantbench.training.loop, "train_step", guarded)
    return ran


@pytest.fixture(scope="module")
def lenet5_digits():
    from quantbench.data import build_task

    task = build_task("digits")
    kwargs = {"input_shape": [1, 8, 8], "num_classes": 10, "padding": 2, "width": 0.5}  # the default grid's
    torch.manual_seed(0)
    return task, kwargs, build_model("lenet5", **kwargs)


TRAINING_METHODS = {  # every training-based method, one short run each
    "qat": {"epochs": 1},
    "lsq": {"epochs": 1},
    "diffq": {"epochs": 1},  # with the budget controller (after_step)
    "diffq_fixed": {"epochs": 1},
    "lc_adaptive": {"steps": 2, "epochs": 1},  # L steps with λ ≠ 0 in the second
    "lc_binary": {"steps": 1, "epochs": 1},
    "idc": {"steps": 1, "epochs": 1},
    "opq": {"epochs": 1},
    "prune_quant_uniform": {"epochs": 1},
}


@pytest.mark.parametrize("name", sorted(TRAINING_METHODS))
def test_training_steps_make_no_host_round_trip_and_no_float64_copy(name, lenet5_digits, guarded_steps):
    task, kwargs, ref = lenet5_digits
    cls = get_method(name)
    params = make_params(cls.Params, {**TRAINING_METHODS[name], "batch_size": 256}, name)
    ctx = RunContext(task, "lenet5", kwargs, seed=0, show_progress=False)
    budget = Budget(2) if cls.serves(Budget(2), params) else Budget(1)  # lc_binary: 1 bit
    cm = cls(params).compress(ref, budget, ctx)
    assert len(guarded_steps) >= 6 and set(guarded_steps) == {torch.float32}  # every batch ran guarded
    assert cm.size_bits() > 0


def test_reference_training_steps_stay_on_the_device(lenet5_digits, guarded_steps):
    task, kwargs, _ = lenet5_digits
    train(build_model("lenet5", **kwargs), task, TrainSettings(epochs=1, batch_size=256), 0,
          torch.device("cpu"), show_progress=False)
    assert len(guarded_steps) == 6  # ceil(1437 / 256) batches of the training split


# ----------------------------------------------------------------------------- the guard itself
def _old_qat_fake(w: torch.Tensor) -> torch.Tensor:  # main before #17: a float64 host round trip per step
    return quantize_uniform(w.detach().cpu(), 4).dequantize().to(w)


@pytest.mark.parametrize("offence", [
    lambda w: _old_qat_fake(w),
    lambda w: w * float(w.abs().max()),           # a device value read on the host
    lambda w: w if torch.isfinite(w.sum()) else w,  # `if tensor:` synchronises
    lambda w: w.detach().double().float() + w,       # a float64 copy of the weights
    lambda w: torch.from_numpy(w.detach().cpu().numpy()) + w,
])
def test_the_guard_catches_each_kind_of_offence(offence):
    w = torch.randn(4, 4, requires_grad=True)
    with pytest.raises(HostRoundTrip), HostGuard():
        offence(w)
    with HostGuard():
        (w * 2 + w.abs().amax()).sum().backward()  # device-resident arithmetic passes
