"""LeNet family: ``lenet300`` (the LC paper's 784-300-100-10 MLP; 64-300-100-10 on digits)."""

from __future__ import annotations

import math

from torch import nn

from models import register_model


@register_model
def lenet300(input_shape: tuple[int, ...], num_classes: int, hidden: tuple[int, ...] = (300, 100),
             width: float = 1.0) -> nn.Sequential:
    """MLP ``in -> 300 -> 100 -> classes`` with ReLU; ``width`` scales the hidden sizes."""
    sizes = [math.prod(input_shape)] + [max(1, round(h * width)) for h in hidden]
    layers: list[nn.Module] = [nn.Flatten()]
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(a, b), nn.ReLU()]
    layers.append(nn.Linear(sizes[-1], num_classes))
    return nn.Sequential(*layers)
