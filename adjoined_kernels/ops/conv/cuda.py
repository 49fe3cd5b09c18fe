"""The CUDA conv backend: the kernels of ``csrc/`` (compiled into ``adjoined_kernels._C``) behind the contract
of ops/conv/contract.py, registered in C++ as ``adjoined::cuda_conv2d_{fprop,dgrad,wgrad}``.

- fprop: one launch for both branches, a grouped implicit GEMM over NHWC (M = N·P·Q, N = C_out, K = R·S·C_in);
  a block that owns a full output tile also owns the small tile with the same index and feeds each weight
  tile of the shared prefix to both accumulators; bias and the ``small_scale`` gate in the epilogue.
- dgrad: the same kernel with M = N·H·W, N = C_in, K = R·S·C_out, split into the stride's phase classes.
- wgrad: split-K implicit GEMM into an fp32 workspace, reduced in a fixed order (deterministic, no atomics);
  db and d small_scale from per-channel partial sums reduced the same way.

Kernel design: docs/kernels.md ("The convolution as a grouped implicit GEMM"). Importing this module loads
the extension and raises RuntimeError when it is not built.
"""
from __future__ import annotations

import torch

from .._ext import load
from .contract import Impl, register

load()
OPS = register("cuda")


def fprop(*inputs):
    """``adjoined::cuda_conv2d_fprop`` without its Python autograd kernel (~100 µs of host time per call);
    the caller's autograd.Function applies the same formula."""
    with torch._C._AutoDispatchBelowAutograd():
        return OPS.fprop(*inputs)


IMPL = Impl(fprop, OPS.dgrad, OPS.wgrad)
