"""Builds the two-branch fx graph of ``ak.adjoin``: the shared part once, every later node per branch,
with the small branch's channel layout propagated node by node (see docs/adjoin.md)."""
from __future__ import annotations

import inspect
import operator

import torch.fx as fx
import torch.nn as nn

from .layout import Layout, gather
from .leaves import norm_channels
from .modules import AdjoinedLinear, adjoined_conv, adjoined_norm
from .segments import split_bounds
from .tracing import node_path, node_type

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
        self.bounds = split_bounds(gm, branch, alpha)

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
        path = node_path(node)
        kind = node_type(node)
        kind = f" ({kind})" if kind else ""
        raise ValueError(f"ak.adjoin cannot adjoin fx node '{node.name}' ({node.op} {target}) in module "
                         f"'{path or '<top level>'}'{kind}: {why}. The channel-prefix rule of the small "
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
    """Conv2d -> FusedAdjoinedConv2d (groups == 1, prefix input, prefix output) or SplitAdjoinedConv2d.

    The small output is a prefix, or a prefix of each segment where the output is later split
    (:mod:`.segments`); a grouped conv keeps whole groups (:func:`_grouped`)."""
    x = node.args[0]
    lay, path = ctx.layout(x), str(node.target)
    if not isinstance(lay, Layout) or lay.full != conv.in_channels:
        ctx.fail(node, f"the conv's input has no channel layout matching in_channels={conv.in_channels}")
    if conv.groups > 1:
        return _grouped(ctx, node, conv, lay)
    out_s = ctx.out_width(node, conv.out_channels)
    out_lay = _segment_layout(ctx.bounds.get(node), conv.out_channels, out_s) if node not in ctx.logits else None
    out_lay = out_lay or Layout.prefix(conv.out_channels, out_s)
    module = adjoined_conv(conv, lay, out_s, 1, ctx.backend, out_lay)
    ctx.pair_call(node, module, ctx.full[x], ctx.small[x], out_lay)
    ctx.widths[path] = (conv.out_channels, out_lay.small)


def _segment_layout(bounds, full: int, width: int) -> Layout | None:
    """A prefix of each segment ``[b_k, b_k+1)``, ``width / full`` of its length (at least one channel)."""
    if not bounds:
        return None
    edges = [0] + list(bounds) + [full]
    return Layout.make(full, [(lo, max(1, (hi - lo) * width // full)) for lo, hi in zip(edges, edges[1:])])


def _grouped(ctx: Context, node: fx.Node, conv: nn.Conv2d, lay: Layout):
    """A grouped or depthwise conv keeps whole groups. From a prefix: its first ``groups / alpha`` groups (or
    the nearest count the prefix holds in full). From another layout (a concatenation, per-segment
    prefixes): exactly the groups the small input holds in full; the output holds those groups' channels."""
    x, path = node.args[0], str(node.target)
    per_in, per_out = conv.in_channels // conv.groups, conv.out_channels // conv.groups
    if lay.is_prefix:
        g_s = _small_groups(ctx, node, conv, lay.small)
        held = list(range(g_s))
        xs = ctx.take(ctx.small[x], 1, [(0, g_s * per_in)], lay.small)
    else:
        chans = set(lay.indices())
        held = [g for g in range(conv.groups) if chans.issuperset(range(g * per_in, (g + 1) * per_in))]
        if sum(per_in for _ in held) != len(chans):
            ctx.fail(node, f"a grouped conv (groups={conv.groups}) whose small input holds part of a group: "
                           f"{lay}")
        xs = ctx.small[x]
    in_lay = Layout.make(conv.in_channels, [(g * per_in, per_in) for g in held])
    out_lay = Layout.make(conv.out_channels, [(g * per_out, per_out) for g in held])
    module = adjoined_conv(conv, in_lay, out_lay.small, len(held), ctx.backend, out_lay)
    ctx.pair_call(node, module, ctx.full[x], xs, out_lay)
    ctx.widths[path] = (conv.out_channels, out_lay.small)


def _small_groups(ctx: Context, node: fx.Node, conv: nn.Conv2d, held: int) -> int:
    """Groups the small conv keeps from a prefix input of ``held`` channels: ``small_widths`` (a multiple of
    ``out_channels / groups``), else ``groups / alpha`` rounded to the nearest whole group count, at most
    the groups the input holds in full."""
    per_group, path = conv.out_channels // conv.groups, str(node.target)
    per_in = conv.in_channels // conv.groups
    available = held // per_in
    if node in ctx.logits or path in ctx.small_widths:
        w = ctx.out_width(node, conv.out_channels)
        if w % per_group:
            raise ValueError(f"small_widths[{path!r}]={w} must be a multiple of out_channels/groups={per_group} "
                             f"(the small conv keeps whole groups)")
        g_s = w // per_group
    else:
        g_s = min(max(1, int(conv.groups / ctx.alpha + 0.5)), available)
    if not 1 <= g_s <= available:
        need = max(1, g_s) * per_in
        ctx.fail(node, f"a grouped conv (groups={conv.groups}) keeps whole groups of {per_in} input channels and "
                       f"needs {need}, but the small branch holds {held} of its {conv.in_channels} input "
                       f"channels; give the conv that produces its input at least {need} small channels with "
                       f"small_widths={{path: width}}, or use an alpha that divides groups={conv.groups}")
    return g_s


def convert_norm(ctx: Context, node: fx.Node, norm: nn.Module):
    """A norm leaf (BatchNorm, BatchNormAct2d, LayerNorm2d, GroupNorm, ...) -> one copy per branch."""
    x = node.args[0]
    lay, channels = ctx.layout(x), norm_channels(norm)
    if not isinstance(lay, Layout) or lay.full != channels:
        ctx.fail(node, f"the norm's input has no channel layout over its {channels} channels")
    groups = getattr(norm, "num_groups", 1)
    if lay.small % groups:
        ctx.fail(node, f"a GroupNorm with {groups} groups; the small branch holds {lay.small} channels, which "
                       f"do not split into {groups} groups")
    ctx.pair_call(node, adjoined_norm(norm, lay), ctx.full[x], ctx.small[x], lay)


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
