"""FLOPs per image of an adjoined ResNet's networks, counted from its layers' geometry.

The count is what ``torch.utils.flop_counter.FlopCounterMode`` reports for the exported network on one
image: every convolution (2 FLOPs per multiply-add, at the output size after stride and padding) and the
classifier; batch-norm, activations, pooling and additions count 0. Widths may be ints (an exact count) or
0-dim tensors (DAN's expected widths), so the same walk gives ``E[FLOPs]`` for independent gates:
``2 * kh * kw * P * Q * E[c_in] * E[c_out]`` per conv (docs/dan.md).
"""
from __future__ import annotations

import torch.nn as nn

from .._checks import pair
from .widths import StageWidths


def out_size(hw: tuple[int, int], m) -> tuple[int, int]:
    """Output ``(P, Q)`` of a conv or max-pool module ``m`` on an ``(H, W)`` input (floor mode)."""
    def one(n, k, s, p, d):
        return (n + 2 * p - d * (k - 1) - 1) // s + 1
    k, s, p, d = (pair(a, getattr(m, a)) for a in ("kernel_size", "stride", "padding", "dilation"))
    return one(hw[0], k[0], s[0], p[0], d[0]), one(hw[1], k[1], s[1], p[1], d[1])


def conv_flops(m, hw, c_in, c_out):
    """``(FLOPs, (P, Q))`` of conv ``m`` with the given widths on an ``(H, W)`` input (groups == 1)."""
    pq = out_size(hw, m)
    kh, kw = m.kernel_size
    return 2 * kh * kw * pq[0] * pq[1] * c_in * c_out, pq


def plain_flops(seq: nn.Module, hw):
    """``(FLOPs, (H, W) after)`` of a shared part: a stem ``nn.Sequential`` or a stage of ``PlainBlock``."""
    total = 0
    for m in seq.children():
        if isinstance(m, nn.Conv2d):
            f, hw = conv_flops(m, hw, m.in_channels, m.out_channels)
            total += f
        elif isinstance(m, nn.MaxPool2d):
            hw = out_size(hw, m)
        elif hasattr(m, "body"):  # PlainBlock: body in order, the downsample on the block input
            f, out_hw = plain_flops(m.body, hw)
            total += f + (plain_flops(m.downsample, hw)[0] if m.downsample is not None else 0)
            hw = out_hw
    return total, hw


def block_flops(blk, hw, c_in, inner, out):
    """``(FLOPs, (H, W) after)`` of one adjoined block's branch at widths ``c_in -> inner... -> out`` on an
    ``(H, W)`` input: its convs in order and the downsample conv on the block input (ints or 0-dim tensors)."""
    ws = [c_in, *inner, out]
    total, block_hw = 0, hw
    for i, conv in enumerate(blk.convs):
        f, hw = conv_flops(conv, hw, ws[i], ws[i + 1])
        total = total + f
    if blk.ds_conv is not None:
        total = total + conv_flops(blk.ds_conv, block_hw, c_in, out)[0]
    return total, hw


def shared_flops(model, hw):
    """``(FLOPs, (H, W) after)`` of the part both branches share: the stem and layer1."""
    total, hw = plain_flops(model.stem, hw)
    f, hw = plain_flops(model.layer1, hw)
    return total + f, hw


def adjoined_flops(model, widths: list[StageWidths], hw):
    """FLOPs per image of one branch of ``model`` (an AdjoinedResNet) on an ``(H, W)`` input.

    ``widths``: the stage 2-4 widths of that branch (ints, or 0-dim tensors for an expectation). Both branches
    share the stem and layer1, and their first adjoined convs read the full-width shared tensor. Returns an
    int, or a 0-dim tensor when a width is one.
    """
    total, hw = shared_flops(model, hw)
    blocks = iter(model.adjoined)
    c_in = model.layer1[-1].out
    for st in widths:
        for inner in st.inner:
            f, hw = block_flops(next(blocks), hw, c_in, inner, st.out)
            total = total + f
            c_in = st.out
    return total + 2 * c_in * model.fc.out_features
