"""LeNet family: ``lenet300`` (the LC paper's 784-300-100-10 MLP; 64-300-100-10 on digits) and
``lenet5`` (the LC paper's conv LeNet)."""

from __future__ import annotations

import math

import torch
from torch import nn

from quantbench.registry import register_model


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


@register_model
def lenet5(input_shape: tuple[int, ...], num_classes: int, channels: tuple[int, int] = (20, 50), hidden: int = 500,
           padding: int = 0, width: float = 1.0) -> nn.Sequential:
    """The LC paper's conv LeNet (Caffe LeNet-5): conv5-20, pool, conv5-50, pool, fc-500, fc-classes.

    ``padding`` 2 keeps 8x8 inputs (digits) at 8x8 through the 5x5 convolutions; 0 is the paper's
    28x28 MNIST setting. ``width`` scales channels and hidden units.
    """
    c1, c2 = (max(1, round(c * width)) for c in channels)
    h = max(1, round(hidden * width))
    features = nn.Sequential(
        nn.Conv2d(input_shape[0], c1, 5, padding=padding), nn.MaxPool2d(2), nn.ReLU(),
        nn.Conv2d(c1, c2, 5, padding=padding), nn.MaxPool2d(2), nn.ReLU(), nn.Flatten())
    with torch.no_grad():
        flat = features(torch.zeros(1, *input_shape)).shape[1]
    return nn.Sequential(*features, nn.Linear(flat, h), nn.ReLU(), nn.Linear(h, num_classes))
