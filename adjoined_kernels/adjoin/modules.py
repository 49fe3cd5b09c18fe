"""Two-branch layers that ``ak.adjoin`` puts in place of a traced model's Conv2d / BatchNorm / Linear,
and their export to plain torch layers with physically sliced weights.

Every layer takes ``(x_full, x_small)`` and returns ``(y_full, y_small)``; the small branch reads the
channels its input layout says it holds (see docs/adjoin.md and the paper "Adjoined Networks: a training
paradigm with applications to network compression", Sec. 3, Eq. 1-2).
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..nn import AdjoinedBatchNorm2d, FusedAdjoinedConv2d
from .layout import Layout, gather


def _in_runs(layout: Layout) -> list[tuple[int, int]]:
    """Column runs ``[(offset, length)]`` of the weight that the small input's channels meet."""
    return list(layout.segs)


class SplitAdjoinedConv2d(nn.Module):
    """Adjoined conv computed as two ``F.conv2d`` calls (unfused), for what the fused kernels do not take:

    - a grouped or depthwise conv (``groups > 1``): the small branch keeps the first ``small_groups`` groups,
      so it reads the first ``small_groups * in_channels / groups`` channels and writes the first
      ``small_out_channels``; a depthwise conv stays depthwise on the channel prefix;
    - a conv whose small input is not a channel prefix (it reads a concatenation): the small branch uses the
      gathered weight columns ``weight[:c_out_s][:, idx]``, idx being the full channels it holds;
    - a non-zero ``padding_mode`` or string padding.

    ``weight`` and ``bias`` are the original conv's parameters (shared, not copied), so the gradients of
    both branches land in the right block of one weight.

    Forward: ``x_full [N, in_channels, H, W]``, ``x_small [N', c_in_s, H', W']`` ->
    ``(y_full [N, out_channels, P, Q], y_small [N', small_out_channels, P', Q'])``; any float dtype.
    """

    def __init__(self, conv: nn.Conv2d, in_layout: Layout, small_out_channels: int, small_groups: int):
        super().__init__()
        self.weight, self.bias = conv.weight, conv.bias
        self.in_channels, self.out_channels, self.groups = conv.in_channels, conv.out_channels, conv.groups
        self.kernel_size, self.stride, self.dilation = conv.kernel_size, conv.stride, conv.dilation
        self.padding, self.padding_mode = conv.padding, conv.padding_mode
        self._reversed_padding_repeated_twice = conv._reversed_padding_repeated_twice
        self.small_out_channels, self.small_groups = small_out_channels, small_groups
        self.in_runs = _in_runs(in_layout) if conv.groups == 1 else None
        self.small_in_channels = in_layout.small if conv.groups == 1 else \
            small_groups * conv.in_channels // conv.groups

    def small_weight(self) -> torch.Tensor:
        w = self.weight[: self.small_out_channels]
        return w if self.in_runs is None else gather(w, 1, self.in_runs)

    def _conv(self, x, weight, bias, groups):
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return F.conv2d(x, weight, bias, self.stride, 0, self.dilation, groups)
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, groups)

    def forward(self, x_full, x_small):
        b_s = None if self.bias is None else self.bias[: self.small_out_channels]
        return (self._conv(x_full, self.weight, self.bias, self.groups),
                self._conv(x_small, self.small_weight(), b_s, self.small_groups))

    def extra_repr(self):
        gathered = self.in_runs is not None and len(self.in_runs) > 1
        return (f"{self.in_channels}->{self.out_channels} (small {self.small_in_channels}->"
                f"{self.small_out_channels}), kernel_size={self.kernel_size}, stride={self.stride}, "
                f"groups={self.groups} (small {self.small_groups}), gathered={gathered}")


class AdjoinedLinear(nn.Module):
    """Shared ``nn.Linear`` over ``[N, F]`` features: ``y_small = x_small @ W[:out_s, idx].T + b[:out_s]``.

    ``idx`` are the full features the small input holds (a prefix after a conv stack, as in the adjoined
    ResNets' ``fc.weight[:, :feat_small]``); the logits layer keeps ``out_s = out_features``.
    """

    def __init__(self, linear: nn.Linear, in_layout: Layout, small_out_features: int):
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.small_out_features, self.in_runs = small_out_features, _in_runs(in_layout)
        self.small_in_features = in_layout.small

    def small_weight(self) -> torch.Tensor:
        return gather(self.weight[: self.small_out_features], 1, self.in_runs)

    def forward(self, x_full, x_small):
        b_s = None if self.bias is None else self.bias[: self.small_out_features]
        return F.linear(x_full, self.weight, self.bias), F.linear(x_small, self.small_weight(), b_s)

    def extra_repr(self):
        return (f"{self.in_features}->{self.out_features} (small {self.small_in_features}->"
                f"{self.small_out_features})")


