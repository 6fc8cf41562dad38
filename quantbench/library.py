"""The methods as library calls on a model of one's own: no grid, no task, no MLflow.

    from quantbench import library

    packed = library.gptq(model, calibration, bits=2)        # post-training, from calibration inputs
    packed = library.rtn(model, bits=4, per_channel=True)    # no data
    packed.save("model.qbc")                                 # the file whose size the harness reports
    dense = CompressedModel.load("model.qbc").to_dense(fresh_model)   # the network rebuilt from it

Each call compresses every Linear/Conv2d weight of ``model`` (which it does not change) at
``bits`` bits per weight — K = 2^bits levels, 3 at 1.58 — and returns a
:class:`~quantbench.format.CompressedModel`: its records, its exact size in bits
(``stats()``), the file (``save``) and the network (``to_dense``). ``calibration`` is an iterable
of input batches (tensors on the model's device). ``params`` are the method's own parameters, by
the names and with the checks a grid's ``method_params.<method>`` has (docs/methods/<method>.md);
``calib_samples`` and ``calib_batch`` size the grid's draw and are not used here: the batches
given are the calibration set. These are the harness's own functions: on the same model and
batches a grid's cell packs the same records (tests/test_library.py). A bad argument is refused
before any work, naming it (:class:`~quantbench.errors.ConfigError`). docs/library.md.
"""

from __future__ import annotations

import typing
from collections.abc import Iterable

import torch
from torch import nn

from quantbench.errors import ConfigError
from quantbench.format import CompressedModel
from quantbench.method import GENERATOR, Budget, assemble, compressible, derive_seed, make_params
from quantbench.methods import get_method
from quantbench.methods import gpfq as gpfq_method
from quantbench.methods import gptq as gptq_method
from quantbench.methods.lc import algorithm as lc_algorithm
from quantbench.methods.lc.methods import CodebookKind, make_cstep, serves
from quantbench.uniform import quantize_uniform

__all__ = ["LC", "gpfq", "gptq", "msq", "rtn"]


def rtn(model: nn.Module, bits: float, **params) -> CompressedModel:
    """Uniform round-to-nearest (docs/methods/rtn.md): ``scheme``, ``per_channel``, ``float_dtype``."""
    p, budget = _checked("rtn", model, bits, params)
    state = model.state_dict()
    return assemble(model, {name: quantize_uniform(state[name], budget.levels, p.scheme, p.per_channel,
                                                   p.float_dtype) for name in compressible(model)})


def msq(model: nn.Module, bits: float, **params) -> CompressedModel:
    """Memoryless scalar quantization on GPFQ's alphabet (docs/methods/gpfq.md): no data."""
    p, budget = _checked("msq", model, bits, params)
    return assemble(model, gpfq_method.quantize_network(model, budget.levels, p, [], torch.Generator(),
                                                        memoryless=True))


def gpfq(model: nn.Module, calibration: Iterable[torch.Tensor], bits: float, seed: int = 0,
         **params) -> CompressedModel:
    """GPFQ, greedy path-following (docs/methods/gpfq.md); ``rounding: stochastic`` (SPFQ) draws
    from ``seed`` as a grid's cell of that seed does."""
    p, budget = _checked("gpfq", model, bits, params)
    batches = _batches("gpfq", calibration)
    gen = torch.Generator().manual_seed(derive_seed(seed, GENERATOR, 1))  # a cell's ctx.generator(1)
    return assemble(model, gpfq_method.quantize_network(model, budget.levels, p, batches, gen, memoryless=False))


def gptq(model: nn.Module, calibration: Iterable[torch.Tensor], bits: float, **params) -> CompressedModel:
    """GPTQ/OPTQ on RTN's grid (docs/methods/gptq.md): ``damp``, ``block``, ``act_order``, ``scheme``,
    ``per_channel``."""
    p, budget = _checked("gptq", model, bits, params)
    return assemble(model, gptq_method.quantize_network(model, budget.levels, p, _batches("gptq", calibration)))


