"""Per-segment prefixes: where a conv's output is later split into channel pieces (``torch.split``,
``chunk``, ``x[:, a:b]``: Res2Net, CSPNet, MixNet, ReXNet, DPN), the small branch keeps a prefix of each
piece instead of a prefix of the whole, so that every piece holds channels in the small branch. It is the
mirror of the concatenation rule (docs/adjoin.md, "Channel splits").

:func:`split_bounds` finds, before the conversion, the channel offsets at which each conv's output is cut,
walking back from every channel split through the ops that keep channels in place.
"""
from __future__ import annotations

import operator

import torch
import torch.fx as fx
import torch.nn as nn

_SPLITS = {torch.split, torch.chunk, "split", "chunk", "tensor_split"}
_CATS = {torch.cat, torch.concat, torch.concatenate}


def _shape(n):
    m = n.meta.get("tensor_meta") if isinstance(n, fx.Node) else None
    return tuple(m.shape) if m is not None and hasattr(m, "shape") else None


def _cuts(node: fx.Node) -> tuple[fx.Node, set[int]] | None:
    """``(tensor, channel offsets)`` when ``node`` cuts ``tensor`` along its channel dim, else None."""
    if node.op in ("call_function", "call_method") and node.target in _SPLITS:
        x, pieces = node.args[0], node.meta.get("tensor_meta")
        dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
        sh = _shape(x)
        if sh is None or not isinstance(pieces, (tuple, list)) or not isinstance(dim, int) or dim % len(sh) != 1:
            return None
        cuts, lo = set(), 0
        for p in pieces:
            lo += p.shape[1]
            cuts.add(lo)
        return x, cuts
    if node.op == "call_function" and node.target is operator.getitem and _shape(node.args[0]) is not None:
        idx = node.args[1]
        entries = list(idx) if isinstance(idx, tuple) else [idx]
        if len(entries) >= 2 and isinstance(entries[1], slice) and entries[0] == slice(None) and \
                not any(isinstance(v, fx.Node) for v in (entries[1].start, entries[1].stop, entries[1].step)):
            lo, hi, _ = entries[1].indices(_shape(node.args[0])[1])
            return node.args[0], {lo, hi}
    return None


def _piece(node: fx.Node) -> tuple[fx.Node, int, int] | None:
    """``(source tensor, lo, hi)`` when ``node`` is channels ``[lo, hi)`` of a wider tensor: a channel slice,
    or one piece of a channel split."""
    if node.op != "call_function" or node.target is not operator.getitem:
        return None
    src = node.args[0]
    found = _cuts(node)
    if found is not None:
        lo, hi = sorted(found[1])[0], sorted(found[1])[-1]
        return src, lo, hi
    if isinstance(src, fx.Node) and isinstance(node.args[1], int):
        found = _cuts(src)
        if found is not None:
            edges = [0] + sorted(found[1])
            i = node.args[1] % (len(edges) - 1)
            return found[0], edges[i], edges[i + 1]
    return None


