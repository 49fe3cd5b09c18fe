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
from .leaves import norm_channels, same_pad_convs


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
    - a conv whose small output is not a channel prefix: ``out_layout`` (per-segment prefixes, for an output
      that is later split into channel pieces; or the whole groups a grouped conv's input holds), the small
      weight's rows being those output channels;
    - a non-zero ``padding_mode``, string padding, or timm's ``Conv2dSame`` ("same" padding computed from
      the input size at run time, ``same_pad``).

    ``weight`` and ``bias`` are the original conv's parameters (shared, not copied), so the gradients of
    both branches land in the right block of one weight.

    Forward: ``x_full [N, in_channels, H, W]``, ``x_small [N', c_in_s, H', W']`` ->
    ``(y_full [N, out_channels, P, Q], y_small [N', small_out_channels, P', Q'])``; any float dtype.
    """

    def __init__(self, conv: nn.Conv2d, in_layout: Layout, small_out_channels: int, small_groups: int,
                 out_layout: Layout | None = None):
        super().__init__()
        out_layout = out_layout or Layout.prefix(conv.out_channels, small_out_channels)
        self.out_runs = list(out_layout.segs)
        self.same_pad = isinstance(conv, same_pad_convs())
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
        w = gather(self.weight, 0, self.out_runs)
        return w if self.in_runs is None else gather(w, 1, self.in_runs)

    def small_bias(self) -> torch.Tensor | None:
        return None if self.bias is None else gather(self.bias, 0, self.out_runs)

    def _conv(self, x, weight, bias, groups):
        if self.same_pad:
            from timm.layers.padding import pad_same
            x = pad_same(x, weight.shape[-2:], self.stride, self.dilation)
            return F.conv2d(x, weight, bias, self.stride, 0, self.dilation, groups)
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return F.conv2d(x, weight, bias, self.stride, 0, self.dilation, groups)
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, groups)

    def forward(self, x_full, x_small):
        return (self._conv(x_full, self.weight, self.bias, self.groups),
                self._conv(x_small, self.small_weight(), self.small_bias(), self.small_groups))

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


def adjoined_conv(conv: nn.Conv2d, in_layout: Layout, out_small: int, small_groups: int, backend: str,
                  out_layout: Layout | None = None):
    """FusedAdjoinedConv2d (sharing the weight) when the fused kernels take the conv, else the split form."""
    fusable = conv.groups == 1 and in_layout.is_prefix and conv.padding_mode == "zeros" \
        and not isinstance(conv.padding, str) and not isinstance(conv, same_pad_convs()) \
        and (out_layout is None or out_layout.is_prefix)
    if not fusable:
        return SplitAdjoinedConv2d(conv, in_layout, out_small, small_groups, out_layout)
    m = FusedAdjoinedConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                            conv.dilation, bias=conv.bias is not None, small_in_channels=in_layout.small,
                            small_out_channels=out_small, backend=backend, device="meta", dtype=conv.weight.dtype)
    m.weight, m.bias = conv.weight, conv.bias
    return m


def adjoined_norm(norm: nn.Module, layout: Layout) -> AdjoinedBatchNorm2d:
    """A two-branch norm whose ``full`` is ``norm`` itself and whose ``small`` is a copy of it over the
    channels ``layout`` holds: every parameter and buffer of ``norm`` that has one entry per channel (affine
    weight and bias, running mean and variance) is replaced by those channels' entries, and its channel
    count (``num_features``, ``num_channels`` or ``normalized_shape``) set to ``layout.small``. Other state
    (``num_batches_tracked``, eps, momentum, a fused activation) is copied. The pair's forward is
    ``(full(x_full), small(x_small))``; a norm over channels (LayerNorm2d) then normalises the small branch
    over the channels it holds."""
    channels = norm_channels(norm)
    idx = torch.tensor(layout.indices(), dtype=torch.long, device=_device(norm))
    small = copy.deepcopy(norm)
    with torch.no_grad():
        for name, t in list(small.named_parameters(recurse=False)) + list(small.named_buffers(recurse=False)):
            if t is not None and t.dim() >= 1 and t.shape[0] == channels:
                sliced = t.index_select(0, idx)
                if isinstance(t, nn.Parameter):
                    setattr(small, name, nn.Parameter(sliced, t.requires_grad))
                else:
                    setattr(small, name, sliced)
    for attr in ("num_features", "num_channels"):
        if isinstance(getattr(small, attr, None), int):
            setattr(small, attr, layout.small)
    if isinstance(getattr(small, "normalized_shape", None), tuple):
        small.normalized_shape = (layout.small,)
    small.train(norm.training)
    pair = AdjoinedBatchNorm2d(channels, layout.small, device="meta")
    pair.full, pair.small = norm, small
    return pair.train(norm.training)


def _device(m: nn.Module):
    t = next(iter(list(m.parameters()) + list(m.buffers())), None)
    return None if t is None else t.device


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
        w, b, groups = (m.small_weight(), m.small_bias(), m.small_groups) if small else (m.weight, m.bias, m.groups)
        if m.same_pad:
            return _conv(w, b, m.stride, 0, m.dilation, groups, "zeros", same_pad_convs()[0])
        return _conv(w, b, m.stride, m.padding, m.dilation, groups, m.padding_mode)
    raise TypeError(f"not a two-branch layer: {type(m).__name__}")


def _conv(w, bias, stride, padding, dilation, groups, padding_mode, cls=nn.Conv2d) -> nn.Conv2d:
    out, in_per_group = w.shape[:2]
    kw = {} if cls is not nn.Conv2d else {"padding_mode": padding_mode}
    conv = cls(in_per_group * groups, out, tuple(w.shape[2:]), stride, padding, dilation, groups,
               bias is not None, device=w.device, dtype=w.dtype, **kw)
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
