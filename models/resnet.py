"""ResNets: the CIFAR family of He et al. (2016) with option-A shortcuts (``resnet20/32/44/56/110``),
Wide ResNets (``wrn``, Zagoruyko & Komodakis) and the torchvision ImageNet ``resnet18/50``.

CIFAR ResNet-(6n+2): conv3x3(16) -> 3 stages of n basic blocks (16, 32, 64 channels, stride 1/2/2)
-> global average pool -> linear. Option A: the identity shortcut subsamples by 2 and zero-pads the
new channels (no parameters). ``width`` scales every channel count (the toy members).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from quantbench.registry import register_model


def _ch(c: int, width: float) -> int:
    return max(1, round(c * width))


class BasicBlock(nn.Module):
    """Two 3x3 convs with BN; option-A (parameter-free) or 1x1-conv (option B) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, shortcut: str = "A") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.pad = 0
        self.stride = stride
        self.shortcut: nn.Module | None = None
        if stride != 1 or cin != cout:
            if shortcut == "A":
                self.pad = cout - cin
            else:
                self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.shortcut is not None:
            x = self.shortcut(x)
        elif self.stride != 1 or self.pad:
            x = x[:, :, :: self.stride, :: self.stride]
            x = F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return F.relu(out + x)


class CifarResNet(nn.Module):
    def __init__(self, depth: int, in_channels: int, num_classes: int, width: float = 1.0) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        widths = [_ch(c, width) for c in (16, 32, 64)]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        blocks, cin = [], widths[0]
        for stage, cout in enumerate(widths):
            for b in range(n):
                blocks.append(BasicBlock(cin, cout, 2 if stage > 0 and b == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _cifar_resnet(depth: int, input_shape: tuple[int, ...], num_classes: int, width: float) -> CifarResNet:
    return CifarResNet(depth, input_shape[0], num_classes, width)


@register_model
def resnet20(input_shape: tuple[int, ...], num_classes: int, width: float = 1.0) -> CifarResNet:
    """CIFAR ResNet-20 (0.27M parameters at width 1)."""
    return _cifar_resnet(20, input_shape, num_classes, width)


@register_model
def resnet32(input_shape: tuple[int, ...], num_classes: int, width: float = 1.0) -> CifarResNet:
    return _cifar_resnet(32, input_shape, num_classes, width)


@register_model
def resnet44(input_shape: tuple[int, ...], num_classes: int, width: float = 1.0) -> CifarResNet:
    return _cifar_resnet(44, input_shape, num_classes, width)


@register_model
def resnet56(input_shape: tuple[int, ...], num_classes: int, width: float = 1.0) -> CifarResNet:
    return _cifar_resnet(56, input_shape, num_classes, width)


@register_model
def resnet110(input_shape: tuple[int, ...], num_classes: int, width: float = 1.0) -> CifarResNet:
    return _cifar_resnet(110, input_shape, num_classes, width)


class WideBlock(nn.Module):
    """Pre-activation wide block (BN-ReLU-conv x2, 1x1 projection when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.shortcut = None if stride == 1 and cin == cout else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn1(x))
        y = self.conv2(self.dropout(F.relu(self.bn2(self.conv1(o)))))
        return y + (x if self.shortcut is None else self.shortcut(o))


@register_model
def wrn(input_shape: tuple[int, ...], num_classes: int, depth: int = 28, widen: int = 10, dropout: float = 0.0,
        width: float = 1.0) -> nn.Sequential:
    """Wide ResNet-depth-widen (WRN-28-10 by default: DiffQ's CIFAR WRN), (depth-4)/6 blocks per stage."""
    if (depth - 4) % 6:
        raise ValueError(f"WRN depth must be 6n+4, got {depth}")
    n = (depth - 4) // 6
    widths = [_ch(c, width) for c in (16, 16 * widen, 32 * widen, 64 * widen)]
    layers: list[nn.Module] = [nn.Conv2d(input_shape[0], widths[0], 3, 1, 1, bias=False)]
    cin = widths[0]
    for stage, cout in enumerate(widths[1:]):
        for b in range(n):
            layers.append(WideBlock(cin, cout, 2 if stage > 0 and b == 0 else 1, dropout))
            cin = cout
    layers += [nn.BatchNorm2d(cin), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers)


def _torchvision_resnet(name: str, input_shape: tuple[int, ...], num_classes: int, stem: str) -> nn.Module:
    """torchvision's ImageNet ResNet; ``stem='cifar'`` (or 'auto' on inputs under 64 px) swaps the
    7x7/2 conv + max-pool stem for a 3x3/1 conv, the usual CIFAR adaptation (e.g. DiffQ's ResNet-18)."""
    import torchvision

    model = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
    if stem not in ("auto", "imagenet", "cifar"):
        raise ValueError(f"stem must be 'auto', 'imagenet' or 'cifar', got {stem!r}")
    if stem == "cifar" or (stem == "auto" and min(input_shape[1:]) < 64):
        model.conv1 = nn.Conv2d(input_shape[0], 64, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
    elif input_shape[0] != 3:
        model.conv1 = nn.Conv2d(input_shape[0], 64, 7, 2, 3, bias=False)
    return model


@register_model
def resnet18(input_shape: tuple[int, ...], num_classes: int, stem: str = "auto") -> nn.Module:
    """torchvision ResNet-18 (11.7M parameters on ImageNet)."""
    return _torchvision_resnet("resnet18", input_shape, num_classes, stem)


@register_model
def resnet50(input_shape: tuple[int, ...], num_classes: int, stem: str = "auto") -> nn.Module:
    """torchvision ResNet-50 (25.6M parameters on ImageNet)."""
    return _torchvision_resnet("resnet50", input_shape, num_classes, stem)
