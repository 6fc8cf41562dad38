"""The methods as library calls on a model of one's own: no grid, no task, no MLflow.

    from quantbench import library

    packed = library.gptq(model, calibration, bits=2)        # post-training, from calibration inputs
    packed = library.rtn(model, bits=4, per_channel=True)    # no data
    packed.save("model.qbc")                                 # the file whose size the harness reports
    dense = CompressedModel.load("model.qbc").to_dense(fresh_model)   # the network rebuilt from it

Post-training calls (rtn, msq, gpfq, gptq, dc, opq_oneshot) compress every Linear/Conv weight of
``model`` (which they do not change) at ``bits`` bits per weight — K = 2^bits levels, 3 at 1.58 —
and return a :class:`~quantbench.format.CompressedModel`: its records, its exact size in bits
(``stats()``), the file (``save``) and the network (``to_dense``). ``calibration`` is an iterable
of input batches (tensors on the model's device). ``params`` are the method's own parameters, by
the names and with the checks a grid's ``method_params.<method>`` has (docs/methods/<method>.md);
``calib_samples`` and ``calib_batch`` size the grid's draw and are not used here: the batches
given are the calibration set.

Training-based methods (LC, IDC, QAT, LSQ, OPQ, DiffQ with its SizeController) are trainers one's
own loop drives (:class:`~quantbench.method.Trainer`): ``trainer(x)`` the network in training,
``trainer.parameters()`` what to optimize, ``loss + trainer.penalty()``, then ``trainer.finalize()``.

These are the harness's own functions and objects: each grid cell is an adapter that runs them
on its task and schedule (tests/test_library.py). A bad argument is refused before any work,
naming it (:class:`~quantbench.errors.ConfigError`). docs/library.md."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from quantbench.errors import ConfigError
from quantbench.format import CompressedModel
from quantbench.method import GENERATOR, assemble, check_bits, check_model, compressible, derive_seed, make_params
from quantbench.methods import diffq as diffq_method
from quantbench.methods import get_method
from quantbench.methods import gpfq as gpfq_method
from quantbench.methods import gptq as gptq_method
from quantbench.methods import opq as opq_method
from quantbench.methods import qat as qat_method
from quantbench.methods.lc import algorithm as lc_algorithm
from quantbench.methods.uniform import quantize_uniform

__all__ = ["IDC", "LC", "LSQ", "OPQ", "QAT", "DiffQ", "SizeController", "dc", "gpfq", "gptq", "msq", "opq_oneshot",
           "rtn"]


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


def dc(model: nn.Module, bits: float, codebook: str = "adaptive", shared_codebook: bool = False,
       kmeans: str = "auto", unit_codebook: list[float] | None = None) -> CompressedModel:
    """DC, LC's direct compression (docs/methods/lc.md): the codebook's exact projection of the
    weights, Θ = argmin ‖w − Δ(Θ)‖²; no data. ``codebook`` as :class:`LC`'s."""
    return lc_algorithm.direct_compression(model, bits, codebook, shared_codebook, kmeans, unit_codebook)


def opq_oneshot(model: nn.Module, bits: float, uniform: bool = False) -> CompressedModel:
    """OPQ's one-shot allocation without finetuning (docs/methods/opq.md): each layer's pruning
    ratio and bits from the Laplace model, a shared channel-wise codebook; no data. ``uniform``:
    the same ratio and bits in every layer (the ablation). :class:`OPQ` finetunes it."""
    return opq_method.OPQTraining(model, bits, uniform).finalize()


# The training-based methods: trainers one's own loop drives (quantbench.method.Trainer: trainer(x),
# trainer.parameters(), trainer.penalty(), trainer.finalize()); docs/library.md.
LC = lc_algorithm.LCTraining
IDC = lc_algorithm.IDCTraining
QAT = qat_method.QATTraining
LSQ = qat_method.LSQTraining
OPQ = opq_method.OPQTraining
DiffQ = diffq_method.DiffQTraining
SizeController = diffq_method.SizeController


def _checked(method: str, model: nn.Module, bits: float, params: dict):
    """``(params, budget)`` of a call, each argument checked before any work."""
    cls = get_method(method)
    p = make_params(cls.Params, params, f"{method}(**params)")
    check_model(method, model)
    budget = check_bits(method, bits)
    if not cls.serves(budget, p):
        raise ConfigError(f"{method}(bits={bits:g}): {method} does not serve {bits:g} bits per weight with these "
                          f"params (docs/methods/{cls.__module__.rpartition('.')[2]}.md)")
    return p, budget


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
