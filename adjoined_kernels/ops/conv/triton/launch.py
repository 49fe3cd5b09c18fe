"""Cheap relaunches of the Triton conv kernels: a host-overhead cut, not a kernel change
(docs/kernels.md, "Host overhead").

Triton's launch path (``Autotuner.run``, then ``JITFunction.run``: argument binding, per-argument
specialisation, cache key, grid) costs 60-90 µs of host time per launch of the ~45-argument conv kernels.
``Relauncher`` sends the first launch of every distinct argument signature through Triton, keeps the compiled
kernel, its grid and its constexpr values, and binds later calls with the same signature to the compiled
kernel's own launcher (``CompiledKernel[grid]``). The signature holds every int argument's value, every
tensor's dtype and 16-byte alignment (what Triton specialises on), the constexpr arguments and the current
device, so a relaunch passes the launcher exactly the arguments Triton would; the autotuner's choice is part
of the cached entry (its key arguments are among the ints). ``tools/launch_report.py --check`` compares
every cached launch with Triton's own.

``ADJOINED_TRITON_FAST_LAUNCH=0`` sends every launch through Triton, and so does the interpreter.
"""
from __future__ import annotations

import functools
import os
from typing import Callable

import torch
from triton.runtime.jit import JITFunction

from .gemm import INTERPRET

# Read once at import, like the other knobs of the launch path (a module global: tools toggle it).
FAST = os.environ.get("ADJOINED_TRITON_FAST_LAUNCH", "1") != "0" and not INTERPRET
_BY_VALUE = (int,)  # not bool: True == 1 in a key, but Triton types them apart

try:  # the raw current stream, as Triton's own CUDA driver gets it (no Stream object per launch)
    from torch._C import _cuda_getCurrentRawStream as _raw_stream
except ImportError:  # pragma: no cover - older or CPU-only builds
    def _raw_stream(device: int) -> int:
        return torch.cuda.current_stream(device).cuda_stream


def _n_tensors(args) -> int:
    """How many tensors lead ``args``; raises TypeError unless only ints follow them."""
    n = next((i for i, a in enumerate(args) if type(a) in _BY_VALUE), len(args))
    if not all(type(a) in _BY_VALUE for a in args[n:]):
        raise TypeError("Relauncher: runtime arguments must be tensors followed by ints")
    return n


class Relauncher:
    """``Relauncher(kernel).bind(grid, args, constexprs)()`` launches ``kernel[grid](*args, **constexprs)``.

    ``kernel`` is a ``triton.jit`` function, optionally under ``triton.autotune``; ``args`` are its runtime
    arguments (tensors, then ints) and ``constexprs`` its constexpr arguments other than the autotuned ones.
    ``grid`` is a tuple or a function of the bound arguments that depends only on the ints and constexprs
    (it is evaluated once per signature). ``bind`` returns the launch as a callable, so that the caller's
    frame calls the compiled kernel's launcher directly (no frame of this module on the way in the steady
    state). Launches go to the current CUDA device and stream.
    """

    # Entries per kernel before the cache starts over (one per problem signature: a model has tens).
    MAX_ENTRIES = 4096

    def __init__(self, kernel):
        self.kernel = kernel
        self.cache: dict = {}
        self.n_tensors = None
        self._config = None

    @property
    def last_config(self):
        """The autotune config of the latest launch (None without autotuning): the autotuner's own record when
        every launch goes through Triton."""
        if FAST or self._config is not None:
            return self._config
        return getattr(self.kernel, "best_config", None)

    @last_config.setter
    def last_config(self, config):
        self._config = config

    def bind(self, grid, args: tuple, constexprs: dict) -> Callable[[], object]:
        if not FAST:
            return functools.partial(self.kernel[grid], *args, **constexprs)
        if self.n_tensors is None:
            self.n_tensors = _n_tensors(args)
        n, device = self.n_tensors, torch.cuda.current_device()
        # what Triton specialises on: ints by value, tensors by dtype and address mod 16
        key = (device, tuple(constexprs.items()), args[n:], tuple((t.dtype, t.data_ptr() & 15) for t in args[:n]))
        hit = self.cache.get(key)
        if hit is None:
            return functools.partial(self._first, key, grid, args, constexprs)
        launch, tail, self._config = hit
        return functools.partial(launch, *args, *tail, stream=_raw_stream(device))

    def __call__(self, grid, *args, **constexprs):
        self.bind(grid, args, constexprs)()

    def _first(self, key, grid, args, constexprs):
        """Launch through Triton and cache (the compiled kernel's launcher for this grid, constexpr values in
        parameter order, the autotune config)."""
        if len(self.cache) >= self.MAX_ENTRIES:
            self.cache.clear()
        kernel = self.kernel[grid](*args, **constexprs)
        if hasattr(kernel, "result"):  # compiled asynchronously
            kernel = kernel.result()
        config = self._config = getattr(self.kernel, "best_config", None)  # the autotuner's pick
        values = {**constexprs, **(config.all_kwargs() if config is not None else {})}
        jit = self.kernel
        while not isinstance(jit, JITFunction):  # under triton.autotune
            jit = jit.fn
        tail = tuple(values[name] for name in jit.arg_names[len(args):])
        g = grid(dict(zip(jit.arg_names, args + tail))) if callable(grid) else grid
        g = tuple(g) + (1,) * (3 - len(g))
        self.cache[key] = (kernel[g], tail, config)
