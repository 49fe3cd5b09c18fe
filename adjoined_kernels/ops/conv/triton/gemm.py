"""GEMM configuration shared by the Triton conv passes (fprop.py, dgrad.py, wgrad.py).

Host side: dot precision and the autotune config spaces (pruned to one config under the Triton interpreter,
docs/kernels.md, "Testing without a GPU"). Device side: the GROUP_M tile swizzle and scalar selects.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from ...._backend import triton_interpreting

# Read once at import: TRITON_INTERPRET must be set before the kernels are defined anyway.
INTERPRET = triton_interpreting()

# The interpreter computes bf16 arithmetic on raw bits, so every operand is upcast to fp32 there.
UPCAST = INTERPRET


def dot_precision(dtype: torch.dtype) -> str:
    """Input precision for fp32 ``tl.dot``: TF32 exactly when cuDNN convolutions use it (the torch default)."""
    if dtype == torch.float32 and not torch.backends.cudnn.allow_tf32:
        return "ieee"
    return "tf32"


# Launch plans memoised per launcher: one per distinct layer geometry (a model has tens).
PLANS = 4096


# ADJOINED_TRITON_AUTOTUNE=0 keeps one GPU config (the launch-bound default of gemm_prune): the GPU test
# suite then compiles one kernel per specialisation instead of one per config. Read once at import.
AUTOTUNE = os.environ.get("ADJOINED_TRITON_AUTOTUNE", "1") != "0"
UNTUNED = (64, 64, 32, 4, 3)
# Autotune results go to Triton's on-disk cache (keyed by kernel source, compiler, GPU arch, pruned configs
# and shapes), so a second run of the same shapes skips the benchmarking: seconds per layer at start-up.
CACHE_TUNING = True


def configs(space, interp):
    """The autotune space on a GPU (``UNTUNED`` alone when ADJOINED_TRITON_AUTOTUNE=0); the single config
    ``interp`` under the interpreter."""
    if INTERPRET:
        return [triton.Config(interp, num_warps=4, num_stages=1)]
    space = space if AUTOTUNE else [UNTUNED]
    return [triton.Config(dict(BM=bm, BN=bn, BK=bk, GROUP_M=8), num_warps=w, num_stages=st)
            for bm, bn, bk, w, st in space]


# Shared memory per block on H100/H200 is 227 KB; leave room for the epilogue's layout conversions.
SMEM_BUDGET = 200 * 1024


def gemm_prune(dims, a_tiles=lambda kwargs: 1):
    """Autotune pruner (``prune_configs_by``) for the implicit GEMMs; ``dims(named_args)`` gives the full
    problem's (M, N, K).

    - Drops configs whose pipelined operand tiles overflow shared memory (``a_tiles(kwargs)`` A tiles, two
      when one weight tile feeds both branches, plus one B tile per stage).
    - Drops 128-wide tiles along a dimension of at most 64 (half the tile would be masked).
    - With two A tiles (weight sharing: two accumulators), drops the configs in ``SHARED_SPILLS``.
    - Problems under 2^26 MACs are launch-bound: they skip tuning and take the 64x64x32 tile, so small
      shapes compile one kernel per specialisation instead of one per config.
    """
    def prune(configs, named_args, **kwargs):
        elt = next(v for v in named_args.values() if isinstance(v, torch.Tensor)).element_size()
        n_a = a_tiles(kwargs)
        m, n, k = dims(named_args)
        if n_a > 1:
            configs = [c for c in configs if config_key(c) not in SHARED_SPILLS] or configs

        def smem(c):
            return (n_a * c.kwargs["BM"] + c.kwargs["BN"]) * c.kwargs["BK"] * elt * c.num_stages

        def useful(c):
            return (c.kwargs["BM"] <= max(64, m)) and (c.kwargs["BN"] <= max(64, n))

        fits = [c for c in configs if smem(c) <= SMEM_BUDGET] or [min(configs, key=smem)]
        if m * n * k >= 1 << 26:
            return [c for c in fits if useful(c)] or fits
        small = [c for c in fits if (c.kwargs["BM"], c.kwargs["BN"], c.kwargs["BK"]) == (64, 64, 32)]
        return small[:1] or fits[-1:]
    return {"early_config_prune": prune}


def config_key(c):
    """(BM, BN, BK, warps, stages) of a triton.Config, as GEMM_SPACE lists it."""
    return c.kwargs["BM"], c.kwargs["BN"], c.kwargs["BK"], c.num_warps, c.num_stages


def shared_a_tiles(kwargs):
    """A tiles per stage: the paired loop of fprop/dgrad keeps one per branch."""
    return 2 if kwargs.get("SHARE", False) else 1


# (BM, BN, BK, warps, stages) for H100/H200 implicit GEMMs with fp32 accumulation.
GEMM_SPACE = (
    (256, 128, 64, 8, 3),
    (128, 128, 64, 8, 3),
    (128, 64, 64, 4, 4),
    (64, 128, 64, 4, 4),
    (128, 128, 32, 8, 4),
    (64, 64, 32, 4, 3),
)

# Configs that spill registers in the paired loop of fprop/dgrad (two fp32 accumulators): on sm_90, bf16,
# triton 3.6 and 3.8, tools/conv_sass_report.py finds 128x64x64 with 4 warps at 255 registers plus 56-160
# bytes of spills, and 256x128x64 with 1.4-1.7 KB (ResNet-50 layer-3 shapes); every other GEMM_SPACE config
# fits without spilling. Without sharing, 256x128x64 has no spills and, in wgrad, the fewest instructions
# per MMA (its B-tile address work is shared by twice the rows).
SHARED_SPILLS = ((128, 64, 64, 4, 4), (256, 128, 64, 8, 3))

# The interpreter's cost is per operation, not per element: few, large tiles keep it fast.
INTERP_GEMM = dict(BM=32, BN=32, BK=32, GROUP_M=2)


@triton.jit
def swizzle(pid, num_m, num_n, GROUP_M: tl.constexpr):
    """Linear tile id -> (tile_m, tile_n) in GROUP_M-row bands, so neighbours reuse operands in L2."""
    width = GROUP_M * num_n
    group = pid // width
    first_m = group * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    tile_m = first_m + (pid % width) % size_m
    tile_n = (pid % width) // size_m
    return tile_m, tile_n


@triton.jit
def pick4(cond, a0, a1, a2, a3, b0, b1, b2, b3):
    """Four scalar selects, ``a_i if cond else b_i``: one problem's (n, h, w, c) strides of two."""
    return tl.where(cond, a0, b0), tl.where(cond, a1, b1), tl.where(cond, a2, b2), tl.where(cond, a3, b3)
