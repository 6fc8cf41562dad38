"""The method contract: what a compression method receives and must return (docs/architecture.md,
"The method contract").

A method is a class registered with :func:`quantbench.registry.register_method`. It declares

* ``Params``  a dataclass of typed, defaulted hyper-parameters (config: ``method_params.<name>``),
* ``family``  the table group its rows belong to: which paper's table (``baseline``, ``LC``,
              ``post-training`` (GPFQ, MSQ, GPTQ), ``OPQ``, ``DiffQ``; anything else is a group of
              its own, after those),
* ``step_curves`` the per-step metrics it logs that are worth a plot (:class:`StepCurve`),
* ``serves``  which budgets it can meet (cells it cannot serve are skipped at planning),
* ``starts_from`` the registered method whose result it starts from (LC → DC, GPFQ → MSQ, QAT → RTN):
              the tables mark a cell that ends worse than that method's on the same reference and budget,

and implements ``compress(ref, budget, ctx) -> CompressedModel``. A method never writes files
or talks to MLflow: per-step metrics go through ``ctx.log_metric`` and progress through
``ctx.progress``.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from quantbench.errors import ConfigError, JobFailed  # noqa: F401 (part of the method contract's names)
from quantbench.format import CompressedModel, DenseTensor, QuantizedTensor, tied_keys


@dataclass(frozen=True)
class Budget:
    """Target average bits per compressed weight, side information included."""

    bits: float

    @property
    def int_bits(self) -> int | None:
        """The budget as a code width, when it is a whole number of bits."""
        return int(self.bits) if float(self.bits).is_integer() else None

    @property
    def levels(self) -> int | None:
        """The alphabet size K this budget pays for: the K >= 2 with log2 K within 0.01 bits of it
        (2^b at a whole b, 3 at 1.58 = log2 3), or None (e.g. 2.5 bits is no whole number of levels)."""
        k = round(2.0 ** self.bits) if self.bits < 63 else 0
        return k if k >= 2 and abs(math.log2(k) - self.bits) < 0.01 else None


def format_budget(bits: float) -> str:
    """The budget as it appears in paths, ids and tables: 2, 1.58, 4.5."""
    return f"{float(bits):g}"


@dataclass
class NoParams:
    """A method without hyper-parameters."""


# The random streams of a job, each named by a prime: the seed of a stream is derive_seed(seed, stream, offset).
DATA_ORDER = 7919  # the order of training batches (offset: the epoch, or a step's epoch index)
REFERENCE_DATA_ORDER = 10_007  # the reference's training batches
GENERATOR = 1_000_003  # a method's own random draws (ctx.generator(offset))
SAMPLE = 1_299_709  # one sample's augmentation (offset: the sample index; > ImageNet's 1,281,167 images)


def derive_seed(seed: int, stream: int, offset: int = 0) -> int:
    """The one place seeds are derived: 63 bits of ``numpy.random.SeedSequence((seed, stream, offset))``,
    a hash of the three numbers, so distinct (stream, offset) pairs give unrelated seeds at every seed,
    seed 0 included (``seed · stream + offset`` made every stream its offset at seed 0)."""
    if min(seed, stream, offset) < 0:
        raise ValueError(f"derive_seed takes non-negative numbers, got seed={seed}, stream={stream}, offset={offset}")
    return int(np.random.SeedSequence((seed, stream, offset)).generate_state(1, np.uint64)[0] >> np.uint64(1))


Progress = typing.Callable[..., Iterator]  # progress(iterable, desc=..., total=...): the iterable, maybe with a bar


def plain(iterable: Iterable, desc: str = "", total: int | None = None) -> Iterator:
    """A :data:`Progress` that shows nothing (the library's default)."""
    return iter(iterable)


def assemble(ref: nn.Module, quantized: dict[str, QuantizedTensor], arch: str = "",
             arch_kwargs: dict | None = None) -> CompressedModel:
    """The compressed model of ``ref``: the ``quantized`` records, every other state entry kept
    dense (fp32); ``arch``/``arch_kwargs`` name the builder that rebuilds it ("" for a model of
    one's own: :meth:`CompressedModel.to_dense` then takes an instance of it)."""
    params = dict(ref.named_parameters())
    tied = tied_keys(ref)
    records = {}
    for name, tensor in ref.state_dict().items():
        if name in tied:
            continue
        if name in quantized:
            records[name] = quantized[name]
        else:
            t = tensor.detach().cpu()
            dtype = "int64" if not t.is_floating_point() else "float32"
            records[name] = DenseTensor(t.numpy(), dtype=dtype, role="param" if name in params else "buffer")
    unknown = set(quantized) - set(records)
    if unknown:
        raise KeyError(f"quantized records for tensors the model does not have: {sorted(unknown)}")
    return CompressedModel(arch, dict(arch_kwargs or {}), records)


@dataclass
class RunContext:
    """What the harness hands a method: data, device, seed, metric logger, progress bars."""

    task: Any  # quantbench.data.Task
    arch: str
    arch_kwargs: dict
    seed: int
    device: torch.device = torch.device("cpu")
    step_metrics: list[tuple[str, float, int]] = field(default_factory=list)
    show_progress: bool = True

    def log_metric(self, key: str, value: float, step: int) -> None:
        """Record a per-step metric (sent to MLflow by the harness when the run ends)."""
        self.step_metrics.append((key, float(value), int(step)))

    def progress(self, iterable: Iterable, desc: str, total: int | None = None) -> Iterator:
        return iter(tqdm(iterable, desc=desc, total=total, disable=not self.show_progress, mininterval=2.0))

    def generator(self, offset: int = 0) -> torch.Generator:
        """A torch generator seeded from the cell's seed (``offset`` separates streams)."""
        return torch.Generator().manual_seed(derive_seed(self.seed, GENERATOR, offset))

    def assemble(self, ref: nn.Module, quantized: dict[str, QuantizedTensor]) -> CompressedModel:
        """The compressed model of the cell's arch (:func:`assemble`)."""
        return assemble(ref, quantized, self.arch, self.arch_kwargs)

    def as_cell(self, packed: CompressedModel) -> CompressedModel:
        """``packed`` (a library call's result, of a model of one's own) as the cell's arch."""
        return CompressedModel(self.arch, dict(self.arch_kwargs), packed.records)


@dataclass(frozen=True)
class StepCurve:
    """A per-step metric a method logs (``ctx.log_metric(key, value, step)``) that the ``<task>_steps``
    plot draws, one line per cell; ``{metric}`` in ``key`` and ``y`` stands for the task's metric."""

    key: str
    x: str
    y: str


# The table groups of the seed papers, in the tables' order; a method of another family forms a group after them.
PAPER_FAMILIES = ("baseline", "LC", "post-training", "OPQ", "DiffQ")


# A grid's calibration axis (config ``calibration``) runs a method that calibrates once per sample size,
# as the variant ``<method>@n<samples>``: the one spelling of that label, for planning and the plots.
CALIBRATION_LABEL = re.compile(r"^(?P<method>[A-Za-z0-9_]+)@n(?P<samples>[0-9]+)$")


def calibration_variant(samples: int) -> str:
    """The variant name of a calibration set of ``samples`` (:data:`CALIBRATION_LABEL`)."""
    return f"n{samples}"


class Method:
    """Base class of compression methods; see the module docstring for the contract."""

    name: ClassVar[str] = ""
    family: ClassVar[str] = "other"  # the table group: which paper's table its rows belong to
    step_curves: ClassVar[tuple[StepCurve, ...]] = ()
    Params: ClassVar[type] = NoParams
    # training-based (its epochs run train_epoch): in a job of several processes ``compress`` runs on
    # every rank; otherwise it runs on rank 0 alone, as in a one-process job (a plugin that trains
    # declares it to use the other processes)
    trains: ClassVar[bool] = False
    # draws a calibration sample of the training split (``Params.calib_samples``): the grid's
    # ``calibration`` axis runs it once per sample size (post-training methods that use data)
    calibrated: ClassVar[bool] = False
    # the registered method this one starts from (LC from DC, GPFQ from MSQ, ...): the tables mark a cell
    # that ends worse than that method's cell on the same reference and budget (a sanity claim)
    starts_from: ClassVar[str | None] = None

    def __init__(self, params: Any = None) -> None:
        self.params = params if params is not None else self.Params()

    @classmethod
    def serves(cls, budget: Budget, params: Any) -> bool:
        """Whether this method can meet ``budget`` (default: any budget)."""
        return True

    def compress(self, ref: nn.Module, budget: Budget, ctx: RunContext) -> CompressedModel:
        raise NotImplementedError


class Trainer(nn.Module):
    """A training-based method driven by one's own loop (docs/library.md)::

        trainer = Method(model, bits, ...)          # model: trained in place
        opt = torch.optim.SGD(trainer.parameters(), lr=...)
        for x, y in data:
            loss = criterion(trainer(x), y) + trainer.penalty()
            opt.zero_grad(); loss.backward(); opt.step()
        packed = trainer.finalize()                 # the CompressedModel of the trained model

    ``trainer(x)`` is the network in training: ``model`` with its weights as the method forwards
    them (fake-quantized, noisy, or the weights themselves); ``parameters()`` what it trains (the
    model's, plus the method's own, e.g. LSQ's step sizes); ``penalty()`` the term added to the loss
    (0 where the method adds none). A subclass implements :meth:`records`."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    def penalty(self) -> torch.Tensor:
        return torch.zeros(())

    def records(self) -> dict[str, QuantizedTensor]:
        """The quantized records of the trained weights."""
        raise NotImplementedError

    def finalize(self) -> CompressedModel:
        """The compressed model: :meth:`records`, every other tensor of the model dense."""
        return assemble(self.model, self.records())


class QuantizedForward(Trainer):
    """A :class:`Trainer` whose forward is ``model``'s with each compressible weight w replaced by
    :meth:`quantize` (name, w), through ``torch.func.functional_call``: ``model``'s own parameters
    stay what they are, and tied weights stay tied."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.names = compressible(model)
        self._params = dict(model.named_parameters())

    def quantize(self, name: str, w: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = {n: self.quantize(n, self._params[n]) for n in self.names}
        return torch.func.functional_call(self.model, weights, (x,))


def check_model(call: str, model: nn.Module) -> None:
    """A library call's ``model``: an ``nn.Module`` with a Linear or Conv weight (else ConfigError)."""
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{call}(model): expected a torch.nn.Module, got {type(model).__name__}")
    if not compressible(model):
        raise ConfigError(f"{call}(model): {type(model).__name__} has no Linear or Conv weight to quantize")


def check_bits(call: str, bits: float) -> Budget:
    """A library call's ``bits``: a number above 0 (else ConfigError), as a :class:`Budget`."""
    if isinstance(bits, bool) or not isinstance(bits, (int, float)) or not bits > 0:
        raise ConfigError(f"{call}(bits={bits!r}): expected a number of bits per weight above 0")
    return Budget(float(bits))


def compressible(model: nn.Module) -> list[str]:
    """The parameters quantized by default: weights of linear and conv layers, each under its
    first name in ``named_parameters`` (a weight tied to an embedding is listed once, by that name)."""
    canonical = {id(p): n for n, p in reversed(list(model.named_parameters()))}
    names: list[str] = []
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            name = canonical.get(id(module.weight))
            if name is not None and name not in names:
                names.append(name)
    return names


def make_params(params_cls: type, overrides: dict, where: str) -> Any:
    """Build a ``Params`` dataclass from config, checking keys, types and literal choices."""
    if not dataclasses.is_dataclass(params_cls):
        raise TypeError(f"{params_cls!r} must be a dataclass")
    hints = typing.get_type_hints(params_cls)
    fields = {f.name for f in dataclasses.fields(params_cls)}
    for key, value in (overrides or {}).items():
        if key not in fields:
            raise ConfigError(f"{where}.{key}: unknown parameter; allowed: {sorted(fields)}")
        _check_type(value, hints[key], f"{where}.{key}")
    try:
        return params_cls(**(overrides or {}))
    except ConfigError as e:  # a check of the dataclass's own (Schedule's ranges): "key: ..."
        raise ConfigError(f"{where}.{e}") from None


def _check_type(value: Any, hint: Any, where: str) -> None:
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(f"{where}: {value!r} is not allowed; allowed: {list(choices)}")
        return
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            try:
                _check_type(value, arg, where)
                return
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} matches none of {hint}")
    if hint is type(None):
        if value is not None:
            raise ConfigError(f"{where}: expected null, got {value!r}")
        return
    expected = {float: (int, float), int: (int,), bool: (bool,), str: (str,)}.get(hint)
    if origin in (list, tuple):
        expected = (list, tuple)
    if expected is None:
        return
    if (isinstance(value, bool) and hint is not bool) or not isinstance(value, expected):
        raise ConfigError(f"{where}: expected {getattr(hint, '__name__', hint)}, got {type(value).__name__} {value!r}")
