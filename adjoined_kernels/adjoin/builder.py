"""Builds the two-branch fx graph of ``ak.adjoin``: the shared part once, every later node per branch,
with the small branch's channel layout propagated node by node (see docs/adjoin.md)."""
from __future__ import annotations

import inspect
import operator

import torch.fx as fx
import torch.nn as nn

from .layout import Layout, gather
from .modules import AdjoinedLinear, adjoined_batchnorm, adjoined_conv
from .tracing import node_path

VARIES = "varies"  # a non-tensor value (a size) that differs between the branches

_INPLACE_OPS = {operator.iadd: operator.add, operator.isub: operator.sub, operator.imul: operator.mul,
                operator.itruediv: operator.truediv}
_INPLACE_METHODS = {"relu_", "sigmoid_", "tanh_", "clamp_", "add_", "sub_", "mul_", "div_"}


def _out_of_place(op: str, target, args: tuple, kwargs: dict):
    """The same call without in-place writes: a branch must never overwrite a tensor the other reads."""
    if op == "call_function":
        target = _INPLACE_OPS.get(target, target)
        if callable(target) and not isinstance(target, type):
            try:
                params = list(inspect.signature(target).parameters)
            except (TypeError, ValueError):
                params = []
            if "inplace" in params:
                i = params.index("inplace")
                if i < len(args):
                    args = args[:i] + (False,) + args[i + 1:]
                elif "inplace" in kwargs:
                    kwargs = {**kwargs, "inplace": False}
    elif op == "call_method" and target in _INPLACE_METHODS:
        target = target[:-1]
    return target, args, kwargs


