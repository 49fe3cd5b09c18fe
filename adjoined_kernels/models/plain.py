"""Plain ResNets built from torch.nn layers: the shared stem/layer1 and the exported networks."""
from __future__ import annotations

import torch
import torch.nn as nn


def conv_bn(cin: int, cout: int, k: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout)]


class PlainBlock(nn.Module):
    """Residual block with explicit widths: basic (``inner=[m]``: 3x3, 3x3) or bottleneck
    (``inner=[m1, m2]``: 1x1, 3x3 with the stride, 1x1). Without a downsample, a wider identity is
    sliced to its ``out``-channel prefix (docs/maths.md, section 2)."""

    def __init__(self, cin: int, inner: list[int], out: int, stride: int, downsample: bool):
        super().__init__()
        widths = [cin, *inner, out]
        kernels = [3, 3] if len(inner) == 1 else [1, 3, 1]
        strides = [stride, 1] if len(inner) == 1 else [1, stride, 1]
        layers = []
        for i, (k, s) in enumerate(zip(kernels, strides)):
            layers += conv_bn(widths[i], widths[i + 1], k, s)
            if i < len(kernels) - 1:
                layers.append(nn.ReLU(inplace=True))
        self.body = nn.Sequential(*layers)
        self.downsample = nn.Sequential(*conv_bn(cin, out, 1, stride)) if downsample else None
        self.out = out
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        identity = self.downsample(x) if self.downsample is not None else x[:, : self.out]
        return self.relu(self.body(x) + identity)


def make_stem(kind: str, in_channels: int, width: int) -> nn.Sequential:
    """"cifar": 3x3 stride 1, no max-pool. "imagenet": 7x7 stride 2 and a 3x3 stride-2 max-pool."""
    if kind == "cifar":
        return nn.Sequential(*conv_bn(in_channels, width, 3), nn.ReLU(inplace=True))
    if kind == "imagenet":
        return nn.Sequential(nn.Conv2d(in_channels, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width),
                             nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
    raise ValueError(f"stem must be 'cifar' or 'imagenet', got {kind!r}")


class PlainResNet(nn.Module):
    """stem -> stages of PlainBlocks -> global average pool -> Linear. Input ``[N, C, H, W]`` -> ``[N, classes]``."""

    def __init__(self, stem: nn.Sequential, stages: list[nn.Sequential], fc: nn.Linear):
        super().__init__()
        self.stem = stem
        self.stages = nn.Sequential(*stages)
        self.fc = fc

    def forward(self, x):
        h = self.stages(self.stem(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(h, 1), 1))


def make_stage(cin: int, inner: list[list[int]], out: int, stride: int) -> nn.Sequential:
    """One stage: the first block carries the stride and, when needed, the downsample."""
    blocks = []
    for i, widths in enumerate(inner):
        s = stride if i == 0 else 1
        blocks.append(PlainBlock(cin, widths, out, s, downsample=(s != 1 or cin != out)))
        cin = out
    return nn.Sequential(*blocks)