class LC:
    """Learning-compression (Carreira-Perpiñán & Idelbayev; docs/methods/lc.md) driven by one's own
    training loop. The L step is the loop, on its loss plus :meth:`penalty`; the C step is
    :meth:`c_step`::

        lc = library.LC(model, bits=2)            # Θ from direct compression of the weights, λ = 0
        for k in range(steps):
            lc.mu = mu0 * growth**k               # the penalty's μ for this step
            for x, y in data:                     # the L step: min L(w) + μ/2 ‖w − Δ(Θ) − λ/μ‖²
                (criterion(model(x), y) + lc.penalty()).backward(); opt.step(); opt.zero_grad()
            lc.c_step()                           # Θ = argmin ‖w − λ/μ − Δ(Θ)‖²; λ ← λ − μ (w − Δ(Θ))
        packed = lc.finalize()                    # the records of Δ(Θ), every other tensor dense

    ``model`` is trained in place (its compressible weights are w); ``codebook``: adaptive (exact
    1-D k-means, 2^bits levels), binary, scaled_binary, ternary or pow2; ``multipliers``: the
    augmented Lagrangian (λ) or the quadratic penalty alone; ``shared_codebook``: one codebook for
    all the weights. The harness's LC cell is this loop with its schedule (tests/test_library.py)."""

    def __init__(self, model: nn.Module, bits: float, codebook: str = "adaptive", mu: float = 1e-3,
                 multipliers: bool = True, shared_codebook: bool = False, kmeans: str = "auto") -> None:
        _check_model("LC", model)
        _check_bits("LC", bits)
        kinds = typing.get_args(CodebookKind)
        if codebook not in kinds:
            raise ConfigError(f"LC(codebook={codebook!r}): expected one of {list(kinds)}")
        budget = Budget(float(bits))
        if not serves(codebook, budget):
            raise ConfigError(f"LC(bits={bits:g}): the {codebook} codebook does not serve {bits:g} bits per weight "
                              f"(docs/methods/lc.md)")
        self.model, self.multipliers, self.mu = model, multipliers, mu
        self.view = lc_algorithm.ParamView(model, shared_codebook)
        self.csteps = [make_cstep(codebook, budget, kmeans) for _ in self.view.groups]
        params = dict(model.named_parameters())
        self.w = {n: params[n] for n in self.view.names}
        self.projections = lc_algorithm.c_step(self.view, self.csteps, self.w)  # direct compression: μ → 0, λ = 0
        self.q = lc_algorithm.decompress(self.view, self.projections, self.w)
        self.lam = {n: torch.zeros_like(t) for n, t in self.w.items()}

    @property
    def mu(self) -> float:
        """The penalty's μ (set it before each L step; it grows from step to step)."""
        return self._mu

    @mu.setter
    def mu(self, value: float) -> None:
        if not value > 0:
            raise ConfigError(f"LC(mu={value!r}): expected μ above 0")
        self._mu, self._lam_over_mu = float(value), None

    def penalty(self) -> torch.Tensor:
        """μ/2 Σ ‖w − Δ(Θ) − λ/μ‖² over the compressed weights (add it to the loss of the L step);
        λ/μ is computed once per (μ, λ), not per batch."""
        if self._lam_over_mu is None:
            with torch.no_grad():
                self._lam_over_mu = {n: self.lam[n] / self.mu for n in self.view.names}
        return sum(lc_algorithm.penalty(self.w[n], self.q[n], self._lam_over_mu[n], self.mu)
                   for n in self.view.names)

    @torch.no_grad()
    def c_step(self) -> None:
        """Θ = argmin ‖w − λ/μ − Δ(Θ)‖² (the codebook's exact projection), then λ ← λ − μ (w − Δ(Θ))."""
        self.projections = lc_algorithm.c_step(self.view, self.csteps,
                                               {n: self.w[n] - self.lam[n] / self.mu for n in self.view.names})
        self.q = lc_algorithm.decompress(self.view, self.projections, self.w)
        if self.multipliers:
            self.lam = {n: lc_algorithm.update_multipliers(self.lam[n], self.w[n].detach(), self.q[n], self.mu)
                        for n in self.view.names}
            self._lam_over_mu = None

    def finalize(self) -> CompressedModel:
        """The compressed model: Δ(Θ) of the last C step as records, every other tensor of the model dense."""
        shapes = {n: p.shape for n, p in self.model.named_parameters()}
        return assemble(self.model, lc_algorithm.records(self.view, self.csteps, self.projections, shapes))


def _checked(method: str, model: nn.Module, bits: float, params: dict):
    """``(params, budget)`` of a call, each argument checked before any work."""
    cls = get_method(method)
    p = make_params(cls.Params, params, f"{method}(**params)")
    _check_model(method, model)
    _check_bits(method, bits)
    budget = Budget(float(bits))
    if not cls.serves(budget, p):
        raise ConfigError(f"{method}(bits={bits:g}): {method} does not serve {bits:g} bits per weight with these "
                          f"params (docs/methods/{cls.__module__.rpartition('.')[2]}.md)")
    return p, budget


def _check_model(call: str, model: nn.Module) -> None:
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{call}(model): expected a torch.nn.Module, got {type(model).__name__}")
    if not compressible(model):
        raise ConfigError(f"{call}(model): {type(model).__name__} has no Linear or Conv weight to quantize")


def _check_bits(call: str, bits: float) -> None:
    if isinstance(bits, bool) or not isinstance(bits, (int, float)) or not bits > 0:
        raise ConfigError(f"{call}(bits={bits!r}): expected a number of bits per weight above 0")


def _batches(method: str, calibration: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """The calibration batches as a list, each a tensor; an empty iterable or another type is refused."""
    if isinstance(calibration, torch.Tensor):
        raise ConfigError(f"{method}(calibration): expected an iterable of input batches, got one tensor "
                          f"(wrap it: [x])")
    batches = list(calibration)
    if not batches:
        raise ConfigError(f"{method}(calibration): no batches; expected an iterable of input tensors")
    wrong = next((type(b).__name__ for b in batches if not isinstance(b, torch.Tensor)), None)
    if wrong is not None:
        raise ConfigError(f"{method}(calibration): expected input tensors, got a {wrong} (labels are not needed: "
                          f"pass the inputs x alone)")
    return batches
