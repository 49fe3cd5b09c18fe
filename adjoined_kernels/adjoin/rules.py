"""Per-op rules of ``ak.adjoin``: how each traced op carries the small branch's channel layout.

Ops whose inputs all hold every channel in the small branch run unchanged on both branches. Otherwise an
op needs a rule here; an op without one, or one that mixes channels (a channel shuffle, a reshape that
merges channels with space, a reduction over channels, a functional normalisation over them), raises
ValueError naming the fx node, its module path and type. Norm modules kept whole (:mod:`.leaves`) get one
copy per branch instead. docs/adjoin.md lists the rules.
"""
from __future__ import annotations

import functools
import math
import operator

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from . import leaves
from .builder import VARIES, Context, convert_conv, convert_linear, convert_norm
from .layout import Layout, concat, reshape_tail, take_channels

POINTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid, nn.Tanh,
    nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.Identity, nn.Dropout, nn.Dropout2d,
    nn.AlphaDropout, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Upsample,
    nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d,
)
POINTWISE_FUNCTIONS = {
    F.relu, F.relu6, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish, F.hardswish, F.hardsigmoid, F.hardtanh,
    F.leaky_relu, F.softplus, F.sigmoid, F.tanh, torch.relu, torch.sigmoid, torch.tanh, torch.exp, torch.abs,
    torch.neg, torch.clamp, torch.clip, torch.sqrt, torch.rsqrt, operator.neg, F.dropout, F.dropout2d,
    F.alpha_dropout, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.interpolate,
}
POINTWISE_METHODS = {
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "clamp", "clamp_", "clamp_min", "contiguous",
    "clone", "float", "half", "bfloat16", "to", "type_as", "detach", "abs", "exp", "neg", "sqrt",
}
ELEMENTWISE_FUNCTIONS = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv, operator.iadd, operator.isub,
    operator.imul, operator.itruediv, torch.add, torch.sub, torch.mul, torch.div, torch.maximum, torch.minimum,
}
ELEMENTWISE_METHODS = {"add", "sub", "mul", "div", "add_", "sub_", "mul_", "div_", "maximum", "minimum"}


@functools.cache
def _extra_functions() -> dict:
    """Rules for functions of optional packages: torchvision's functional stochastic depth (pointwise)."""
    try:
        from torchvision.ops import stochastic_depth
    except ImportError:
        return {}
    return {stochastic_depth: _pointwise}


def _arg(node: fx.Node, i: int, name: str, default=None):
    return node.args[i] if len(node.args) > i else node.kwargs.get(name, default)


def _plain_forward(mod: nn.Module, base: type) -> bool:
    return isinstance(mod, base) and type(mod).forward is base.forward


def convert(ctx: Context, node: fx.Node) -> None:
    """Emit ``node`` on both branches of ``ctx.graph`` and record its small layout."""
    if node.op == "call_module":
        return _module(ctx, node, ctx.gm.get_submodule(node.target))
    if _shortcut(ctx, node):
        return None
    key = node.target
    rule = (_FUNCTION_RULES.get(key) or _extra_functions().get(key) if node.op == "call_function"
            else _METHOD_RULES.get(key))
    if rule is None:
        name = key if isinstance(key, str) else getattr(key, "__name__", str(key))
        ctx.fail(node, f"'{name}' has no adjoining rule and its input does not hold every channel in the small "
                       f"branch")
    return rule(ctx, node)


def _module(ctx: Context, node: fx.Node, mod: nn.Module) -> None:
    if _plain_forward(mod, nn.Conv2d) or isinstance(mod, leaves.same_pad_convs()):
        return convert_conv(ctx, node, mod)
    if isinstance(mod, leaves.norm_leaves()):
        return convert_norm(ctx, node, mod)
    if _plain_forward(mod, nn.Linear):
        return convert_linear(ctx, node, mod)
    if _shortcut(ctx, node):
        return None
    if isinstance(mod, POINTWISE_MODULES + leaves.pointwise_leaves()):
        return _pointwise(ctx, node)
    if isinstance(mod, nn.PReLU) and mod.num_parameters == 1:
        return _pointwise(ctx, node)
    if isinstance(mod, nn.Flatten):
        return _flatten(ctx, node, mod.start_dim, mod.end_dim)
    if isinstance(mod, (nn.Softmax, nn.LogSoftmax)):
        return _over_dims(ctx, node, mod.dim, "normalises over")
    if isinstance(mod, nn.LayerNorm):
        if len(mod.normalized_shape) >= len(ctx.shape(node.args[0])) - 1:
            ctx.fail(node, "LayerNorm over the channel dim: its statistics would mix the channels the small "
                           "branch drops")
        return _pointwise(ctx, node)
    if isinstance(mod, nn.ChannelShuffle):
        ctx.fail(node, "a channel shuffle interleaves channel groups, so no channel prefix survives it")
    if isinstance(mod, (nn.PixelShuffle, nn.PixelUnshuffle)):
        ctx.fail(node, f"{type(mod).__name__} mixes channels with space")
    if leaves.is_leaf(mod):
        ctx.fail(node, f"module type {type(mod).__name__} is kept whole (timm marks it not traceable) and has "
                       f"no adjoining rule")
    ctx.fail(node, f"module type {type(mod).__name__} has no adjoining rule")