def adjoined_conv(conv: nn.Conv2d, in_layout: Layout, out_small: int, small_groups: int, backend: str):
    """FusedAdjoinedConv2d (sharing the weight) when the fused kernels take the conv, else the split form."""
    fusable = conv.groups == 1 and in_layout.is_prefix and conv.padding_mode == "zeros" \
        and not isinstance(conv.padding, str)
    if not fusable:
        return SplitAdjoinedConv2d(conv, in_layout, out_small, small_groups)
    m = FusedAdjoinedConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                            conv.dilation, bias=conv.bias is not None, small_in_channels=in_layout.small,
                            small_out_channels=out_small, backend=backend, device="meta", dtype=conv.weight.dtype)
    m.weight, m.bias = conv.weight, conv.bias
    return m


def adjoined_batchnorm(bn: nn.modules.batchnorm._BatchNorm, layout: Layout) -> AdjoinedBatchNorm2d:
    """AdjoinedBatchNorm2d whose ``full`` is ``bn`` itself and whose ``small`` is a new BN of the same type
    holding a copy of the affine parameters and running statistics of the channels ``layout`` holds."""
    idx = torch.tensor(layout.indices(), dtype=torch.long, device=_device(bn))
    pair = AdjoinedBatchNorm2d(bn.num_features, layout.small, device="meta")
    small = type(bn)(layout.small, bn.eps, bn.momentum, bn.affine, bn.track_running_stats,
                     device=_device(bn), dtype=_dtype(bn))
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            src = getattr(bn, name)
            if src is not None:
                getattr(small, name).copy_(src.index_select(0, idx))
        if bn.num_batches_tracked is not None:
            small.num_batches_tracked.copy_(bn.num_batches_tracked)
    small.train(bn.training)
    pair.full, pair.small = bn, small
    return pair.train(bn.training)


def _device(m: nn.Module):
    t = next(iter(list(m.parameters()) + list(m.buffers())), None)
    return None if t is None else t.device


def _dtype(m: nn.Module):
    t = next(iter(m.parameters()), None)
    return None if t is None else t.dtype


PAIR_TYPES = (FusedAdjoinedConv2d, SplitAdjoinedConv2d, AdjoinedBatchNorm2d, AdjoinedLinear)


def to_plain(m: nn.Module, small: bool) -> nn.Module:
    """One branch of a two-branch layer as a new plain torch layer with copied (sliced) weights."""
    if isinstance(m, AdjoinedBatchNorm2d):
        return copy.deepcopy(m.small if small else m.full)
    if isinstance(m, AdjoinedLinear):
        return _linear(m.small_weight() if small else m.weight, m.bias, m.small_out_features if small else None)
    if isinstance(m, FusedAdjoinedConv2d):
        w = m.weight[: m.small_out_channels, : m.small_in_channels] if small else m.weight
        return _conv(w, m.bias, m.stride, m.padding, m.dilation, 1, "zeros")
    if isinstance(m, SplitAdjoinedConv2d):
        w, groups = (m.small_weight(), m.small_groups) if small else (m.weight, m.groups)
        return _conv(w, m.bias, m.stride, m.padding, m.dilation, groups, m.padding_mode)
    raise TypeError(f"not a two-branch layer: {type(m).__name__}")


def _conv(w, bias, stride, padding, dilation, groups, padding_mode) -> nn.Conv2d:
    out, in_per_group = w.shape[:2]
    conv = nn.Conv2d(in_per_group * groups, out, tuple(w.shape[2:]), stride, padding, dilation, groups,
                     bias is not None, padding_mode, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        conv.weight.copy_(w)
        if bias is not None:
            conv.bias.copy_(bias[:out])
    return conv


def _linear(w, bias, out) -> nn.Linear:
    lin = nn.Linear(w.shape[1], w.shape[0], bias is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        lin.weight.copy_(w)
        if bias is not None:
            lin.bias.copy_(bias[: w.shape[0]])
    return lin
