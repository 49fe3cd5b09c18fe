"""Adjoined ResNets (the paper's App. C; ``docs/dan.md`` for the DAN search network).

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
from .flops import adjoined_flops
from .plain import make_stage, make_stem
from .search import WidthSearch
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

    def forward(self, x_full, x_small, scales=None):
        """``scales``: DAN's ``(inner scales, out scale)``, applied after the small BNs; None for AN."""
        inner, out = scales if scales is not None else ([None] * (len(self.convs) - 1), None)
        hf, hs = x_full, x_small
        for i, (conv, bn, s) in enumerate(zip(self.convs, self.bns, [*inner, out])):
            hf, hs = bn(*conv(hf, hs), small_scale=s)
            if i < len(self.convs) - 1:
                hf, hs = F.relu(hf), F.relu(hs)
        if self.ds_conv is not None:
            idf, ids = self.ds_bn(*self.ds_conv(x_full, x_small), small_scale=out)
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
        search_alphas: candidate divisors, e.g. ``(1, 2, 4, 8, 16)``: builds the DAN search network (the paper's
            Sec. 5; ``docs/dan.md``). Its small branch runs at every layer's widest candidate, scaled after each
            small BN by a Gumbel-softmax gate; see :meth:`arch_parameters`, :attr:`tau`,
            :meth:`expected_small_flops` and :meth:`searched_widths`. alpha and small_widths are then unused.
        tau: the initial Gumbel-softmax temperature of a search network (the paper starts at 15).

    Raises:
        ValueError: a width not divisible by alpha (or by a search alpha, naming the layer), malformed
            small_widths or search_alphas, small_widths together with search_alphas, an unknown stem or block.
    """

    def __init__(self, block, layers, num_classes=1000, alpha=4, in_channels=3, stem="imagenet", width=64,
                 small_widths=None, backend="auto", search_alphas=None, tau=15.0):
        super().__init__()
        if block not in ("basic", "bottleneck"):
            raise ValueError(f"block must be 'basic' or 'bottleneck', got {block!r}")
        if len(layers) != 4 or min(layers) < 1:
            raise ValueError(f"layers must list 4 positive block counts, got {layers}")
        if search_alphas is not None and small_widths is not None:
            raise ValueError("give small_widths (a searched architecture) or search_alphas (a search), not both")
        full = full_widths(block, layers, width)
        self.search = None if search_alphas is None else WidthSearch(full[1:], search_alphas, tau)
        if self.search is not None:
            small = self.search.widest()
        else:
            small = scaled_widths(full[1:], alpha) if small_widths is None else list(small_widths)
        check_widths(small, full[1:])
        self.block, self.layers, self.stem_kind, self.width = block, list(layers), stem, width
        self.num_classes, self.in_channels, self.alpha = num_classes, in_channels, alpha
        self.full_widths: list[StageWidths] = full[1:]
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
        self._input_hw = None

    def forward(self, x):
        self._input_hw = tuple(x.shape[-2:])
        scales = self.search.block_scales(noise=self.training) if self.search is not None else None
        h = self.layer1(self.stem(x))
        hf, hs = h, h
        for i, blk in enumerate(self.adjoined):
            hf, hs = blk(hf, hs, scales[i] if scales is not None else None)
        ff = torch.flatten(F.adaptive_avg_pool2d(hf, 1), 1)
        fs = torch.flatten(F.adaptive_avg_pool2d(hs, 1), 1)
        return self.fc(ff), F.linear(fs, self.fc.weight[:, : fs.shape[1]], self.fc.bias)

    # DAN search (the paper's Sec. 5); docs/dan.md

    def _need_search(self, what: str) -> WidthSearch:
        if self.search is None:
            raise RuntimeError(f"{what} needs a DAN search network: build it with search_alphas=(...)")
        return self.search

    @property
    def tau(self) -> float:
        """The Gumbel-softmax temperature of a search network (settable; kept in the state dict)."""
        return float(self._need_search("tau").tau)

    @tau.setter
    def tau(self, value: float) -> None:
        value = float(value)
        if not value > 0 or value == float("inf"):
            raise ValueError(f"tau must be a finite number > 0, got {value}")
        self._need_search("tau").tau.fill_(value)

    def arch_parameters(self) -> list[nn.Parameter]:
        """The gate logits ``eta`` of every searchable width (1-D, one entry per search alpha, in the order of
        ``search_alphas``); an empty list for an AN network."""
        return [] if self.search is None else [g.eta for g in self.search.gates]

    def weight_parameters(self) -> list[nn.Parameter]:
        """Every parameter but the gate logits: what the weight optimiser of a search trains."""
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def _hw(self, input_size):
        if input_size is not None:
            return tuple(int(v) for v in input_size)
        if self._input_hw is None:
            raise RuntimeError("no forward has run yet: pass input_size=(H, W) to count FLOPs")
        return self._input_hw

    def expected_small_flops(self, input_size=None) -> torch.Tensor:
        """Expected FLOPs per image of the searched small network (0-dim float32 tensor, differentiable w.r.t.
        every eta), at ``input_size=(H, W)`` or the most recent forward's spatial size.

        Each width is replaced by its expectation under ``softmax(eta)`` (the law of the Gumbel-max sample,
        independent of tau; docs/dan.md says why not ``softmax(eta / tau)``); a conv costs
        ``2 * kh * kw * P * Q * E[c_in] * E[c_out]``, where ``c_in`` is the width of the layer feeding it. The
        stem, layer1 and the classifier count too. With one-hot gates this equals
        ``torch.utils.flop_counter`` on the exported small network of :meth:`searched_widths`.

        Raises:
            RuntimeError: not a search network, or no forward yet and no input_size.
        """
        search = self._need_search("expected_small_flops")
        return adjoined_flops(self, search.expected_widths(), self._hw(input_size))

    def small_flops(self, input_size=None) -> int:
        """FLOPs per image of the small network at ``small_widths`` (for a search network: at every layer's
        widest candidate), counted as ``torch.utils.flop_counter`` counts the exported network."""
        return int(adjoined_flops(self, self.small_widths, self._hw(input_size)))

    def full_flops(self, input_size=None) -> int:
        """FLOPs per image of the full network, counted as :meth:`small_flops`."""
        return int(adjoined_flops(self, self.full_widths, self._hw(input_size)))

    def argmax_small_flops(self, input_size=None) -> torch.Tensor:
        """FLOPs per image of the argmax architecture, a 0-dim float64 tensor on eta's device (no host sync;
        not differentiable). The band term of :func:`adjoined_kernels.dan.dan_loss` keys on it."""
        search = self._need_search("argmax_small_flops")
        return adjoined_flops(self, search.argmax_width_tensors(), self._hw(input_size))

    def project(self, flops_budget: float, tolerance: float = 0.05, input_size=None):
        """The most likely architecture with counted FLOPs per image in ``[(1 - tolerance) * flops_budget,
        flops_budget]``, with its FLOPs and log-probabilities: see
        :func:`adjoined_kernels.models.project.project` (its errors too)."""
        from .project import project
        return project(self, flops_budget, tolerance, input_size)

    def searched_widths(self, flops_budget=None, tolerance: float = 0.05, input_size=None) -> list[StageWidths]:
        """The searched architecture, as ``small_widths`` for a new model.

        Without ``flops_budget``: the most likely candidate of every gate (``argmax eta``). With it (FLOPs per
        image, counted as :meth:`small_flops`): the widths that maximise ``sum_l log softmax(eta_l)[c_l]``
        subject to counted FLOPs in ``[(1 - tolerance) * flops_budget, flops_budget]`` at ``input_size``
        (default: the most recent forward's), solved exactly (:meth:`project`; docs/dan.md).

        Raises:
            ValueError: no architecture fits the band (the message names the smallest and largest reachable
                FLOPs), a budget <= 0 or a tolerance outside [0, 1).
            RuntimeError: not a search network; with a budget, no forward yet and no input_size.
        """
        search = self._need_search("searched_widths")
        if flops_budget is None:
            return search.argmax_widths()
        return self.project(flops_budget, tolerance, input_size).widths


def _factory(block, layers, name):
    def build(num_classes=1000, alpha=4, in_channels=3, stem="imagenet", width=64, small_widths=None,
              backend="auto", search_alphas=None, tau=15.0):
        return AdjoinedResNet(block, layers, num_classes, alpha, in_channels, stem, width, small_widths, backend,
                              search_alphas, tau)

    build.__name__ = name
    build.__doc__ = (f"Adjoined ResNet-{name.split('resnet')[1]} ({block} blocks, {layers}); see "
                     ":class:`AdjoinedResNet` for the arguments. Returns ``(logits_full, logits_small)``.")
    return build


adjoined_resnet18 = _factory("basic", [2, 2, 2, 2], "adjoined_resnet18")
adjoined_resnet34 = _factory("basic", [3, 4, 6, 3], "adjoined_resnet34")
adjoined_resnet50 = _factory("bottleneck", [3, 4, 6, 3], "adjoined_resnet50")
adjoined_resnet100 = _factory("bottleneck", [6, 8, 12, 6], "adjoined_resnet100")  # the paper's App. C
adjoined_resnet101 = _factory("bottleneck", [3, 4, 23, 3], "adjoined_resnet101")
