"""``ak.adjoin``: any torch.fx-traceable CNN as an adjoined network (the paper "Adjoined Networks: a
training paradigm with applications to network compression", Sec. 3: "any CNN-based architecture can be
converted and trained in an adjoined fashion by replacing the standard convolution operation by the
adjoined convolution operation"). How the conversion works: docs/adjoin.md."""
from __future__ import annotations

import copy

import torch.fx as fx
import torch.nn as nn

from ..nn import AdjoinedBatchNorm2d
from .builder import Context
from .tracing import (DEFAULT_HW, branch_nodes, first_conv_channels, logits_layers, propagate_shapes,
                      resolve_start, trace)


class AdjoinedModel(nn.Module):
    """A traced CNN run as two networks that share their weights: ``model(x) -> (logits_full, logits_small)``.

    Built by :func:`adjoin`. ``net`` is the two-branch ``torch.fx.GraphModule``; its submodules keep the
    original model's paths, with every adjoined Conv2d / BatchNorm / Linear replaced by its two-branch form.

    Forward: ``x [N, C, H, W]`` (fp32/fp16/bf16, NCHW or channels_last) -> ``(logits_full, logits_small)``,
    both ``[N, num_classes]`` (the structure of the model's own output, once per branch).

    Attributes:
        alpha, start, backend: as given to :func:`adjoin`.
        widths: ``{module path: (full width, small width)}`` of every adjoined Conv2d / Linear output.
        shared: module paths that run once, before the branches split.
    """

    def __init__(self, net: fx.GraphModule, alpha: int, start: str, backend: str, widths: dict, shared: list):
        super().__init__()
        self.net = net
        self.alpha, self.start, self.backend = alpha, start, backend
        self.widths, self.shared = dict(widths), list(shared)

    def forward(self, x):
        return self.net(x)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, start={self.start!r}, backend={self.backend!r}, adjoined layers={len(self.widths)}"


def adjoin(model: nn.Module, alpha: int = 4, start: str | None = None, small_widths: dict | None = None,
           backend: str = "auto", *, input_shape: tuple | None = None) -> AdjoinedModel:
    """Convert ``model`` into an :class:`AdjoinedModel` whose small network is ``1/alpha`` as wide.

    The model is deep-copied and traced with torch.fx. Nodes before ``start`` run once and are shared; from
    ``start`` on every node runs on both branches:

    - ``nn.Conv2d`` (groups == 1) becomes :class:`~adjoined_kernels.FusedAdjoinedConv2d` sharing the weight:
      ``z_small = conv(x_small, W[:c_out/alpha, :c_in_s])``. Grouped/depthwise convs keep their first
      ``groups/alpha`` groups, and convs that read a channel concatenation use the gathered weight columns;
      both run as two ``F.conv2d`` calls (unfused), since the fused kernels take ``groups=1`` and a channel
      prefix only.
    - ``nn.BatchNorm2d`` and the other norms kept whole (timm's ``BatchNormAct2d``, ``LayerNorm2d``,
      ``GroupNorm``) become :class:`~adjoined_kernels.AdjoinedBatchNorm2d` pairs (``full`` is the original;
      ``small`` a copy holding the statistics and affine parameters of the channels the small branch holds).
    - Dropout, DropPath, StochasticDepth and ``F.dropout(..., training=self.training)`` read the training
      flag at run time, so they follow ``.train()`` / ``.eval()`` of the adjoined model.
    - A channel split whose pieces would hold nothing makes the convs before it keep a prefix of each piece.
    - ``nn.Linear`` on ``[N, features]`` is shared; the small branch reads the features it holds. The logits
      layer (the Linear or 1x1 conv that produces the output) keeps its full output width.
    - Pointwise ops, pooling, dropout, residual adds, SE-style gates ``x * gate``, ``flatten`` and channel
      concatenation (each segment keeps its prefix, so the small network stays compact) run per branch.

    Args:
        model: a torch.fx-traceable CNN taking one ``[N, C, H, W]`` tensor. Not modified.
        alpha: width divisor; every adjoined conv/linear gets ``max(1, out // alpha)`` small outputs.
            ``alpha=1`` gives both outputs equal to ``model(x)``.
        start: module path where the branches split (e.g. ``"layer2"``, ``"features.4"``); the module and
            everything after it are adjoined. Defaults to ``"layer2"`` when the model has one, else for a timm
            model to :func:`~adjoined_kernels.adjoin.timm_start`.
        small_widths: ``{conv or linear module path: small output width}`` overriding ``out // alpha`` for
            those layers (grouped convs: a multiple of ``out_channels / groups``).
        backend: backend of the fused adjoined convs ("auto", "reference", "triton", "cuda").
        input_shape: ``(C, H, W)`` of one input, used once to learn the tensor shapes (default: the first
            conv's ``in_channels`` at 64x64).

    Returns:
        An :class:`AdjoinedModel` on the model's device and dtype, in the model's train/eval mode. Its
        parameters are copies of the model's; the two branches share them.

    Raises:
        ValueError: no ``start``, no ``layer2`` and no timm ``feature_info`` (the message lists candidate
            paths); an unknown module path; a model torch.fx cannot trace (naming the module); a grouped conv
            whose small input holds less than a whole group (naming the ``small_widths=`` remedy); a bad
            ``small_widths`` entry; or any op that would break the channel-prefix rule (a channel shuffle, a
            view/reshape mixing channels with space, a channel split the layout cannot follow, an
            ``nn.Linear`` acting inside a 4-D activation, LayerNorm over channels, an op without a rule):
            the message names the fx node and its module path.
    """
    if isinstance(alpha, bool) or not isinstance(alpha, int) or alpha < 1:
        raise ValueError(f"alpha must be a positive int, got {alpha!r}")
    model = copy.deepcopy(model)
    modes = {id(m): m.training for m in model.modules()}
    start = resolve_start(model, start)
    gm = trace(model)
    propagate_shapes(gm, input_shape or (first_conv_channels(gm), DEFAULT_HW, DEFAULT_HW))
    _no_inplace_modules(gm)
    branch = branch_nodes(gm, start)
    ctx = Context(gm, branch, logits_layers(gm), alpha, small_widths, backend)
    graph = ctx.run()
    for path, module in ctx.replaced.items():
        _set_submodule(gm, path, module)
    net = fx.GraphModule(gm, graph, type(model).__name__ + "Adjoined")
    for m in net.modules():  # every layer keeps its own mode; new containers take the model's
        m.training = modes.get(id(m), model.training)
    for m in net.modules():
        if isinstance(m, AdjoinedBatchNorm2d):
            m.small.training = m.full.training
    shared = sorted({str(n.target) for n in gm.graph.nodes if n.op == "call_module" and n not in branch})
    return AdjoinedModel(net, alpha, start, backend, ctx.widths, shared)


def _no_inplace_modules(gm: fx.GraphModule) -> None:
    """Activations run out of place: one branch must not overwrite a tensor the other still reads."""
    for m in gm.modules():
        if getattr(m, "inplace", False) is True:
            m.inplace = False


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)
