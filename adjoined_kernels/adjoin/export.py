"""Export one branch of an :class:`AdjoinedModel` as a plain ``torch.fx.GraphModule`` of standard torch
layers with physically sliced weights (docs/adjoin.md, "Export")."""
from __future__ import annotations

import copy
import operator

import torch
import torch.fx as fx
import torch.nn as nn

from .model import AdjoinedModel
from .modules import PAIR_TYPES, to_plain


def export_branch(model: AdjoinedModel, small: bool, fold_bn: bool = False) -> fx.GraphModule:
    """The small (``small=True``) or full network of ``model`` as a new GraphModule.

    Every two-branch layer becomes a plain ``nn.Conv2d`` / ``nn.BatchNorm2d`` / ``nn.Linear`` at the
    original module path, holding a copy of that branch's (sliced or gathered) weights; shared layers are
    copied; the other branch is dropped. Input ``[N, C, H, W]`` -> the branch's output, equal to it in
    ``eval()`` up to fp32 rounding. No weight is shared with ``model``.

    Args:
        fold_bn: fold each BatchNorm that directly follows a conv into it (eval-only inference network).

    Raises:
        TypeError: ``model`` is not an AdjoinedModel.
    """
    if not isinstance(model, AdjoinedModel):
        raise TypeError(f"model must be an AdjoinedModel (from ak.adjoin), got {type(model).__name__}")
    src = model.net
    graph, env, modules = fx.Graph(), {}, {}
    live = _live_nodes(src, 1 if small else 0)
    for node in src.graph.nodes:
        if node not in live:
            continue
        if node.op == "output":
            graph.output(fx.node.map_arg(node.args[0][1 if small else 0], lambda n: env[n]))
        elif _pair_output(src, node) is not None:
            pair = node.args[0]
            modules[pair.target] = to_plain(src.get_submodule(pair.target), small)
            env[node] = graph.create_node("call_module", pair.target, (env[pair.args[node.args[1]]],), {},
                                          name=node.name)
        else:
            env[node] = graph.node_copy(node, lambda n: env[n])
            if node.op == "call_module":
                modules[node.target] = copy.deepcopy(src.get_submodule(node.target))
            elif node.op == "get_attr":
                modules[node.target] = _copy_attr(src, node.target)
    net = fx.GraphModule(modules, graph, src.__class__.__name__.replace("Adjoined", "") +
                         ("Small" if small else "Full"))
    net.train(model.training)
    return fold_batchnorm_fx(net) if fold_bn else net


def _pair_output(gm: fx.GraphModule, node: fx.Node):
    """For ``getitem(pair, i)`` where ``pair`` calls a two-branch layer: ``i``; else None."""
    if node.op == "call_function" and node.target is operator.getitem:
        src = node.args[0]
        if isinstance(src, fx.Node) and src.op == "call_module" and \
                isinstance(gm.get_submodule(src.target), PAIR_TYPES):
            return node.args[1]
    return None


def _live_nodes(gm: fx.GraphModule, branch: int) -> set:
    """Nodes the chosen branch's output needs; a two-branch layer's output i needs only its input i."""
    out = next(n for n in gm.graph.nodes if n.op == "output")
    live, todo = {out}, []
    fx.node.map_arg(out.args[0][branch], todo.append)
    while todo:
        n = todo.pop()
        if n in live:
            continue
        live.add(n)
        i = _pair_output(gm, n)
        todo += [n.args[0].args[i]] if i is not None else list(n.all_input_nodes)
    return live


def _copy_attr(gm: fx.GraphModule, target: str):
    v = gm
    for part in target.split("."):
        v = getattr(v, part)
    if isinstance(v, nn.Parameter):
        return nn.Parameter(v.detach().clone(), v.requires_grad)
    return v.detach().clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v)


def fold_batchnorm_fx(net: fx.GraphModule) -> fx.GraphModule:
    """``net`` in eval mode with each conv -> BatchNorm pair (the conv's output read by the BN only) folded
    into one conv (torch.fx.experimental.optimization.fuse, exact up to fp32 rounding)."""
    from torch.fx.experimental.optimization import fuse
    net.eval()
    return fuse(net, inplace=True)
