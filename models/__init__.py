"""Architectures: one module per family, registered by decorator, built by :func:`build_model`.

Every builder takes ``input_shape`` (C, H, W) and ``num_classes`` from the task, plus its own
keyword arguments (``arch_params.<name>`` in the config).
"""

from __future__ import annotations

from torch import nn

from quantbench.registry import MODELS, check_kwargs


def available_models() -> list[str]:
    return MODELS.names()


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, **kwargs) -> nn.Module:
    """The one place models are built."""
    fn = MODELS.get(name)
    check_kwargs(fn, kwargs, f"arch_params.{name}")
    return fn(input_shape=tuple(input_shape), num_classes=num_classes, **kwargs)


from quantbench.models import lenet, mobilenet, resnet, transformer_lm, vgg, vit  # noqa: E402,F401