def _shortcut(ctx: Context, node: fx.Node) -> bool:
    """Both branches hold every channel of every input: run the op unchanged on each."""
    if all(ctx.all_complete(ctx.layout(a)) for a in node.all_input_nodes):
        ctx.emit_both(node, ctx._complete(ctx.meta(node)))
        return True
    return False


def _assertion(ctx: Context, node: fx.Node) -> None:
    """``torch._assert`` (timm's ``_assert(x.ndim == 4)``): a check of the original model's input, kept on
    the full branch only; it computes nothing either branch reads."""
    ctx.full[node] = ctx.small[node] = ctx.emit(node, ctx.fu, node.name)
    ctx.lay[node] = None


def _non_tensor(ctx: Context, node: fx.Node) -> None:
    """Sizes and other Python values: computed per branch; marked as differing."""
    ctx.emit_both(node, VARIES)


def _pointwise(ctx: Context, node: fx.Node) -> None:
    tensors = [a for a in node.all_input_nodes if ctx.is_tensor(a)]
    if len(tensors) > 1:
        return _elementwise(ctx, node)
    if not tensors or not ctx.is_tensor(node):
        return _non_tensor(ctx, node)
    return ctx.emit_both(node, ctx.layout(tensors[0]))


def _unify(ctx: Context, node: fx.Node, operands: list, out_channels: int):
    """Pick the operand layout that every other operand holds (a narrower channel prefix, as the adjoined
    ResNets slice a full-width identity to the compact one) and the gathers that bring the others to it.
    ``operands``: ``[(node, dim aligned with the output's channel dim)]``."""
    lays = []
    for a, dim in operands:
        lay = ctx.layout(a) if dim == 1 else Layout.prefix(ctx.shape(a)[dim])
        if dim != 1 and a in ctx.lay and not ctx.all_complete(ctx.lay[a]):
            ctx.fail(node, f"operand {a.name} of a lower rank carries a channel layout on another dim")
        if not isinstance(lay, Layout) or lay.full != out_channels:
            ctx.fail(node, f"operand {a.name} has no channel layout over {out_channels} channels")
        lays.append(lay)
    for target in sorted(lays, key=lambda x: x.small):
        runs = [lay.runs_of(target) for lay in lays]
        if all(r is not None for r in runs):
            break
    else:
        ctx.fail(node, "its operands hold different channels in the small branch ("
                       + "; ".join(str(x) for x in lays) + ")")
    repl = {a: ctx.take(ctx.small[a], dim, r, lay.small)
            for (a, dim), lay, r in zip(operands, lays, runs) if lay != target}
    return target, repl


def _elementwise(ctx: Context, node: fx.Node) -> None:
    """Broadcasting ops (add, mul, ...): operands of full channel size meet on a common layout; an
    operand broadcast over channels (size 1, e.g. a spatial gate) or of lower rank stays as is."""
    out = ctx.shape(node)
    if out is None:
        return _non_tensor(ctx, node)
    if len(out) < 2:
        return ctx.emit_both(node, None)
    operands = []
    for a in node.all_input_nodes:
        sh = ctx.shape(a)
        dim = None if sh is None else 1 - (len(out) - len(sh))
        if dim is not None and dim >= 0 and not (sh[dim] == 1 and out[1] != 1):
            operands.append((a, dim))
    if not operands:
        return ctx.emit_both(node, Layout.prefix(out[1]))
    target, repl = _unify(ctx, node, operands, out[1])
    sm = (lambda a: fx.node.map_arg(a, lambda n: repl.get(n, ctx.small[n])))
    ctx.emit_both(node, target, small_args=sm(node.args), small_kwargs=sm(node.kwargs))


def _cat(ctx: Context, node: fx.Node) -> None:
    tensors = list(_arg(node, 0, "tensors"))
    dim = _arg(node, 1, "dim", 0) % len(ctx.shape(node))
    if dim == 1:
        lays = [ctx.layout(t) for t in tensors]
        if not all(isinstance(x, Layout) for x in lays):
            ctx.fail(node, "a concatenated tensor has no channel layout")
        return ctx.emit_both(node, concat(lays))
    target, repl = _unify(ctx, node, [(t, 1) for t in tensors], ctx.shape(node)[1])
    small = [repl.get(t, ctx.small[t]) for t in tensors]
    args = (small,) + tuple(ctx.sm(node.args[1:]))
    ctx.emit_both(node, target, small_args=args, small_kwargs=ctx.sm(node.kwargs))


