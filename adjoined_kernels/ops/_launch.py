"""Cheap relaunches of the Triton kernels: a host-overhead cut, not a kernel change.

Triton's launch path (``Autotuner.run``, then ``JITFunction.run``: argument binding, per-argument
specialisation, cache key, grid) costs 60-90 µs of host time per launch of the ~45-argument conv kernels,
and a training step launches four of them. On an H100 the Triton conv step was host-bound: ~1.4 ms of host
work against 0.13 ms of GPU time at N=32 (bench/results/2026-11-23-H100-run4-conv.csv).

``Relauncher`` sends the first launch of every distinct argument signature through Triton, keeps the
compiled kernel, its grid and its constexpr values, and launches later calls with the same signature through
the compiled kernel's own launcher (``CompiledKernel[grid]``, Triton's API for a compiled kernel). The
signature holds every int argument's value, every tensor's dtype and 16-byte alignment (what Triton
specialises on), the constexpr arguments and the current device, so a relaunch passes the launcher exactly
the arguments Triton would. The autotuner's choice is part of the cached entry: its key arguments are among
the int values. ``tools/launch_report.py`` runs both paths offline (kernels compiled for sm_90, the C
launcher recorded): ``--check`` compares every launch with Triton's own (tests/test_launch.py), and the
report times a step, fprop + dgrad + wgrad at N=32, C=256, 14x14, bf16, on the 2-core CI CPU with Triton
3.8: about 780 µs of host time without the cache, 520 with it, 455 once the launchers also memoise their
launch plans (sizes, strides and grid per layer geometry; ``_*_plan`` in conv_*.py). The first figures
reported here (861 -> 641) counted fresh memory for every output: the recorder kept them all alive.

``ADJOINED_TRITON_FAST_LAUNCH=0`` sends every launch through Triton. Under the interpreter (DESIGN §4)
every launch goes through Triton: there is no compiled kernel.
"""
from __future__ import annotations

import os

import torch
from triton.runtime.jit import JITFunction

from ._conv_common import INTERPRET

# Read once at import, like the other knobs of the launch path.
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
    """``Relauncher(kernel)(grid, *args, **constexprs)`` launches ``kernel[grid](*args, **constexprs)``.

    ``kernel`` is a ``triton.jit`` function, optionally under ``triton.autotune``; ``args`` are its runtime
    arguments (tensors, then ints: the kernel's parameters before every constexpr one) and ``constexprs`` its
    constexpr parameters other than the autotuned ones. ``grid`` is a tuple or a function of the bound
    arguments, as for Triton; it must depend on nothing but the int arguments and the constexprs (it is
    evaluated once per signature). Launches go to the current CUDA device and stream.
    """

    # Entries per kernel before the cache starts over (one per problem signature: a model has tens).
    MAX_ENTRIES = 4096

    def __init__(self, kernel):
        self.kernel = kernel
        self.cache: dict = {}
        self.n_tensors = None
        self.last_config = None  # the autotune config of the latest launch (None without autotuning)

    def __call__(self, grid, *args, **constexprs):
        if not FAST:
            self.kernel[grid](*args, **constexprs)
            self.last_config = getattr(self.kernel, "best_config", None)
            return
        if self.n_tensors is None:
            self.n_tensors = _n_tensors(args)
        n, device = self.n_tensors, torch.cuda.current_device()
        # what Triton specialises on: ints by value, tensors by dtype and address mod 16
        key = (device, tuple(constexprs.items()), args[n:], tuple((t.dtype, t.data_ptr() & 15) for t in args[:n]))
        hit = self.cache.get(key)
        if hit is None:
            if len(self.cache) >= self.MAX_ENTRIES:
                self.cache.clear()
            self.cache[key] = self._first(grid, args, constexprs)
            return
        launch, tail, self.last_config = hit
        launch(*args, *tail, stream=_raw_stream(device))

    def _first(self, grid, args, constexprs):
        """Launch through Triton; return (the compiled kernel's launcher for this grid, constexpr values in
        parameter order, the autotune config)."""
        kernel = self.kernel[grid](*args, **constexprs)
        if hasattr(kernel, "result"):  # compiled asynchronously
            kernel = kernel.result()
        config = self.last_config = getattr(self.kernel, "best_config", None)  # the autotuner's pick
        values = {**constexprs, **(config.all_kwargs() if config is not None else {})}
        jit = self.kernel
        while not isinstance(jit, JITFunction):  # under triton.autotune
            jit = jit.fn
        tail = tuple(values[name] for name in jit.arg_names[len(args):])
        g = grid(dict(zip(jit.arg_names, args + tail))) if callable(grid) else grid
        g = tuple(g) + (1,) * (3 - len(g))
        return kernel[g], tail, config
