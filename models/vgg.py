"""VGG16 (Simonyan & Zisserman) and AlexNet.

``vgg16``: ``variant='cifar'`` is the CIFAR VGG16 with batch norm (13 conv3x3-BN-ReLU, 5 max-pools,
one linear classifier on the 512 pooled features); ``'imagenet'`` is torchvision's ``vgg16`` /
``vgg16_bn``; ``'auto'`` picks CIFAR for inputs under 64 px. On inputs smaller than 32 px (digits'
8x8) a max-pool is skipped once the feature map is 1x1, so the same network builds on any size.
"""

from __future__ import annotations

from torch import nn

from quantbench.registry import register_model

VGG16_LAYERS = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


@register_model
def vgg16(input_shape: tuple[int, ...], num_classes: int, variant: str = "auto", batch_norm: bool = True,
          width: float = 1.0) -> nn.Module:
    """VGG16; ``width`` scales the channels of the CIFAR variant (the toy members)."""
    if variant not in ("auto", "cifar", "imagenet"):
        raise ValueError(f"variant must be 'auto', 'cifar' or 'imagenet', got {variant!r}")
    channels, size = input_shape[0], min(input_shape[1:])
    if variant == "imagenet" or (variant == "auto" and size >= 64):
        import torchvision

        model = (torchvision.models.vgg16_bn if batch_norm else torchvision.models.vgg16)(
            weights=None, num_classes=num_classes)
        if channels != 3:
            model.features[0] = nn.Conv2d(channels, 64, 3, padding=1)
        return model
    layers: list[nn.Module] = []
    for v in VGG16_LAYERS:
        if v == "M":
            if size > 1:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            continue
        out = max(1, round(v * width))
        layers += [nn.Conv2d(channels, out, 3, padding=1, bias=not batch_norm)]
        layers += [nn.BatchNorm2d(out), nn.ReLU(inplace=True)] if batch_norm else [nn.ReLU(inplace=True)]
        channels = out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes)]
    return nn.Sequential(*layers)


@register_model
def alexnet(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """torchvision AlexNet (OPQ's ImageNet AlexNet; 61M parameters)."""
    import torchvision

    model = torchvision.models.alexnet(weights=None, num_classes=num_classes)
    if input_shape[0] != 3:
        model.features[0] = nn.Conv2d(input_shape[0], 64, 11, 4, 2)
    return model
