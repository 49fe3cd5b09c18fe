"""Tracing a model for ``ak.adjoin``: torch.fx graph, tensor shapes, the split point and the logits layers."""
from __future__ import annotations

import functools
import warnings

import torch
import torch.fx as fx
import torch.nn as nn
from torch.fx.passes.shape_prop import _extract_tensor_metadata

from . import leaves

DEFAULT_HW = 64


class _Tracer(fx.Tracer):
    """torch.fx tracer keeping the modules of :mod:`.leaves` whole, tracing timm's functions marked "do not
    trace" as one call, and remembering the module it is in, so that a trace error can name it."""

    def __init__(self):
        super().__init__(autowrap_functions=leaves.autowrap_functions())
        self.stack: list[tuple[str, str]] = []

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return leaves.is_leaf(m) or super().is_leaf_module(m, qualname)

    def call_module(self, m: nn.Module, forward, args, kwargs):
        path = self.path_of_module(m)
        own = leaves.traceable_forwards().get(type(m))
        if own is not None:
            forward = functools.partial(own, m)
        self.stack.append((path, type(m).__name__))
        try:
            return super().call_module(m, forward, args, kwargs)
        finally:
            self.stack.pop()


def _trace_once(model: nn.Module) -> fx.GraphModule:
    tracer = _Tracer()
    try:
        graph = tracer.trace(model)
    except Exception as e:  # noqa: BLE001 - fx raises many types; the user needs one clear message
        where = f" in module '{tracer.stack[-1][0]}' ({tracer.stack[-1][1]})" if tracer.stack else ""
        raise ValueError(f"ak.adjoin could not trace {type(model).__name__} with torch.fx{where}: "
                         f"{type(e).__name__}: {e}. Models with data-dependent Python control flow cannot be "
                         f"adjoined; a module whose forward cannot be traced can be kept whole with timm's "
                         f"register_notrace_module, if ak.adjoin has a rule for it (docs/adjoin.md).") from e
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


def trace(model: nn.Module) -> fx.GraphModule:
    """``model`` as a GraphModule sharing its submodules, in which every use of a module's ``training`` flag
    as an argument (``F.dropout(x, p, training=self.training)``) reads that flag at run time.

    torch.fx turns ``self.training`` into a constant; to find where it was read, the model is traced once in
    train and once in eval mode, and a boolean argument that differs becomes a ``get_attr`` of the
    ``training`` flag of the module the call is in. When the two traces differ in structure (Python control
    flow on ``self.training`` outside a leaf module) the trace of the model's own modes is kept, with a
    warning naming the module. Raises ValueError when torch.fx cannot trace the model."""
    modes = {m: m.training for m in model.modules()}
    try:
        model.train()
        g_train = _trace_once(model)
        model.eval()
        g_eval = _trace_once(model)
    finally:
        for m, mode in modes.items():
            m.training = mode
    where = _mode_args(g_train.graph, g_eval.graph)
    if isinstance(where, str):
        warnings.warn(f"ak.adjoin: module '{where}' branches on self.training in Python; the adjoined model "
                      f"keeps the behaviour of its mode at conversion time there", stacklevel=3)
        return _trace_once(model)
    for node, path in where:
        owner = node_path(node)
        # fx warns that a get_attr of a plain attribute has no "underlying reference"; the flag is one.
        with g_train.graph.inserting_before(node), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            flag = g_train.graph.get_attr(f"{owner}.training" if owner else "training")
        node.args, node.kwargs = _replace_flag(node.args, path, flag), _replace_flag(node.kwargs, path, flag)
    g_train.recompile()
    return g_train


def _args_key(a):
    """Arguments with nodes replaced by their names and booleans by a placeholder."""
    if isinstance(a, fx.Node):
        return ("node", a.name)
    if isinstance(a, bool):
        return ("bool",)
    if isinstance(a, (tuple, list)):
        return type(a).__name__, tuple(_args_key(x) for x in a)
    if isinstance(a, dict):
        return tuple((k, _args_key(v)) for k, v in a.items())
    return repr(a)


def _bool_paths(a, prefix=()):
    if isinstance(a, bool):
        yield prefix, a
    elif isinstance(a, (tuple, list)):
        for i, x in enumerate(a):
            yield from _bool_paths(x, prefix + (i,))
    elif isinstance(a, dict):
        for k, v in a.items():
            yield from _bool_paths(v, prefix + (k,))


def _mode_args(g_train: fx.Graph, g_eval: fx.Graph):
    """``[(node of g_train, path in (args, kwargs))]`` of the booleans equal to the trace's mode that differ
    between the two traces, or the module path where the traces first differ in structure."""
    a, b = list(g_train.nodes), list(g_eval.nodes)
    for n, m in zip(a, b):
        if (n.op, n.target, _args_key(n.args), _args_key(n.kwargs)) != \
                (m.op, m.target, _args_key(m.args), _args_key(m.kwargs)):
            return node_path(n) or "<top level>"
    if len(a) != len(b):
        return node_path(a[min(len(a), len(b)) - 1]) or "<top level>"
    out = []
    for n, m in zip(a, b):
        train = dict(_bool_paths((n.args, n.kwargs)))
        for path, v in _bool_paths((m.args, m.kwargs)):
            if train[path] is True and v is False:
                out.append((n, path))
    return out


