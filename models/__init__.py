"""Architectures: one module per family, registered by decorator, built by :func:`build_model`.

Every builder takes ``input_shape`` (C, H, W) and ``num_classes`` from the task, plus its own
keyword arguments (``arch_params.<name>`` in the config).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from quantbench.method import ConfigError

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register a builder under its function name."""
    if fn.__name__ in _MODELS:
        raise ValueError(f"model {fn.__name__!r} is registered twice")
    _MODELS[fn.__name__] = fn
    return fn


def available_models() -> list[str]:
    return sorted(_MODELS)


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, **kwargs) -> nn.Module:
    """The one place models are built."""
    if name not in _MODELS:
        raise ConfigError(f"unknown arch {name!r}; available: {available_models()}")
    try:
        return _MODELS[name](input_shape=tuple(input_shape), num_classes=num_classes, **kwargs)
    except TypeError as e:
        raise ConfigError(f"arch_params.{name}: {e}") from e


from models import lenet, resnet, transformer_lm, vgg, vit  # noqa: E402,F401
