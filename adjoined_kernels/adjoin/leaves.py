"""Modules that ``ak.adjoin`` traces as one call (torch.fx leaves), and the kinds of adjoining rule they get.

A leaf runs its own ``forward`` at run time, so whatever it reads from ``self.training`` (dropout, drop
path, drop block, batch-norm statistics) follows the adjoined model's ``.train()`` / ``.eval()``. Leaves:

- *pointwise*: act on each channel independently (dropout, stochastic depth, same-padded pooling); they
  run per branch on each branch's input.
- *norms*: normalisations whose parameters and statistics are per channel (BatchNorm and its timm
  norm+act forms, frozen BN) or that normalise over the channels (LayerNorm2d, GroupNorm); each branch
  gets its own copy, the small one holding the entries of its channels (docs/adjoin.md, "Layers").
- *same-padded convs* (timm's ``Conv2dSame``): adjoined like a conv, padding "same" at run time.
- whatever timm registers with ``register_notrace_module`` (when timm is installed); those without a
  rule are refused by name.

Some modules timm marks as not traceable only for a shape-dependent guard; they are traced through a
rewritten forward instead (:data:`traceable_forwards`), so that their convs are adjoined.
"""
from __future__ import annotations

import functools

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F


def _timm_layers():
    try:
        import timm.layers
    except ImportError:
        return None
    return timm.layers


@functools.cache
def pointwise_leaves() -> tuple:
    out = [nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout]
    try:
        from torchvision.ops import StochasticDepth
        out.append(StochasticDepth)
    except ImportError:
        pass
    tl = _timm_layers()
    if tl is not None:
        from timm.layers.pool2d_same import AvgPool2dSame, MaxPool2dSame
        out += [tl.DropPath, tl.DropBlock2d, MaxPool2dSame, AvgPool2dSame]
    return tuple(out)


@functools.cache
def norm_leaves() -> tuple:
    """Norms kept whole; ``nn.modules.batchnorm._BatchNorm`` subclasses (timm's BatchNormAct2d) included."""
    out = [nn.modules.batchnorm._BatchNorm, nn.GroupNorm]
    try:
        from torchvision.ops import FrozenBatchNorm2d
        out.append(FrozenBatchNorm2d)
    except ImportError:
        pass
    tl = _timm_layers()
    if tl is not None:
        out += [tl.FrozenBatchNormAct2d, tl.LayerNorm2d, tl.LayerNormAct2d, tl.GroupNormAct, tl.GroupNorm1Act]
    return tuple(out)


@functools.cache
def same_pad_convs() -> tuple:
    tl = _timm_layers()
    return () if tl is None else (tl.Conv2dSame,)


def norm_channels(mod: nn.Module) -> int:
    """The channel count a norm leaf acts on (its per-channel parameters' length)."""
    for attr in ("num_features", "num_channels"):
        if isinstance(getattr(mod, attr, None), int):
            return getattr(mod, attr)
    shape = getattr(mod, "normalized_shape", None)
    if shape is not None and len(shape) == 1:
        return int(shape[0])
    return int(next(iter(mod.buffers())).shape[0])


def norm_over_channels(mod: nn.Module) -> bool:
    """True for the norms whose statistics mix the channels (LayerNorm2d, GroupNorm): they need the small
    branch's own norm, which normalises over the channels the small branch holds."""
    return not isinstance(mod, nn.modules.batchnorm._BatchNorm) and "Frozen" not in type(mod).__name__


@fx.wrap
def pool_at_least(x: torch.Tensor, size: int) -> torch.Tensor:
    """``x`` average-pooled up to at least ``size`` x ``size`` (the guard of timm's VGG ``ConvMlp``)."""
    h, w = x.shape[-2:]
    if h >= size and w >= size:
        return x
    return F.adaptive_avg_pool2d(x, (max(size, h), max(size, w)))


def _conv_mlp_forward(m: nn.Module, x):
    x = pool_at_least(x, m.input_kernel_size)
    return m.act2(m.fc2(m.drop(m.act1(m.fc1(x)))))


@functools.cache
def traceable_forwards() -> dict:
    """``{module type: forward(module, *args)}``: a forward torch.fx can trace, equal to the module's own."""
    try:
        from timm.models.vgg import ConvMlp
    except ImportError:
        return {}
    return {ConvMlp: _conv_mlp_forward}


def is_leaf(m: nn.Module) -> bool:
    if type(m) in traceable_forwards():
        return False
    if isinstance(m, pointwise_leaves() + norm_leaves() + same_pad_convs()):
        return True
    tl = _timm_layers()
    return tl is not None and tl.is_notrace_module(type(m))


def autowrap_functions() -> tuple:
    tl = _timm_layers()
    return () if tl is None else tuple(tl.get_notrace_functions())
