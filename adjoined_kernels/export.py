"""Export one branch of an adjoined ResNet as a plain torch.nn network with physically sliced weights."""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .models.plain import PlainBlock, PlainResNet
from .models.resnet import AdjoinedResNet


def _copy_conv(dst: nn.Conv2d, src, small: bool) -> None:
    w = src.weight[: dst.out_channels, : dst.in_channels] if small else src.weight
    dst.weight.data.copy_(w.detach())


def _copy_bn(dst: nn.BatchNorm2d, src, small: bool) -> None:
    dst.load_state_dict((src.small if small else src.full).state_dict())


def _export_block(blk, small: bool) -> PlainBlock:
    convs = list(blk.convs)
    width = (lambda c: (c.small_in_channels, c.small_out_channels)) if small else \
        (lambda c: (c.in_channels, c.out_channels))
    cin = width(convs[0])[0]
    inner = [width(c)[1] for c in convs[:-1]]
    out = width(convs[-1])[1]
    stride = max(c.stride[0] for c in convs)
    plain = PlainBlock(cin, inner, out, stride, downsample=blk.ds_conv is not None)
    plain_convs = [m for m in plain.body if isinstance(m, nn.Conv2d)]
    plain_bns = [m for m in plain.body if isinstance(m, nn.BatchNorm2d)]
    for pc, pb, c, b in zip(plain_convs, plain_bns, convs, blk.bns):
        _copy_conv(pc, c, small)
        _copy_bn(pb, b, small)
    if blk.ds_conv is not None:
        _copy_conv(plain.downsample[0], blk.ds_conv, small)
        _copy_bn(plain.downsample[1], blk.ds_bn, small)
    return plain


def _export(model: AdjoinedResNet, small: bool, fold_bn: bool) -> PlainResNet:
    if not isinstance(model, AdjoinedResNet):
        raise TypeError(f"model must be an adjoined_kernels.models.AdjoinedResNet, got {type(model).__name__}")
    if model.search is not None:
        raise ValueError("a DAN search network holds many small networks: build the searched one with "
                         "small_widths=model.searched_widths(), retrain it, and export that")
    blocks = [_export_block(b, small) for b in model.adjoined]
    feat = blocks[-1].out
    fc = nn.Linear(feat, model.num_classes)
    fc.weight.data.copy_(model.fc.weight.detach()[:, :feat])
    fc.bias.data.copy_(model.fc.bias.detach())
    stages = [copy.deepcopy(model.layer1)] + [nn.Sequential(*blocks)]
    net = PlainResNet(copy.deepcopy(model.stem), stages, fc)
    net = net.to(device=model.fc.weight.device, dtype=model.fc.weight.dtype).train(model.training)
    return fold_batchnorm(net) if fold_bn else net


def export_small(model: AdjoinedResNet, fold_bn: bool = False) -> PlainResNet:
    """The small network as plain ``torch.nn`` layers with physically sliced weights (docs/maths.md, section 2).

    Every adjoined conv becomes ``nn.Conv2d`` with ``weight[:c_out_s, :c_in_s]`` copied, each small-branch BN
    an ``nn.BatchNorm2d``, and the classifier ``nn.Linear`` with ``fc.weight[:, :feat_small]``. In ``eval()``
    its output ``[N, classes]`` equals the adjoined model's ``logits_small`` (fp32, rel. err < 1e-5).

    Args:
        model: an :class:`~adjoined_kernels.models.AdjoinedResNet`.
        fold_bn: fold every BN into the preceding conv's weight and bias (eval-only inference model; exact to
            fp32 rounding), the usual deployment step.

    Returns:
        A new :class:`~adjoined_kernels.models.PlainResNet` on the model's device and dtype; no weight is shared.

    An :class:`~adjoined_kernels.AdjoinedModel` (from ``ak.adjoin``) exports to a plain ``torch.fx.GraphModule``
    instead (see docs/adjoin.md).

    Raises:
        TypeError: ``model`` is neither an AdjoinedResNet nor an AdjoinedModel.
    """
    if _is_adjoined_model(model):
        from .adjoin.export import export_branch
        return export_branch(model, small=True, fold_bn=fold_bn)
    return _export(model, small=True, fold_bn=fold_bn)


def export_full(model: AdjoinedResNet, fold_bn: bool = False) -> PlainResNet:
    """The full network as plain ``torch.nn`` layers; equal to ``logits_full`` in ``eval()``.

    Same arguments and errors as :func:`export_small`. Useful to time or count FLOPs of the full network.
    """
    if _is_adjoined_model(model):
        from .adjoin.export import export_branch
        return export_branch(model, small=False, fold_bn=fold_bn)
    return _export(model, small=False, fold_bn=fold_bn)


def _is_adjoined_model(model) -> bool:
    from .adjoin.model import AdjoinedModel
    return isinstance(model, AdjoinedModel)


def fold_batchnorm(net: nn.Module) -> nn.Module:
    """Fold each ``nn.BatchNorm2d`` that directly follows an ``nn.Conv2d`` in an ``nn.Sequential`` into the conv.

    Returns ``net`` in eval mode, modified in place; folded BNs become ``nn.Identity``.
    """
    net.eval()
    for seq in [m for m in net.modules() if isinstance(m, nn.Sequential)]:
        mods = list(seq)
        for i in range(len(mods) - 1):
            if isinstance(mods[i], nn.Conv2d) and isinstance(mods[i + 1], nn.BatchNorm2d):
                with torch.no_grad():
                    seq[i] = fuse_conv_bn_eval(mods[i], mods[i + 1])
                seq[i + 1] = nn.Identity()
    return net
