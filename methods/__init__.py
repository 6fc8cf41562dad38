"""Compression methods. Importing this package registers the built-in ones; plugins come from the
entry-point group ``quantbench.methods`` (:mod:`quantbench.registry`)."""

from __future__ import annotations

from quantbench.method import Method
from quantbench.methods import diffq, gpfq, gptq, lc, opq, qat, rtn  # noqa: F401
from quantbench.registry import METHODS


def available_methods() -> list[str]:
    """Built-in and installed methods (plugins are listed, not loaded)."""
    return METHODS.names()


def get_method(name: str) -> type[Method]:
    """The class of a method, or of a variant label ``<method>@<variant>`` (config ``variants``)."""
    return METHODS.get(name.partition("@")[0])
