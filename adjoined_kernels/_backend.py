"""Backend discovery and dispatch (docs/kernels.md, "Backends").

Backends: "reference" (PyTorch ops, any device), "triton" (CUDA tensors, or CPU tensors when
TRITON_INTERPRET=1 was set before import), "cuda" (the compiled extension adjoined_kernels._C).
"""
from __future__ import annotations

import functools
import importlib
import os

import torch

from . import _autotune

BACKENDS = ("auto", "reference", "triton", "cuda")


def triton_interpreting() -> bool:
    """True when Triton kernels run in the CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=None)
def _triton_status() -> str | None:
    """None if triton is usable, else the reason it is not."""
    try:
        importlib.import_module("triton")
    except ImportError as e:  # pragma: no cover - depends on the install
        return f"triton is not installed ({e}); run `pip install triton`"
    if not (torch.cuda.is_available() or triton_interpreting()):
        return ("triton needs a CUDA GPU, or TRITON_INTERPRET=1 set before importing "
                "adjoined_kernels to run its kernels on CPU tensors")
    return None


@functools.lru_cache(maxsize=None)
def _cuda_status() -> str | None:
    """None if the compiled extension loads, else the reason it does not."""
    try:
        importlib.import_module("adjoined_kernels._C")
    except ImportError as e:
        return (f"the CUDA extension adjoined_kernels._C is not built ({e}); install with "
                "`pip install --no-build-isolation -e .` on a machine with nvcc and a CUDA build of torch")
    return None


def available_backends() -> list[str]:
    """Backends usable in this process, e.g. ``["reference", "triton", "cuda"]``.

    "reference" is always present. "triton" needs triton plus a CUDA GPU or TRITON_INTERPRET=1.
    "cuda" needs the compiled extension ``adjoined_kernels._C``.
    """
    out = ["reference"]
    if _triton_status() is None:
        out.append("triton")
    if _cuda_status() is None:
        out.append("cuda")
    return out


def tunable(device: torch.device) -> bool:
    """Whether ``backend="auto"`` times the backends for tensors on ``device`` (CUDA, unless ADJOINED_AUTOTUNE=0)
    instead of taking the fixed order of :func:`resolve_backend`."""
    return device.type == "cuda" and _autotune.enabled()


def tuned(op: str, key: tuple, supported: tuple[str, ...], load, step) -> str:
    """The fastest available backend, reference included, for ``op`` on inputs described by ``key``: timed on
    first use, then a dict lookup (docs/kernels.md, "auto"). ``load(name)`` imports a backend; ``step(name)``
    returns a zero-argument call running the op (and its backward when training) on that backend."""
    hit = _autotune.lookup(op, key)
    if hit is None:
        names = [n for n in ("reference", *supported) if n in available_backends()]
        for name in names[1:]:
            load(name)
        hit = _autotune.choose(op, key, {name: step(name) for name in names}, timer=_autotune.timer)
    return hit


@torch.compiler.assume_constant_result
def resolve_backend(backend: str, device: torch.device, supported: tuple[str, ...]) -> str:
    """Pick the concrete backend for tensors on ``device``.

    ``supported`` lists the non-reference backends the calling op implements. "auto" here is the fixed order
    (cuda, triton, reference) on CUDA tensors, "reference" elsewhere; the ops time the backends instead when
    :func:`tunable` says so.
    Raises ValueError for an unknown name and RuntimeError for an unavailable backend. torch.compile takes
    the result as a constant: the import probes behind it cannot be traced.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "reference":
        return backend
    if backend == "auto":
        if device.type != "cuda":
            return "reference"
        for name in ("cuda", "triton"):
            if name in supported and name in available_backends():
                return name
        return "reference"
    reason = _triton_status() if backend == "triton" else _cuda_status()
    if reason is not None:
        raise RuntimeError(f"backend={backend!r} is unavailable: {reason}")
    if backend not in supported:
        raise RuntimeError(f"backend={backend!r} does not implement this op yet; "
                           f"use one of {('reference',) + supported}")
    if device.type != "cuda" and not (backend == "triton" and triton_interpreting()):
        raise RuntimeError(f"backend={backend!r} needs CUDA tensors, got tensors on {device}")
    return backend
