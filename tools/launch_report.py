"""Host time of the Triton conv launch path, and a check of the relaunch cache (ops/conv/triton/launch.py),
without a GPU.

A fake CUDA driver stands in for the GPU: Triton compiles every kernel for sm_90 for real (its own pipeline
and ptxas), and the one piece that needs a GPU, the C launcher that calls cuLaunchKernel, is replaced by a
recorder. So Triton's whole Python launch path runs, and so does ours; tensors live on the CPU.

    python tools/launch_report.py           # host µs per training step and per pass, relaunch cache on / off
    python tools/launch_report.py --check   # relaunches hand the launcher what Triton's own path does

``--check`` launches fprop, dgrad and wgrad (with its split-K reduction) for several problems (shapes, bias
and scale, a misaligned input, fp16 and bf16) through Triton's path and then twice through the relaunch
cache (the second time from the cache), and compares every launcher call: compiled kernel, grid, and each
argument (ints by value, tensors by dtype, shape, strides and alignment). Host times depend on this CPU
and on the Triton version on sys.path; they are not GPU timings.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
import time

os.environ.pop("TRITON_INTERPRET", None)
os.environ["ADJOINED_TRITON_AUTOTUNE"] = "0"  # one config: autotuning would need a GPU to time configs
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.backends.nvidia.driver import ty_to_cpp  # noqa: E402
from triton.runtime.driver import driver  # noqa: E402

from _check import verdict  # noqa: E402

CALLS: list = []  # what the C launcher was handed: (kernel, grid, args), while RECORD is on
# Off while timing: recorded calls would keep every output tensor alive, so each step's allocations would be
# fresh memory (page faults) instead of the reuse that a caching allocator gives on a GPU.
RECORD = True


class _Utils:
    def load_binary(self, name, kernel, shared, device):
        return name, hash(kernel), 64, 0, 1024  # module, function (one per compiled binary), registers, spills, threads

    def get_device_properties(self, device):
        return {"max_shared_mem": 232448, "multiprocessor_count": 132, "max_num_regs": 65536, "warpSize": 32}


class _Launcher:
    def __init__(self, src, metadata):
        self.name = metadata.name

    def __call__(self, gx, gy, gz, stream, function, *args):
        # args: launch_cooperative_grid, launch_pdl, global and profile scratch, then the kernel's own
        if RECORD:
            CALLS.append((self.name, function, (gx, gy, gz), args))


class _Driver:
    """The methods of Triton's CUDA driver that compiling and launching use, for an sm_90 device 0."""
    utils, launcher_cls = _Utils(), _Launcher

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=0):
        return 0

    def set_current_device(self, device):
        pass

    def get_device_capability(self, device=0):
        return 9, 0

    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)

    def get_active_torch_device(self):
        return torch.device("cpu")

    def get_device_interface(self):
        return torch.cuda

    def map_python_to_cpp_type(self, ty):
        return ty_to_cpp(ty)

    def is_active(self):
        return True


driver.set_active(_Driver())
torch.cuda.current_device = lambda: 0  # the relaunch key reads the current device
from adjoined_kernels.ops import conv  # noqa: E402
from adjoined_kernels.ops.conv.triton import launch  # noqa: E402

adjoined_conv2d_triton = functools.partial(conv.run, conv.triton)  # the Triton path without backend checks

launch._raw_stream = lambda device: 0
CL = torch.channels_last


def _problem(n, c, k, hw, alpha, dtype, bias, scale, misalign):
    """Inputs of one adjoined conv (3x3, padding 1) with grad, and the output gradients."""
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(shape, generator=g).to(dtype)

    xs_shape = (n, c // alpha, hw, hw)
    if misalign:  # a channels_last view one element into its storage: not 16-byte aligned
        buf = r(xs_shape[0] * xs_shape[1] * hw * hw + 1)
        xs = buf[1:].view(n, hw, hw, c // alpha).permute(0, 3, 1, 2)
    else:
        xs = r(*xs_shape).to(memory_format=CL)
    xf, w = r(n, c, hw, hw).to(memory_format=CL), r(k, c, 3, 3).to(memory_format=CL)
    b = r(k) if bias else None
    sc = r(k // alpha) if scale else None
    leaves = [t.requires_grad_() for t in (xf, xs, w, b, sc) if t is not None]
    grads = (r(n, k, hw, hw).to(memory_format=CL), r(n, k // alpha, hw, hw).to(memory_format=CL))
    return (xf, xs, w, b, sc), leaves, grads, k // alpha


def _step(inputs, leaves, grads, c_out_s):
    xf, xs, w, b, sc = inputs
    z = adjoined_conv2d_triton(xf, xs, w, b, (1, 1), (1, 1), (1, 1), c_out_s, sc)
    return torch.autograd.grad(z, leaves, grads)


def _canon(call):
    """A launcher call with tensors by (dtype, shape, strides, address mod 16) (outputs are new each step) and
    the launch metadata for hooks (a new LazyDict each launch) by its contents."""
    name, function, grid, args = call

    def canon(a):
        if isinstance(a, torch.Tensor):
            return a.dtype, tuple(a.shape), a.stride(), a.data_ptr() & 15
        if type(a).__name__ == "LazyDict":
            return "LazyDict", tuple(sorted((k, str(v)) for k, v in a.data.items()))
        return a
    return name, function, grid, tuple(canon(a) for a in args)


def _launches(problem, fast):
    launch.FAST = fast
    CALLS.clear()
    _step(*problem)
    return [_canon(c) for c in CALLS]


PROBLEMS = {
    "bf16": (4, 32, 32, 7, 2, torch.bfloat16, False, False, False),
    "bf16+bias+scale": (4, 32, 32, 7, 2, torch.bfloat16, True, True, False),
    "bf16 misaligned x_small": (4, 32, 32, 7, 2, torch.bfloat16, False, False, True),
    "bf16 9x9": (4, 32, 32, 9, 2, torch.bfloat16, False, False, False),
    "fp16 alpha 4": (3, 64, 48, 5, 4, torch.float16, False, False, False),
}


def check() -> int:
    failed = []
    for name, spec in PROBLEMS.items():
        prob = _problem(*spec)
        triton_path = _launches(prob, fast=False)
        first, cached = _launches(prob, fast=True), _launches(prob, fast=True)
        print(f"{name}: {len(triton_path)} launches: " + ", ".join(c[0] for c in triton_path))
        if not triton_path:
            failed.append(f"{name}: no launch recorded")
        for label, got in (("first relaunch-cache step", first), ("cached step", cached)):
            if got != triton_path:
                failed.append(f"{name}: the {label} differs from Triton's own launches")
    return verdict(failed)


def _time(fn, n=200):
    for _ in range(10):
        fn()
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t) / n * 1e6)
    return best


def report():
    global RECORD
    RECORD = False
    prob = _problem(32, 256, 256, 14, 2, torch.bfloat16, False, False, False)
    print("adjoined conv 3x3, N=32, C_in=C_out=256, 14x14, alpha 2, bf16: host µs per call (best of 5)")
    for fast in (False, True):
        launch.FAST = fast
        _step(*prob)
        us = _time(lambda: _step(*prob))
        print(f"  fprop + dgrad + wgrad step, relaunch cache {'on ' if fast else 'off'}: {us:7.1f}")
    launch.FAST = True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="compare relaunches with Triton's own launches")
    args = ap.parse_args(argv)
    if args.check:
        return check()
    report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