def _split(ctx: Context, node: fx.Node) -> None:
    """split/chunk: along the channel dim each piece keeps the channels of its range the small branch holds."""
    x = node.args[0]
    dim = _arg(node, 2, "dim", 0) % len(ctx.shape(x))
    pieces = ctx.meta(node)
    lay = ctx.layout(x)
    if dim != 1:
        return ctx.emit_both(node, tuple(lay for _ in pieces))
    bounds, lays, lo = [], [], 0
    for m in pieces:
        hi = lo + m.shape[1]
        a, b, sub = lay.select(lo, hi)
        if a == b:
            ctx.fail(node, f"a channel split whose piece [{lo}, {hi}) holds no channel of the small branch, "
                           f"which holds {lay}")
        bounds.append((a, b))
        lays.append(sub)
        lo = hi
    ctx.full[node] = ctx.emit(node, ctx.fu, node.name)
    ctx.small[node] = ctx.graph.call_function(take_channels, (ctx.small[x], bounds))
    ctx.lay[node] = tuple(lays)


def _getitem(ctx: Context, node: fx.Node) -> None:
    src, idx = node.args[0], node.args[1]
    if not ctx.is_tensor(src):
        lay = ctx.layout(src)
        if isinstance(lay, tuple) and isinstance(idx, (int, slice)):
            return ctx.emit_both(node, lay[idx])
        return _non_tensor(ctx, node)
    shape, lay = ctx.shape(src), ctx.layout(src)
    entries = list(idx) if isinstance(idx, tuple) else [idx]
    if any(e is Ellipsis for e in entries):
        i = entries.index(Ellipsis)
        entries[i:i + 1] = [slice(None)] * (len(shape) - len(entries) + 1)
    if not all(isinstance(e, slice) for e in entries) or \
            any(isinstance(v, fx.Node) for e in entries for v in (e.start, e.stop, e.step)):
        ctx.fail(node, f"indexing {idx!r} that the channel layout cannot follow (only slices are supported)")
    if len(entries) < 2 or entries[1] == slice(None):
        return ctx.emit_both(node, lay)
    lo, hi, step = entries[1].indices(shape[1])
    if step != 1:
        ctx.fail(node, "a strided slice of the channel dim")
    a, b, sub = lay.select(lo, hi)
    if a == b:
        ctx.fail(node, f"slices channels [{lo}, {hi}), none of which the small branch holds ({lay})")
    small_idx = tuple(entries[:1]) + (slice(a, b),) + tuple(entries[2:])
    ctx.emit_both(node, sub, small_args=(ctx.small[src], small_idx))


def _flatten(ctx: Context, node: fx.Node, start: int, end: int) -> None:
    x = node.args[0]
    shape = ctx.shape(x)
    start, end = start % len(shape), end % len(shape)
    lay = ctx.layout(x)
    if start >= 2 or end < 1:
        return ctx.emit_both(node, lay)
    if start == 1:
        return ctx.emit_both(node, lay.scale(math.prod(shape[2:end + 1])))
    ctx.fail(node, "a flatten that merges the batch dim with the channel dim")


def _flatten_fn(ctx: Context, node: fx.Node) -> None:
    return _flatten(ctx, node, _arg(node, 1, "start_dim", 0), _arg(node, 2, "end_dim", -1))


def _reshape(ctx: Context, node: fx.Node) -> None:
    """view/reshape: a no-op, ``flatten(1)`` (``[N, C*H*W]``), or one that keeps dims 0 and 1 and reshapes
    the others (``[N, C, H*W]``, ``[N, C] -> [N, C, 1, 1]``)."""
    x = node.args[0]
    sin, sout, lay = ctx.shape(x), ctx.shape(node), ctx.layout(x)
    if sout == sin:
        ctx.full[node] = ctx.emit(node, ctx.fu, node.name)
        ctx.small[node], ctx.lay[node] = ctx.small[x], lay
        return None
    if sout[0] == sin[0] and len(sout) == 2:
        small = ctx.graph.call_function(torch.flatten, (ctx.small[x], 1))
        ctx.full[node], ctx.small[node] = ctx.emit(node, ctx.fu, node.name), small
        ctx.lay[node] = lay.scale(math.prod(sin[2:]))
        return None
    if sout[:2] == sin[:2]:
        small = ctx.graph.call_function(reshape_tail, (ctx.small[x], tuple(sout[2:])))
        ctx.full[node], ctx.small[node], ctx.lay[node] = ctx.emit(node, ctx.fu, node.name), small, lay
        return None
    if len(sout) > len(sin) and sout[0] == sin[0] and sout[1] == 1 and sout[2] == sin[1]:
        ctx.fail(node, f"a view {sin} -> {sout} moves the channel dim to dim 2, where an op across channels (a "
                       f"1-D conv over them, as in ECA) would mix the channels the small branch drops")
    if len(sout) > len(sin) and sout[0] == sin[0] and sout[1] * sout[2] == sin[1]:
        ctx.fail(node, f"a view {sin} -> {sout} splits the channel dim into groups, as a channel shuffle does; "
                       f"interleaving channel groups keeps no channel prefix")
    ctx.fail(node, f"a view/reshape {sin} -> {sout} that mixes the channel dim with others")


