"""MobileNets from timm (never a pretrained download).

``mobilenet_v1``: MobileNet-V1 1.0 (Howard et al., arXiv 1704.04861; OPQ's ImageNet MobileNet,
4.2M parameters), timm's ``mobilenetv1_100``.
"""

from __future__ import annotations

from torch import nn

from quantbench.registry import register_model


@register_model
def mobilenet_v1(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """MobileNet-V1 1.0 with ``input_shape[0]`` input channels and ``num_classes`` outputs."""
    import timm

    return timm.create_model("mobilenetv1_100", pretrained=False, in_chans=input_shape[0], num_classes=num_classes)
