"""Tracing a model for ``ak.adjoin``: torch.fx graph, tensor shapes, the split point and the logits layers."""
from __future__ import annotations

import functools

import torch
import torch.fx as fx
import torch.nn as nn
from torch.fx.passes.shape_prop import _extract_tensor_metadata

DEFAULT_HW = 64


@functools.cache
def _extra_leaves() -> tuple:
    """Modules traced as one call: torchvision's StochasticDepth reads ``self.training`` in Python, which a
    trace through it would freeze at its value at conversion time."""
    try:
        from torchvision.ops import StochasticDepth
    except ImportError:
        return ()
    return (StochasticDepth,)


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, _extra_leaves()) or super().is_leaf_module(m, qualname)


def trace(model: nn.Module) -> fx.GraphModule:
    """``model`` as a GraphModule sharing its submodules. Raises ValueError when torch.fx cannot trace it."""
    tracer = _Tracer()
    try:
        graph = tracer.trace(model)
    except Exception as e:  # noqa: BLE001 - fx raises many types; the user needs one clear message
        raise ValueError(f"ak.adjoin could not trace {type(model).__name__} with torch.fx: {type(e).__name__}: "
                         f"{e}. Models with data-dependent Python control flow cannot be adjoined.") from e
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


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
    """``start``, or "layer2" when the model has it; ValueError listing the candidates otherwise."""
    names = dict(model.named_modules())
    if start is None and "layer2" in names:
        return "layer2"
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