def _needs_cuts(node: fx.Node, alpha: int) -> bool:
    """A split or slice needs per-segment prefixes when one of its pieces starts past the plain prefix of
    ``channels / alpha`` and would hold no channel; other splits keep the plain prefix layout."""
    x, cuts = _cuts(node)
    starts = {min(cuts)} if node.target is operator.getitem else {0} | cuts
    return any(_shape(x)[1] // alpha <= c < _shape(x)[1] for c in starts)


def split_bounds(gm: fx.GraphModule, branch: set, alpha: int) -> dict[fx.Node, list[int]]:
    """``{conv node: sorted inner channel offsets}`` of the branch's ``groups == 1`` convs whose output is cut
    at those offsets (possibly after BN, activations, adds and concatenations).

    Cuts go back from every channel split that needs them (:func:`_needs_cuts`) to the convs that produce its
    input. Operands of an elementwise op (a residual add) must hold the same channels, so the cuts that reach
    one operand from upstream (a concatenation's piece boundaries, a cut conv) are sent back into the others
    too, until nothing changes.
    """
    out: dict[fx.Node, set[int]] = {}
    seen: set = set()
    todo = [_cuts(node) for node in gm.graph.nodes
            if node in branch and _cuts(node) is not None and _needs_cuts(node, alpha)]
    while True:
        while todo:
            node, cuts = todo.pop()
            sh = _shape(node)
            if node not in branch or sh is None or len(sh) < 2:
                continue
            cuts = frozenset(c for c in cuts if 0 < c < sh[1])
            if not cuts or (node, cuts) in seen:
                continue
            seen.add((node, cuts))
            todo += _walk_back(gm, node, cuts, sh[1], out)
        fwd = _forward_cuts(gm, branch, out)
        for node in branch:
            ops = _same_width_operands(node)
            if len(ops) >= 2:
                width = _shape(node)[1]
                union = frozenset(c for a in ops for c in fwd.get(a, ()) if 0 < c < width)
                todo += [(a, union) for a in ops
                         if a in branch and (a, union) not in seen and union - fwd.get(a, set())]
        if not todo:
            break
    return {n: sorted(c) for n, c in out.items()}


def _same_width_operands(node: fx.Node) -> list:
    sh = _shape(node)
    if node.op not in ("call_function", "call_method", "call_module") or node.target in _CATS or sh is None \
            or len(sh) < 2:
        return []
    return [a for a in node.all_input_nodes if _shape(a) is not None and len(_shape(a)) == len(sh)
            and _shape(a)[1] == sh[1]]


def _forward_cuts(gm: fx.GraphModule, branch: set, out: dict) -> dict:
    """The channel offsets at which each branch node's small layout has a segment boundary, as far as the
    recorded conv cuts and concatenations make them (graph order)."""
    fwd: dict = {}
    for node in gm.graph.nodes:
        if node not in branch or _shape(node) is None:
            continue
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), (nn.Conv2d, nn.Linear)):
            mod = gm.get_submodule(node.target)
            if isinstance(mod, nn.Conv2d) and mod.groups > 1:
                per_out, per_in = mod.out_channels // mod.groups, mod.in_channels // mod.groups
                fwd[node] = {c // per_in * per_out for c in fwd.get(node.args[0], set()) if c % per_in == 0}
            else:
                fwd[node] = set(out.get(node, ()))
        elif node.op == "call_function" and node.target in _CATS:
            cuts, lo = set(), 0
            for t in node.args[0]:
                cuts |= {lo + c for c in fwd.get(t, set())} | {lo}
                lo += _shape(t)[1]
            fwd[node] = cuts
        elif _piece(node) is not None:
            src, lo, hi = _piece(node)
            fwd[node] = {c - lo for c in fwd.get(src, set()) if lo < c < hi}
        else:
            fwd[node] = set().union(*(fwd.get(a, set()) for a in _same_width_operands(node)))
    return fwd


def _walk_back(gm: fx.GraphModule, node: fx.Node, cuts, channels: int, out: dict) -> list:
    """Where the cuts of ``node``'s output go next: recorded on a conv, split over a concatenation's
    pieces, passed through grouped convs at group boundaries and through ops that keep channels in place."""
    if node.op == "call_module":
        mod = gm.get_submodule(node.target)
        if isinstance(mod, nn.Conv2d):
            if mod.groups == 1:
                out.setdefault(node, set()).update(cuts)
                return []
            per_out, per_in = mod.out_channels // mod.groups, mod.in_channels // mod.groups
            if all(c % per_out == 0 for c in cuts):
                return [(node.args[0], {c // per_out * per_in for c in cuts})]
            return []
        if isinstance(mod, nn.Linear):
            return []
    piece = _piece(node)
    if piece is not None:  # a piece of a split or a channel slice [lo, hi) of a wider tensor
        src, lo, hi = piece
        return [(src, {lo + c for c in cuts} | {lo, hi})]
    if node.op == "call_function" and node.target in _CATS:
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        if dim % len(_shape(node)) != 1:
            return []
        nxt, lo = [], 0
        for t in node.args[0]:
            w = _shape(t)[1]
            nxt.append((t, {c - lo for c in cuts if lo < c < lo + w}))
            lo += w
        return nxt
    return [(a, cuts) for a in node.all_input_nodes
            if (_shape(a) or ())[1:2] == (channels,) and len(_shape(a)) >= 2]