def _replace_flag(a, path, flag):
    """``a`` (the node's args when ``path[0] == 0``, its kwargs when 1) with ``path[1:]`` set to ``flag``."""
    def put(x, rest):
        if not rest:
            return flag
        if isinstance(x, dict):
            return {**x, rest[0]: put(x[rest[0]], rest[1:])}
        items = list(x)
        items[rest[0]] = put(items[rest[0]], rest[1:])
        return type(x)(items)
    is_args = isinstance(a, tuple)
    return put(a, path[1:]) if path[0] == (0 if is_args else 1) else a


def first_conv_channels(gm: fx.GraphModule) -> int:
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), nn.Conv2d):
            return gm.get_submodule(node.target).in_channels
    raise ValueError("ak.adjoin needs a CNN: the traced model calls no nn.Conv2d")


class _ShapeRecorder(fx.Interpreter):
    """Runs the graph and records each node's output as ``node.meta['tensor_meta']`` (shape, dtype, ...)."""

    def run_node(self, n: fx.Node):
        result = super().run_node(n)
        found = []

        def meta(obj):
            if isinstance(obj, torch.Tensor):
                found.append(True)
                return _extract_tensor_metadata(obj)
            return obj
        recorded = fx.node.map_aggregate(result, meta)
        if found:
            n.meta["tensor_meta"] = recorded
        return result


def propagate_shapes(gm: fx.GraphModule, input_shape) -> None:
    """Record every node's output shape (``node.meta['tensor_meta']``) from one eval-mode run on a random
    ``[1, *input_shape]`` input. Training flags and BN statistics are left as they were."""
    p = next(iter(gm.parameters()), None)
    kw = {} if p is None else {"device": p.device, "dtype": p.dtype}
    x = torch.randn(1, *input_shape, generator=torch.Generator().manual_seed(0)).to(**kw)
    modes = {m: m.training for m in gm.modules()}
    try:
        gm.eval()
        with torch.no_grad():
            _ShapeRecorder(gm).run(x)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"ak.adjoin could not run the model on a random input of shape {tuple(x.shape)} to "
                         f"learn its shapes ({type(e).__name__}: {e}); pass input_shape=(C, H, W)") from e
    finally:
        for m, mode in modes.items():
            m.training = mode


def node_path(node: fx.Node) -> str:
    """The module path a node belongs to: its target for a module call, else the innermost module whose
    forward made it ("" at the top level)."""
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack") or {}
    return next(reversed(stack.values()))[0] if stack else ""


def node_type(node: fx.Node) -> str:
    """The class name of the module :func:`node_path` names ("" at the top level)."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    cls = next(reversed(stack.values()))[1]
    return getattr(cls, "__name__", str(cls))


def _paths(node: fx.Node) -> list[str]:
    stack = node.meta.get("nn_module_stack") or {}
    paths = [v[0] for v in stack.values()]
    return paths + [str(node.target)] if node.op == "call_module" else paths


def candidate_starts(model: nn.Module) -> list[str]:
    """The model's top-level and second-level module paths (its stages and blocks)."""
    out = []
    for name, child in model.named_children():
        out.append(name)
        out += [f"{name}.{sub}" for sub, _ in child.named_children()]
    return out


def resolve_start(model: nn.Module, start: str | None) -> str:
    """``start``, or "layer2" when the model has it, or for a timm model the stage after its 1/4-resolution
    feature (:func:`.timm_models.timm_start`); ValueError listing the candidates otherwise."""
    names = dict(model.named_modules())
    if start is None and "layer2" in names:
        return "layer2"
    if start is None and getattr(model, "feature_info", None):
        from .timm_models import timm_start
        try:
            return timm_start(model)
        except ValueError:
            pass
    cands = ", ".join(candidate_starts(model))
    if start is None:
        raise ValueError(f"ak.adjoin needs start=<module path> for {type(model).__name__} (it has no 'layer2'); "
                         f"the branches split where that module begins. Candidates: {cands}")
    if start not in names or start == "":
        raise ValueError(f"start={start!r} is not a module path of {type(model).__name__}; candidates: {cands}")
    return start


def branch_nodes(gm: fx.GraphModule, start: str) -> set[fx.Node]:
    """Nodes from ``start`` on: the first node inside ``start`` and every later node that is inside it or
    reads a node of the set. Everything else (the stem, constants) runs once and is shared."""
    nodes = list(gm.graph.nodes)
    inside = [i for i, n in enumerate(nodes) if any(p == start or p.startswith(start + ".") for p in _paths(n))]
    if not inside:
        raise ValueError(f"start={start!r} is never called in the traced forward of the model")
    out: set[fx.Node] = set()
    for n in nodes[inside[0]:]:
        if n.op not in ("call_module", "call_function", "call_method"):
            continue
        if any(p == start or p.startswith(start + ".") for p in _paths(n)) or \
                any(a in out for a in n.all_input_nodes):
            out.add(n)
    return out


def logits_layers(gm: fx.GraphModule) -> set[fx.Node]:
    """The Conv2d/Linear calls that produce the output: reached from the output node through parameter-free
    ops (and BatchNorm) only. They keep their full output width in the small branch."""
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    found, seen, todo = set(), set(), list(out_node.all_input_nodes)
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.op == "call_module" and isinstance(gm.get_submodule(n.target), (nn.Conv2d, nn.Linear)):
            found.add(n)
        elif n.op in ("call_module", "call_function", "call_method"):
            todo += [a for a in n.all_input_nodes if "tensor_meta" in a.meta]
    return found
