"""Adjoined ResNets (seeds/000 App. C; DESIGN §1 "Where the small branch starts").

The stem and layer1 are shared (one branch, computed once). Every conv of layers 2-4 is a
FusedAdjoinedConv2d, each followed by an AdjoinedBatchNorm2d (one BN per branch). The classifier is one
shared Linear; the small head uses ``fc.weight[:, :feat_small]`` and the same bias. The small branch is
compact: its activations really have the small widths, so it costs about 1/alpha^2 of the FLOPs.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..nn import AdjoinedBatchNorm2d, FusedAdjoinedConv2d
from .plain import make_stage, make_stem
from .widths import StageWidths, check_widths, full_widths, scaled_widths


class AdjoinedBlock(nn.Module):
    """Residual block over both branches: ``(x_full, x_small) -> (y_full, y_small)``.

    basic: ``inner=[m]`` (3x3, 3x3); bottleneck: ``inner=[m1, m2]`` (1x1, 3x3 with the stride, 1x1).
    ``cin``/``inner``/``out`` are (full, small) pairs. Without a downsample, a wider small identity is sliced
    to its prefix.
    """

    def __init__(self, cin, inner, out, stride, downsample, backend="auto"):
        super().__init__()
        widths = [cin, *inner, out]
        kernels = [3, 3] if len(inner) == 1 else [1, 3, 1]
        strides = [stride, 1] if len(inner) == 1 else [1, stride, 1]
        self.convs = nn.ModuleList()
        self.bns = nn.ModuleList()
        for i, (k, s) in enumerate(zip(kernels, strides)):
            (fi, si), (fo, so) = widths[i], widths[i + 1]
            self.convs.append(FusedAdjoinedConv2d(fi, fo, k, s, k // 2, bias=False, small_in_channels=si,
                                                  small_out_channels=so, backend=backend))
            self.bns.append(AdjoinedBatchNorm2d(fo, so))
        self.ds_conv = self.ds_bn = None
        if downsample:
            self.ds_conv = FusedAdjoinedConv2d(cin[0], out[0], 1, stride, 0, bias=False, small_in_channels=cin[1],
                                               small_out_channels=out[1], backend=backend)
            self.ds_bn = AdjoinedBatchNorm2d(*out)
        elif cin[1] < out[1]:
            raise ValueError(f"a block without downsample needs small input width {cin[1]} >= small output {out[1]}")
        self.out_small = out[1]

    def forward(self, x_full, x_small):
        hf, hs = x_full, x_small
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            hf, hs = bn(*conv(hf, hs))
            if i < len(self.convs) - 1:
                hf, hs = F.relu(hf), F.relu(hs)
        if self.ds_conv is not None:
            idf, ids = self.ds_bn(*self.ds_conv(x_full, x_small))
        else:
            idf, ids = x_full, x_small[:, : self.out_small]
        return F.relu(hf + idf), F.relu(hs + ids)


class AdjoinedResNet(nn.Module):
    """Adjoined ResNet: ``model(x [N, in_channels, H, W]) -> (logits_full, logits_small)``, each ``[N, classes]``.

    Args:
        block: "basic" or "bottleneck". layers: blocks per stage, e.g. [2, 2, 2, 2].
        num_classes, in_channels: as usual. alpha: width divisor of the small network (1 = equal to full).
        stem: "cifar" (3x3 stride 1, no max-pool) or "imagenet" (7x7 stride 2 + max-pool).
        width: base width (64 in torchvision). small_widths: per-stage :class:`StageWidths` for layers 2-4,
            overriding alpha (how a DAN search sets per-layer widths). backend: passed to every adjoined conv.

    Raises:
        ValueError: a width not divisible by alpha, malformed small_widths, an unknown stem or block.
    """

    def __init__(self, block, layers, num_classes=1000, alpha=4, in_channels=3, stem="imagenet", width=64,
                 small_widths=None, backend="auto"):
        super().__init__()
        if block not in ("basic", "bottleneck"):
            raise ValueError(f"block must be 'basic' or 'bottleneck', got {block!r}")
        if len(layers) != 4 or min(layers) < 1:
            raise ValueError(f"layers must list 4 positive block counts, got {layers}")
        full = full_widths(block, layers, width)
        small = scaled_widths(full[1:], alpha) if small_widths is None else list(small_widths)
        check_widths(small, full[1:])
        self.block, self.layers, self.stem_kind, self.width = block, list(layers), stem, width
        self.num_classes, self.in_channels, self.alpha = num_classes, in_channels, alpha
        self.small_widths: list[StageWidths] = small
        self.stem = make_stem(stem, in_channels, width)
        self.layer1 = make_stage(width, full[0].inner, full[0].out, 1)
        self.adjoined = nn.ModuleList()
        cin = (full[0].out, full[0].out)
        for f, s in zip(full[1:], small):
            for i, (fi, si) in enumerate(zip(f.inner, s.inner)):
                stride = 2 if i == 0 else 1
                ds = stride != 1 or cin[0] != f.out
                self.adjoined.append(AdjoinedBlock(cin, list(zip(fi, si)), (f.out, s.out), stride, ds, backend))
                cin = (f.out, s.out)
        self.fc = nn.Linear(full[-1].out, num_classes)

    def forward(self, x):
        h = self.layer1(self.stem(x))
        hf, hs = h, h
        for blk in self.adjoined:
            hf, hs = blk(hf, hs)
        ff = torch.flatten(F.adaptive_avg_pool2d(hf, 1), 1)
        fs = torch.flatten(F.adaptive_avg_pool2d(hs, 1), 1)
        return self.fc(ff), F.linear(fs, self.fc.weight[:, : fs.shape[1]], self.fc.bias)


def _factory(block, layers, name):
    def build(num_classes=1000, alpha=4, in_channels=3, stem="imagenet", width=64, small_widths=None,
              backend="auto"):
        return AdjoinedResNet(block, layers, num_classes, alpha, in_channels, stem, width, small_widths, backend)

    build.__name__ = name
    build.__doc__ = (f"Adjoined ResNet-{name.split('resnet')[1]} ({block} blocks, {layers}); see "
                     ":class:`AdjoinedResNet` for the arguments. Returns ``(logits_full, logits_small)``.")
    return build


adjoined_resnet18 = _factory("basic", [2, 2, 2, 2], "adjoined_resnet18")
adjoined_resnet34 = _factory("basic", [3, 4, 6, 3], "adjoined_resnet34")
adjoined_resnet50 = _factory("bottleneck", [3, 4, 6, 3], "adjoined_resnet50")
adjoined_resnet101 = _factory("bottleneck", [3, 4, 23, 3], "adjoined_resnet101")
