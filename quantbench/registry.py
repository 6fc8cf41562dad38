"""The registries of methods, architectures and tasks: one shape for all three (timm's).

This module imports no plugin. The packages register on import — ``methods/`` its methods,
``models/`` its builders, :mod:`quantbench.data` its tasks — and give access through their own
``get_method`` / ``build_model`` / ``build_task``. Installed distributions add methods through the
entry-point group ``quantbench.methods``; an entry point is loaded only when its name is asked
for, so a broken plugin breaks only the grids that use it, with an error naming its package and
entry point. One rule for duplicates everywhere: a name taken by another object is an error that
names both places.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from quantbench.method import ConfigError, Method


def _place(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def _package(ep: EntryPoint) -> str:
    return ep.dist.name if ep.dist is not None else "an unknown distribution"


class Registry:
    """Names → objects of one ``kind``, plus the entry points of ``group`` (loaded on demand)."""

    def __init__(self, kind: str, group: str | None = None, check: Callable[[str, Any], None] | None = None) -> None:
        self.kind, self.group, self._check = kind, group, check
        self._items: dict[str, Any] = {}
        self._entry_points: dict[str, EntryPoint] | None = None

    def register(self, obj: Any, name: str | None = None) -> Any:
        """Add ``obj`` under ``name`` (default: its ``__name__``); a name taken by another object is an error."""
        name = name or obj.__name__
        if self._check:
            self._check(name, obj)
        old = self._items.get(name)
        if old is not None and old is not obj:
            raise ValueError(f"{self.kind} {name!r} is registered twice: {_place(old)} and {_place(obj)}")
        self._items[name] = obj
        return obj

    def decorator(self, name: str | None = None) -> Callable[[Any], Any]:
        return lambda obj: self.register(obj, name)

    def plugins(self) -> dict[str, EntryPoint]:
        """The entry points of ``group`` by name (read once; not loaded)."""
        if self._entry_points is None:
            self._entry_points = {ep.name: ep for ep in entry_points(group=self.group)} if self.group else {}
        return self._entry_points

    def names(self) -> list[str]:
        """Every name a config may use: the registered ones and the installed entry points."""
        return sorted(set(self._items) | set(self.plugins()))

    def __contains__(self, name: str) -> bool:
        return name in self._items or name in self.plugins()

    def get(self, name: str) -> Any:
        if name not in self._items and name not in self.plugins():  # installed since the entry points were read?
            importlib.invalidate_caches()
            self._entry_points = None
        ep = self.plugins().get(name)
        if ep is not None:
            self._load(ep)
        if name not in self._items:
            raise ConfigError(f"unknown {self.kind} {name!r}; available: {self.names()}")
        return self._items[name]

    def _load(self, ep: EntryPoint) -> None:
        where = f"{self.kind} plugin {ep.name!r} (entry point {ep.value!r} of {_package(ep)}, group {self.group})"
        try:
            obj = ep.load()
        except Exception as e:
            raise ConfigError(f"{where} cannot be loaded: {type(e).__name__}: {e}") from e
        old = self._items.get(ep.name)
        if old is not None and old is not obj:
            raise ConfigError(f"{where} takes the name of {_place(old)}; {self.kind} names must be unique")
        try:
            self.register(obj, ep.name)
        except TypeError as e:  # the contract (a Method subclass, its Params a dataclass), said once
            raise ConfigError(f"{where}: {e}") from None


BUILDER_INPUTS = ("input_shape", "num_classes", "root", "download")  # supplied by the harness, not the config


def check_kwargs(fn: Callable, kwargs: dict, where: str) -> None:
    """Refuse a keyword argument the builder ``fn`` does not take (a config mistake), naming it and
    the allowed ones; checked before the call, so a ``TypeError`` raised inside a builder surfaces
    as that bug's own traceback."""
    params = inspect.signature(fn).parameters
    allowed = [n for n in params if n not in BUILDER_INPUTS]
    for key in kwargs:
        if key not in allowed:
            raise ConfigError(f"{where}.{key}: unknown parameter; allowed: {allowed}")


def _is_method(name: str, obj: Any) -> None:
    """The plugin contract checked where a method is registered (docs/adding-a-method.md): a
    :class:`Method` subclass whose ``Params`` is a dataclass (its fields are the config keys)."""
    if not (isinstance(obj, type) and issubclass(obj, Method)):
        raise TypeError(f"{_place(obj)} is not a Method subclass (expected a class deriving from "
                        f"quantbench.method.Method with compress(ref, budget, ctx) -> CompressedModel)")
    if not dataclasses.is_dataclass(obj.Params):
        raise TypeError(f"{_place(obj)}.Params is not a dataclass (its fields are the config keys "
                        f"method_params.{name}.<field>: decorate it with @dataclasses.dataclass)")
    obj.name = name


METHODS = Registry("method", group="quantbench.methods", check=_is_method)
MODELS = Registry("arch")
TASKS = Registry("task")


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: ``@register_method("rtn")`` makes the method available to configs."""
    return METHODS.decorator(name)


def register_model(fn: Callable) -> Callable:
    """Decorator: an architecture builder, under its function name."""
    return MODELS.register(fn)


def register_task(fn: Callable) -> Callable:
    """Decorator: a task builder, under its function name."""
    return TASKS.register(fn)