class Context:
    """State of one conversion: the traced module ``gm`` (with ``tensor_meta`` on every node), the set of
    ``branch`` nodes, the ``logits`` layers, and the new graph being written."""

    def __init__(self, gm: fx.GraphModule, branch: set, logits: set, alpha: int, small_widths: dict | None,
                 backend: str):
        self.gm, self.branch, self.logits = gm, branch, logits
        self.alpha, self.small_widths, self.backend = alpha, dict(small_widths or {}), backend
        self.graph = fx.Graph()
        self.full: dict = {}
        self.small: dict = {}
        self.lay: dict = {}
        self.replaced: dict[str, nn.Module] = {}
        self._keys: dict[str, tuple] = {}
        self.widths: dict[str, tuple[int, int]] = {}

    # ---- what a node holds ----------------------------------------------------------------------------
    def meta(self, a):
        return a.meta.get("tensor_meta") if isinstance(a, fx.Node) else None

    def shape(self, a) -> tuple | None:
        m = self.meta(a)
        return tuple(m.shape) if m is not None and hasattr(m, "shape") else None

    def is_tensor(self, a) -> bool:
        return self.shape(a) is not None

    def layout(self, a):
        """Layout of the small value of ``a``: a Layout (tensors of rank >= 2), a tuple of them, VARIES or
        None. Shared values hold everything."""
        if isinstance(a, fx.Node) and a in self.lay:
            return self.lay[a]
        return self._complete(self.meta(a))

    def _complete(self, m):
        if m is None:
            return None
        if hasattr(m, "shape"):  # a TensorMetadata (itself a NamedTuple)
            return Layout.prefix(m.shape[1]) if len(m.shape) >= 2 else None
        if isinstance(m, (tuple, list)):
            return tuple(self._complete(x) for x in m)
        return None

    def all_complete(self, lay) -> bool:
        if lay is VARIES:
            return False
        if isinstance(lay, tuple):
            return all(self.all_complete(x) for x in lay)
        return lay is None or lay.complete

    # ---- errors ---------------------------------------------------------------------------------------
    def fail(self, node: fx.Node, why: str):
        target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", node.target)
        raise ValueError(f"ak.adjoin cannot adjoin fx node '{node.name}' ({node.op} {target}) in module "
                         f"'{node_path(node) or '<top level>'}': {why}. The channel-prefix rule of the small "
                         f"network would be wrong here; see docs/adjoin.md for what is supported.")

    # ---- emission -------------------------------------------------------------------------------------
    def sm(self, a):
        return fx.node.map_arg(a, lambda n: self.small[n])

    def fu(self, a):
        return fx.node.map_arg(a, lambda n: self.full[n])

    def emit(self, node: fx.Node, env_map, name: str, target=None, args=None, kwargs=None) -> fx.Node:
        """A copy of ``node`` in the new graph, arguments mapped by ``env_map`` (overridable), without
        in-place writes."""
        args = env_map(node.args) if args is None else args
        kwargs = env_map(node.kwargs) if kwargs is None else kwargs
        target, args, kwargs = _out_of_place(node.op, node.target if target is None else target, args, kwargs)
        return self.graph.create_node(node.op, target, tuple(args), dict(kwargs), name=name)

    def emit_both(self, node: fx.Node, lay, small_args=None, small_kwargs=None, small_target=None):
        """Run ``node`` on each branch (the small one with the given overrides); its small value has ``lay``."""
        self.full[node] = self.emit(node, self.fu, node.name)
        self.small[node] = self.emit(node, self.sm, node.name + "_small", small_target, small_args, small_kwargs)
        self.lay[node] = lay

    def take(self, small_node, dim: int, runs, total: int):
        """``small_node`` restricted to positions ``runs`` along ``dim`` (no op when that is everything)."""
        if runs == [(0, total)]:
            return small_node
        return self.graph.call_function(gather, (small_node, dim, [tuple(r) for r in runs]))

    def pair_call(self, node: fx.Node, module: nn.Module, x_full, x_small, lay: Layout):
        """Call two-branch ``module`` at the node's module path on ``(x_full, x_small)``."""
        path, key = str(node.target), (str(self.layout(node.args[0])), str(lay))
        if self._keys.setdefault(path, key) != key:
            self.fail(node, "this module is called twice with different small-branch inputs")
        self.replaced.setdefault(path, module)
        pair = self.graph.create_node("call_module", path, (x_full, x_small), {}, name=node.name + "_pair")
        self.full[node] = self.graph.call_function(operator.getitem, (pair, 0), name=node.name)
        self.small[node] = self.graph.call_function(operator.getitem, (pair, 1), name=node.name + "_small")
        self.lay[node] = lay

    # ---- small widths ---------------------------------------------------------------------------------
    def out_width(self, node: fx.Node, full: int) -> int:
        """Small output width of a conv/linear node: ``full`` for the logits layer, else :meth:`width`."""
        path = str(node.target)
        if node not in self.logits:
            return self.width(path, full)
        if path in self.small_widths:
            raise ValueError(f"small_widths names {path!r}, the logits layer, which keeps its {full} outputs")
        return full

    def width(self, path: str, full: int) -> int:
        """Small output width of the conv/linear at ``path``: the ``small_widths`` override, else
        ``max(1, full // alpha)``."""
        w = self.small_widths.get(path)
        if w is None:
            return max(1, full // self.alpha)
        if not isinstance(w, int) or not 1 <= w <= full:
            raise ValueError(f"small_widths[{path!r}] must be an int in [1, {full}], got {w!r}")
        return w

    # ---- the walk -------------------------------------------------------------------------------------
    def run(self) -> fx.Graph:
        from .rules import convert
        for node in self.gm.graph.nodes:
            if node.op == "output":
                self.graph.output((self.fu(node.args[0]), self.sm(node.args[0])))
            elif node in self.branch:
                convert(self, node)
            else:
                new = self.graph.node_copy(node, lambda n: self.full[n])
                self.full[node] = self.small[node] = new
        self._check_widths_used()
        for node in self.gm.graph.nodes:
            if node.op == "call_module" and node not in self.branch and node.target in self.replaced:
                self.fail(node, "this module runs both before the branches split and after; it cannot be "
                                "shared and adjoined at once")
        return self.graph

    def _check_widths_used(self):
        unknown = sorted(set(self.small_widths) - set(self.widths))
        if unknown:
            raise ValueError(f"small_widths names {unknown}, which are not adjoined convs or linears; "
                             f"they are: {sorted(self.widths)}")


def convert_conv(ctx: Context, node: fx.Node, conv: nn.Conv2d):
    """Conv2d -> FusedAdjoinedConv2d (groups == 1, prefix input) or SplitAdjoinedConv2d; output prefix."""
    x = node.args[0]
    lay, path = ctx.layout(x), str(node.target)
    if not isinstance(lay, Layout) or lay.full != conv.in_channels:
        ctx.fail(node, f"the conv's input has no channel layout matching in_channels={conv.in_channels}")
    if conv.groups == 1:
        out_s = ctx.out_width(node, conv.out_channels)
        module = adjoined_conv(conv, lay, out_s, 1, ctx.backend)
        ctx.pair_call(node, module, ctx.full[x], ctx.small[x], Layout.prefix(conv.out_channels, out_s))
    else:
        g_s = _small_groups(ctx, node, conv)
        need = g_s * (conv.in_channels // conv.groups)
        start, stop, sub = lay.select(0, need)
        if (start, stop) != (0, need) or not sub.complete:
            ctx.fail(node, f"a grouped conv (groups={conv.groups}) keeps its first {g_s} groups, which read "
                           f"channels [0, {need}); the small branch holds {lay}")
        xs = ctx.take(ctx.small[x], 1, [(0, need)], lay.small)
        out_s = g_s * (conv.out_channels // conv.groups)
        module = adjoined_conv(conv, Layout.prefix(conv.in_channels, need), out_s, g_s, ctx.backend)
        ctx.pair_call(node, module, ctx.full[x], xs, Layout.prefix(conv.out_channels, out_s))
    ctx.widths[path] = (conv.out_channels, out_s)


def _small_groups(ctx: Context, node: fx.Node, conv: nn.Conv2d) -> int:
    per_group = conv.out_channels // conv.groups
    if node in ctx.logits or str(node.target) in ctx.small_widths:
        w = ctx.out_width(node, conv.out_channels)
        if w % per_group:
            raise ValueError(f"small_widths[{str(node.target)!r}]={w} must be a multiple of out_channels/groups={per_group} "
                             f"(the small conv keeps whole groups)")
        return w // per_group
    if conv.groups % ctx.alpha:
        ctx.fail(node, f"groups={conv.groups} is not divisible by alpha={ctx.alpha}; the small conv keeps "
                       f"groups/alpha groups")
    return conv.groups // ctx.alpha


def convert_batchnorm(ctx: Context, node: fx.Node, bn: nn.Module):
    x = node.args[0]
    lay = ctx.layout(x)
    if not isinstance(lay, Layout) or lay.full != bn.num_features:
        ctx.fail(node, f"the batch-norm's input has no channel layout over num_features={bn.num_features}")
    ctx.pair_call(node, adjoined_batchnorm(bn, lay), ctx.full[x], ctx.small[x], lay)


def convert_linear(ctx: Context, node: fx.Node, linear: nn.Linear):
    x = node.args[0]
    lay, shape, path = ctx.layout(x), ctx.shape(x), str(node.target)
    if shape is None or len(shape) != 2:
        if ctx.all_complete(lay):
            ctx.emit_both(node, ctx.layout(node))
            return
        ctx.fail(node, f"an nn.Linear in the middle of the network, acting on the last dim of a "
                       f"{len(shape or ())}-D activation whose dim 1 holds {lay}; only a Linear on "
                       f"[N, features] (after flatten) can be adjoined")
    out_s = ctx.out_width(node, linear.out_features)
    ctx.pair_call(node, AdjoinedLinear(linear, lay, out_s), ctx.full[x], ctx.small[x],
                  Layout.prefix(linear.out_features, out_s))
    ctx.widths[path] = (linear.out_features, out_s)
