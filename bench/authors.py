"""The authors' masked form of an adjoined ResNet (utkarshnath/Adjoint-Network), rebuilt as a baseline.

Each adjoined conv runs once over the concatenated batch [x_full; x_small] at full width, and the small
half's output channels beyond c_out_s are zeroed by a mask, so the small branch costs full FLOPs. Each
branch has its own full-width BN. Same parameters and widths as the compact AdjoinedResNet it mirrors.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from adjoined_kernels.models import AdjoinedResNet


class MaskedConvBN(nn.Module):
    """conv over [x_full; x_small] with one weight, per-branch BN, small half masked to c_out_s channels."""

    def __init__(self, conv, c_out_s: int):
        super().__init__()
        self.conv = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                              conv.dilation, bias=False)
        self.bn_full, self.bn_small = nn.BatchNorm2d(conv.out_channels), nn.BatchNorm2d(conv.out_channels)
        mask = torch.zeros(1, conv.out_channels, 1, 1)
        mask[:, :c_out_s] = 1
        self.register_buffer("mask", mask)

    def forward(self, x):
        z = self.conv(x)
        n = z.shape[0] // 2
        return torch.cat([self.bn_full(z[:n]), self.bn_small(z[n:]) * self.mask])


class AuthorsResNet(nn.Module):
    """``model(x) -> (logits_full, logits_small)`` in the authors' masked form; mirrors ``ref``'s layout."""

    def __init__(self, ref: AdjoinedResNet):
        super().__init__()
        self.stem, self.layer1, self.fc = ref.stem, ref.layer1, ref.fc
        self.blocks = nn.ModuleList()
        for blk in ref.adjoined:
            layers = nn.ModuleList(MaskedConvBN(c, c.small_out_channels) for c in blk.convs)
            ds = MaskedConvBN(blk.ds_conv, blk.ds_conv.small_out_channels) if blk.ds_conv is not None else None
            self.blocks.append(nn.ModuleDict({"layers": layers, "ds": ds} if ds else {"layers": layers}))

    def forward(self, x):
        h = self.layer1(self.stem(x))
        h = torch.cat([h, h])
        for blk in self.blocks:
            out = h
            for i, layer in enumerate(blk["layers"]):
                out = layer(out)
                if i < len(blk["layers"]) - 1:
                    out = F.relu(out)
            h = F.relu(out + (blk["ds"](h) if "ds" in blk else h))
        feats = torch.flatten(F.adaptive_avg_pool2d(h, 1), 1)
        n = x.shape[0]
        return self.fc(feats[:n]), self.fc(feats[n:])