def _permute(ctx: Context, node: fx.Node) -> None:
    x = node.args[0]
    n = len(ctx.shape(x))
    perm = list(range(n))
    if node.target in ("permute", torch.permute):
        dims = node.args[1:] if node.op == "call_method" else (_arg(node, 1, "dims"),)
        perm = [d % n for d in (dims[0] if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else dims)]
    else:
        d0, d1 = _arg(node, 1, "dim0") % n, _arg(node, 2, "dim1") % n
        perm[d0], perm[d1] = perm[d1], perm[d0]
    if perm[:2] != [0, 1]:
        shuffle = " (the transpose of a channel shuffle)" if n == 5 and perm[1:3] == [2, 1] else ""
        ctx.fail(node, f"a transpose/permute {perm} that moves the channel dim{shuffle}")
    ctx.emit_both(node, ctx.layout(x))


def _reduce(ctx: Context, node: fx.Node) -> None:
    x = node.args[0]
    n = len(ctx.shape(x))
    dim, keepdim = _arg(node, 1, "dim"), _arg(node, 2, "keepdim", False)
    if dim is None:
        ctx.fail(node, "a reduction over every dim, the channel dim included")
    dims = {d % n for d in (dim if isinstance(dim, (tuple, list)) else [dim])}
    if 1 in dims or (0 in dims and not keepdim):
        ctx.fail(node, f"a reduction over dims {sorted(dims)}, which moves or mixes the channel dim")
    ctx.emit_both(node, ctx.layout(x))


def _over_dims(ctx: Context, node: fx.Node, dim, what: str) -> None:
    n = len(ctx.shape(node.args[0]))
    if dim is None or dim % n == 1:
        ctx.fail(node, f"it {what} the channel dim")
    ctx.emit_both(node, ctx.layout(node.args[0]))


def _softmax(ctx: Context, node: fx.Node) -> None:
    return _over_dims(ctx, node, _arg(node, 1, "dim"), "normalises over")


def _pad(ctx: Context, node: fx.Node) -> None:
    if len(_arg(node, 1, "pad")) // 2 > len(ctx.shape(node.args[0])) - 2:
        ctx.fail(node, "a pad of the channel dim")
    return _pointwise(ctx, node)


_FUNCTION_RULES = {
    **{f: _pointwise for f in POINTWISE_FUNCTIONS}, **{f: _elementwise for f in ELEMENTWISE_FUNCTIONS},
    torch.cat: _cat, torch.concat: _cat, torch.concatenate: _cat, torch.split: _split, torch.chunk: _split,
    operator.getitem: _getitem, torch.flatten: _flatten_fn, torch.reshape: _reshape,
    torch.transpose: _permute, torch.swapaxes: _permute, torch.permute: _permute,
    torch.mean: _reduce, torch.sum: _reduce, torch.amax: _reduce, torch.amin: _reduce,
    F.softmax: _softmax, F.log_softmax: _softmax, torch.softmax: _softmax, torch.log_softmax: _softmax,
    getattr: _non_tensor, F.pad: _pad, torch._assert: _assertion, leaves.pool_at_least: _pointwise,
    **{f: _non_tensor for f in (operator.eq, operator.ne, operator.lt, operator.le, operator.gt, operator.ge,
                                operator.not_, operator.and_, operator.or_, operator.truth)},
}
_METHOD_RULES = {
    **{m: _pointwise for m in POINTWISE_METHODS}, **{m: _elementwise for m in ELEMENTWISE_METHODS},
    "split": _split, "chunk": _split, "flatten": _flatten_fn, "view": _reshape, "reshape": _reshape,
    "transpose": _permute, "swapaxes": _permute, "permute": _permute, "mean": _reduce, "sum": _reduce,
    "amax": _reduce, "amin": _reduce, "softmax": _softmax, "log_softmax": _softmax, "size": _non_tensor,
    "dim": _non_tensor,
}
