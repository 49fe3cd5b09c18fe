"""Fused adjoined convolution, weight and bias gradients (wgrad), in Triton (docs/maths.md, section 1).

    dW = wgrad(x_full, dz_full) + wgrad(x_small, dz_small * small_scale)   (second term in [:c_out_s, :c_in_s])
    db = sum(dz_full) + sum(dz_small * small_scale)                          (second term in [:c_out_s])

Implicit GEMM over NHWC data: M = C_out, N = R·S·C_in, K = N·P·Q. K is long (up to ~10^6), so the
launch is split-K and deterministic (docs/kernels.md, "wgrad: split-K, deterministic"):

1. One launch of the main kernel. Its work items are (K-chunk, M-tile, N-tile) of the full problem,
   followed by those of the small problem; each writes its fp32 partial tile (and, on the first N-tile,
   its partial column sums of dz for db) to a per-branch workspace slot. No atomics.
2. A reduction kernel sums the chunks of both branches per element, so tiles inside the prefix block
   ``[:c_out_s, :c_in_s]`` reduce over both branches in a fixed order, and casts to the weight's dtype.

The chunk count is picked on the host to give about two work items per SM, at least 256 rows each.
"""
from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple

import torch
import triton
import triton.language as tl

from ... import _alloc
from .._layout import CL, cdiv, channels_last, cl_strides, conv_out_size, dense, nhwc_order, on_device
from ..reference import scale_grad
from .gemm import (CACHE_TUNING, GEMM_SPACE, INTERP_GEMM, INTERPRET, PLANS, UPCAST, configs, dot_precision,
                   gemm_prune, pick4, swizzle)
from .launch import Relauncher

# ----------------------------------------------------------------------------------------------------
# Kernels
#
# One code path per program, as in fprop.py: each program picks its problem's pointers, sizes and
# strides with scalar selects and runs the one tile loop. Two call sites of the loop (one per branch)
# make ptxas serialise every wgmma (C7515).


@triton.jit
def _rows_init(k, P, Q):
    """(n, p, q) of the GEMM rows ``k`` (flattened output positions): two divisions, done once per tile."""
    n = k // (P * Q)
    pq = k - n * (P * Q)
    p = pq // Q
    return n, p, pq - p * Q


@triton.jit
def _rows_next(n, p, q, dn, dp, dq, P, Q):
    """(n, p, q) of the rows BK further on, where BK = (dn·P + dp)·Q + dq with dp < P and dq < Q.

    A carry per digit replaces the two 32-bit divisions by runtime values per K step (~20 instructions
    each on sm_90).
    """
    q += dq
    wrap = q >= Q
    q = tl.where(wrap, q - Q, q)
    p += tl.where(wrap, dp + 1, dp)
    wrap = p >= P
    p = tl.where(wrap, p - P, p)
    n += tl.where(wrap, dn + 1, dn)
    return n, p, q


@triton.jit
def _wgrad_tile(x, dz, scale, ws, dbw, small, chunk, kch, tm, tn, NB, H, W, P, Q, C, Co, R, S,
                sh, sw, ph, pw, dh, dw, sxn, sxh, sxw, sxc,
                FLAT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SCALE: tl.constexpr, UPCAST: tl.constexpr,
                I64: tl.constexpr, PREC: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """Partial dW tile of one branch over rows ``[chunk·kch, (chunk+1)·kch)`` of K, written to ws[chunk].

    Rows are output channels ``co < Co``; columns index the flattened (tap, input channel) axis of
    ws ``[nch, Co, R*S*C]`` fp32. Tap-major tiles (FLAT false) hold one tap and BN channels, so the
    image bounds are checked per row; FLAT tiles run over the flattened axis, which fills the tile when
    C is small, at the cost of per-element bounds. dbw ``[nch, Co]`` gets the tn == 0 tiles' dz sums.
    The host makes ``kch`` a multiple of BK and every chunk non-empty: the loop runs at least once, so no
    zero-trip path sets the accumulator outside it (ptxas would serialise the wgmmas, C7515).
    ``small`` (a runtime scalar) applies ``scale`` to the finished tile: the scale is per output channel,
    a row of this GEMM, so it commutes with the K reduction. dz is dense NHWC (the launcher makes it so):
    GEMM row k of dz starts at k·Co, with no (n, p, q) decoding.
    """
    offs_m = tm * BM + tl.arange(0, BM)
    mmask = offs_m < Co
    if FLAT:
        col = tn * BN + tl.arange(0, BN)
        nmask = col < R * S * C
        tap = col // C
        ci = col - tap * C
        r = tap // S
        s = tap - r * S
        rd = (r * dh)[None, :]
        sd = (s * dw)[None, :]
    else:
        nnc = tl.cdiv(C, BN)
        tap = tn // nnc
        ci = (tn - tap * nnc) * BN + tl.arange(0, BN)
        nmask = ci < C
        col = tap * C + ci
        r = tap // S
        s = tap - r * S
        rd = r * dh
        sd = s * dw
    coff = (r * dh * sxh + s * dw * sxw + ci * sxc)[None, :]
    K = NB * P * Q
    k_lo = chunk * kch
    k_hi = tl.minimum(k_lo + kch, K)
    tl.assume(k_lo < k_hi)
    rows = k_lo + tl.arange(0, BK)
    n, p, q = _rows_init(rows, P, Q)
    dn, dp, dq = _rows_init(tl.full((), BK, tl.int32), P, Q)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    dbacc = tl.zeros((BM,), dtype=tl.float32)
    for _ in range(k_lo, k_hi, BK):
        rok = rows < k_hi
        # 32-bit row offsets unless the host says a tensor is too large (I64): the 64-bit products were a
        # fifth of the loop's sm_90 instructions (tools/conv_sass_report.py)
        krow = rows.to(tl.int64) * Co if I64 else rows * Co
        a = tl.load(dz + krow[None, :] + offs_m[:, None],
                    mask=mmask[:, None] & rok[None, :], other=0.0)
        if HAS_BIAS:
            dbacc += tl.sum(a.to(tl.float32), axis=1)
        hb = p * sh - ph
        wb = q * sw - pw
        h = hb[:, None] + rd
        w = wb[:, None] + sd
        valid = rok[:, None] & (h >= 0) & (h < H) & (w >= 0) & (w < W)
        nrow = n.to(tl.int64) * sxn if I64 else n * sxn
        xrow = (nrow + hb * sxh + wb * sxw)[:, None]
        b = tl.load(x + xrow + coff, mask=valid & nmask[None, :], other=0.0)
        if UPCAST:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=PREC)
        rows += BK
        n, p, q = _rows_next(n, p, q, dn, dp, dq, P, Q)
    if HAS_SCALE:
        sc = tl.load(scale + offs_m, mask=mmask & small, other=1.0).to(tl.float32)
        acc *= sc[:, None]
        dbacc *= sc
    RSC = R * S * C
    out = ws + chunk.to(tl.int64) * Co * RSC + offs_m[:, None] * RSC + col[None, :]
    tl.store(out, acc, mask=mmask[:, None] & nmask[None, :])
    if HAS_BIAS:
        tl.store(dbw + chunk * Co + offs_m, dbacc, mask=mmask & (tn == 0))


@triton.jit
def _n_tiles(R, S, C, FLAT: tl.constexpr, BN: tl.constexpr):
    """Column tiles of one branch: over the flattened (tap, channel) axis, or per tap."""
    if FLAT:
        return tl.cdiv(R * S * C, BN)
    return R * S * tl.cdiv(C, BN)


def _dims(a):
    return a["C_out"], a["R"] * a["S"] * a["C_in"], a["N1"] * a["P1"] * a["Q1"]


@triton.autotune(configs=configs(GEMM_SPACE, INTERP_GEMM), prune_configs_by=gemm_prune(_dims),
                 key=["N1", "P1", "Q1", "N2", "P2", "Q2", "C_in", "c_in_s", "C_out", "c_out_s", "R", "S",
                      "kch", "HAS_BIAS", "HAS_SCALE", "I64", "PREC"], cache_results=CACHE_TUNING)
@triton.jit
def _wgrad_kernel(xf, xs, dzf, dzs, scale, ws1, ws2, dbw1, dbw2,
                  N1, H1, W1, P1, Q1, N2, H2, W2, P2, Q2, C_in, c_in_s, C_out, c_out_s, R, S,
                  sh, sw, ph, pw, dh, dw, nch1, kch,
                  sxf_n, sxf_h, sxf_w, sxf_c, sxs_n, sxs_h, sxs_w, sxs_c,
                  FLAT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SCALE: tl.constexpr,
                  UPCAST: tl.constexpr, I64: tl.constexpr, PREC: tl.constexpr,
                  BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr):
    pid = tl.program_id(0)
    nm1 = tl.cdiv(C_out, BM)
    nn1 = _n_tiles(R, S, C_in, FLAT, BN)
    nm2 = tl.cdiv(c_out_s, BM)
    nn2 = _n_tiles(R, S, c_in_s, FLAT, BN)
    full = pid < nch1 * nm1 * nn1
    # The program's own problem, by scalar selects: work items of the full problem come first.
    t = tl.where(full, pid, pid - nch1 * nm1 * nn1)
    nm = tl.where(full, nm1, nm2)
    nn = tl.where(full, nn1, nn2)
    chunk = t // (nm * nn)
    # Consecutive programs share a K-chunk, so its x and dz rows stay in L2.
    tm, tn = swizzle(t - chunk * (nm * nn), nm, nn, GROUP_M)
    sx_n, sx_h, sx_w, sx_c = pick4(full, sxf_n, sxf_h, sxf_w, sxf_c, sxs_n, sxs_h, sxs_w, sxs_c)
    _wgrad_tile(tl.where(full, xf, xs), tl.where(full, dzf, dzs), scale, tl.where(full, ws1, ws2),
                tl.where(full, dbw1, dbw2), pid >= nch1 * nm1 * nn1, chunk, kch, tm, tn,
                tl.where(full, N1, N2), tl.where(full, H1, H2), tl.where(full, W1, W2), tl.where(full, P1, P2),
                tl.where(full, Q1, Q2), tl.where(full, C_in, c_in_s), tl.where(full, C_out, c_out_s), R, S,
                sh, sw, ph, pw, dh, dw, sx_n, sx_h, sx_w, sx_c,
                FLAT, HAS_BIAS, HAS_SCALE, UPCAST, I64, PREC, BM, BN, BK)


@triton.jit
def _reduce_kernel(ws1, ws2, out, nch1, nch2, Co, co_s, T, C, c_s, S, so_o, so_i, so_r, so_s,
                   BLOCK: tl.constexpr):
    """out[co, ci, r, s] = sum_c ws1[c, co, t, ci] + [co < co_s and ci < c_s] sum_c ws2[c, co, t, ci], t = r*S+s.

    ws1 is ``[nch1, Co, T, C]`` and ws2 ``[nch2, co_s, T, c_s]``, fp32; chunks are summed in order.
    """
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    size1 = Co * T * C
    mask = offs < size1
    co = offs // (T * C)
    tc = offs % (T * C)
    t = tc // C
    ci = tc % C
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for c in range(0, nch1):
        acc += tl.load(ws1 + c * size1 + offs, mask=mask, other=0.0)
    mask2 = mask & (co < co_s) & (ci < c_s)
    offs2 = co * (T * c_s) + t * c_s + ci
    size2 = co_s * T * c_s
    for c in range(0, nch2):
        acc += tl.load(ws2 + c * size2 + offs2, mask=mask2, other=0.0)
    dst = out + co * so_o + ci * so_i + (t // S) * so_r + (t % S) * so_s
    tl.store(dst, acc.to(out.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------------
# Launchers

REDUCE_BLOCK = 256 if INTERPRET else 1024

# Launches whose full problem has fewer input channels use FLAT tiles over (tap, channel) rather than one
# tap per tile, in both branches: the tiling is a constexpr of the one code path. When only c_in_s is
# below this, the small branch's tap-major tiles are partly masked, the cheaper loss than two code paths.
FLAT_BELOW = 32


def _n_tiles_host(taps, c, flat, bn):
    return cdiv(taps * c, bn) if flat else taps * cdiv(c, bn)


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


# Chunk lengths are multiples of every BK in the autotune space, so a chunk is whole K steps.
CHUNK_ALIGN = 64


def _splits(k1, k2, tiles1, tiles2, device):
    """(rows per K-chunk, chunks of the full branch, chunks of the small branch).

    One chunk length for both branches gives equal-work items: about two per SM, each at least 256 rows
    long. Every chunk is non-empty (an empty branch has none). Under the interpreter (cost per program,
    not per element) the longer branch gets two chunks, so tiny test shapes still exercise split-K.
    """
    if device.type != "cuda" or INTERPRET:
        kch = cdiv(max(k1, k2), 2)
    else:
        index = device.index if device.index is not None else torch.cuda.current_device()
        kch = max(256, cdiv(tiles1 * k1 + tiles2 * k2, 2 * _sm_count(index)))
    kch = max(CHUNK_ALIGN, cdiv(kch, CHUNK_ALIGN) * CHUNK_ALIGN)
    return kch, cdiv(k1, kch), cdiv(k2, kch)


# Tensors spanning this many elements or more get 64-bit offsets in wgrad's K loop. With 32-bit ones, an
# element the loop loads lies inside its tensor's span, and the partial sums on the way stay within a
# padding's worth of it (2**30 leaves room); masked-off elements (rows past K, taps in the padding) may wrap,
# but a masked load never dereferences them.
I64_FROM = 2 ** 30


def _span(size, stride) -> int:
    """Elements from a tensor's first to its last, + 1 (its storage extent)."""
    return 1 + sum((s - 1) * st for s, st in zip(size, stride)) if all(size) else 0


class _Plan(NamedTuple):
    """What a wgrad launch needs that depends only on sizes and strides (see ``_wgrad_plan``)."""
    dw_shape: tuple
    ws_shapes: tuple    # the fp32 split-K workspaces of the two branches
    dbw_shapes: tuple   # and of the bias
    flat: bool
    i64: bool           # 64-bit row offsets in the K loop (see I64_FROM)
    ints: tuple         # _wgrad_kernel's int arguments
    grid: Callable
    reduce: tuple       # (grid, ints) of the dW reduction
    reduce_bias: tuple  # and of the db one


def _check_geometry(x_size, dz_size, kernel_size, stride, padding, dilation, name):
    """Raise ValueError when dz's spatial size does not match the convolution of x (a caller bug)."""
    for d in range(2):
        want = conv_out_size(x_size[2 + d], kernel_size[d], stride[d], padding[d], dilation[d])
        if dz_size[2 + d] != want:
            raise ValueError(f"dz_{name} has spatial size {tuple(dz_size[2:])}, but the convolution of x_{name} "
                             f"{tuple(x_size[2:])} gives {want} along dim {2 + d}")


@functools.lru_cache(maxsize=PLANS)
def _wgrad_plan(xf_size, xf_stride, xs_size, xs_stride, dzf_size, dzs_size, kernel_size, stride, padding,
                dilation, device):
    """The launch arguments that depend only on sizes and strides, worked out once per layer geometry (tens
    of µs of Python per call otherwise). Raises ValueError as ``_check_geometry``."""
    _check_geometry(xf_size, dzf_size, kernel_size, stride, padding, dilation, "full")
    _check_geometry(xs_size, dzs_size, kernel_size, stride, padding, dilation, "small")
    (N1, C_in, H1, W1), (N2, c_in_s, H2, W2) = xf_size, xs_size
    C_out, c_out_s = dzf_size[1], dzs_size[1]
    R, S = kernel_size
    nominal = 32 if INTERPRET else 128  # tile edge used only to size the split
    k1, k2 = N1 * dzf_size[2] * dzf_size[3], N2 * dzs_size[2] * dzs_size[3]
    kch, nch1, nch2 = _splits(k1, k2, cdiv(C_out, nominal) * cdiv(R * S * C_in, nominal),
                              cdiv(c_out_s, nominal) * cdiv(R * S * c_in_s, nominal), device)
    flat = C_in < FLAT_BELOW
    i64 = max(_span(xf_size, xf_stride), _span(xs_size, xs_stride), math.prod(dzf_size), math.prod(dzs_size)) \
        >= I64_FROM
    ints = (N1, H1, W1, dzf_size[2], dzf_size[3], N2, H2, W2, dzs_size[2], dzs_size[3],
            C_in, c_in_s, C_out, c_out_s, R, S, *stride, *padding, *dilation, nch1, kch,
            *nhwc_order(xf_stride), *nhwc_order(xs_stride))

    def grid(meta):
        bm, bn = meta["BM"], meta["BN"]
        t1 = cdiv(C_out, bm) * _n_tiles_host(R * S, C_in, flat, bn)
        t2 = cdiv(c_out_s, bm) * _n_tiles_host(R * S, c_in_s, flat, bn)
        return (nch1 * t1 + nch2 * t2,)

    dw_shape = (C_out, C_in, R, S)  # channels_last: the reduction then writes it in order
    dw_strides = cl_strides(dw_shape)
    return _Plan(dw_shape, ((nch1, C_out, R * S * C_in), (nch2, c_out_s, R * S * c_in_s)),
                 ((nch1, C_out), (nch2, c_out_s)), flat, i64, ints, grid,
                 _reduce_args(nch1, nch2, C_out, c_out_s, R * S, C_in, c_in_s, S, dw_strides),
                 _reduce_args(nch1, nch2, C_out, c_out_s, 1, 1, 1, 1, (1, 0, 0, 0)))


def _reduce_args(nch1, nch2, co, co_s, taps, c, c_s, s, strides):
    """(grid, int arguments) of a ``_reduce_kernel`` launch."""
    return (cdiv(co * taps * c, REDUCE_BLOCK),), (nch1, nch2, co, co_s, taps, c, c_s, s, *strides)


_wgrad_launcher, _reduce_launcher = Relauncher(_wgrad_kernel), Relauncher(_reduce_kernel)


def _wgrad_launch(x_full, x_small, dz_full, dz_small, small_scale, kernel_size, stride, padding, dilation,
                  need_bias):
    """dW (and db when ``need_bias``, else None): the split-K launch, then the reductions."""
    xf, xs, dzf, dzs = channels_last(x_full), channels_last(x_small), channels_last(dz_full), channels_last(dz_small)
    dev, f32 = xf.device, torch.float32
    plan = _wgrad_plan(xf.shape, xf.stride(), xs.shape, xs.stride(), dzf.shape, dzs.shape, kernel_size, stride,
                       padding, dilation, dev)
    dw = _alloc.empty(plan.dw_shape, dtype=xf.dtype, device=dev, memory_format=CL)
    ws1, ws2 = (_alloc.empty(shape, dtype=f32, device=dev) for shape in plan.ws_shapes)
    db, dbw1, dbw2 = None, ws1, ws2  # the kernel touches dbw only with HAS_BIAS
    if need_bias:
        db = _alloc.empty(plan.dw_shape[:1], dtype=xf.dtype, device=dev)
        dbw1, dbw2 = (_alloc.empty(shape, dtype=f32, device=dev) for shape in plan.dbw_shapes)
    args = (xf, xs, dzf, dzs, ws1 if small_scale is None else small_scale, ws1, ws2, dbw1, dbw2, *plan.ints)
    consts = dict(FLAT=plan.flat, HAS_BIAS=need_bias, HAS_SCALE=small_scale is not None, UPCAST=UPCAST,
                  I64=plan.i64, PREC=dot_precision(xf.dtype))
    with on_device(xf):
        _wgrad_launcher.bind(plan.grid, args, consts)()
        grid, ints = plan.reduce
        _reduce_launcher.bind(grid, (ws1, ws2, dw, *ints), dict(BLOCK=REDUCE_BLOCK))()
        if need_bias:
            grid, ints = plan.reduce_bias
            _reduce_launcher.bind(grid, (dbw1, dbw2, db, *ints), dict(BLOCK=REDUCE_BLOCK))()
    return dw, db


def wgrad(x_full, x_small, dz_full, dz_small, small_scale, u_small, kernel_size, stride, padding, dilation,
          need_weight, need_bias):
    """The ``conv2d_wgrad`` schema (ops/conv/contract.py) without the op dispatcher: dW and db from one split-K
    launch and its reductions (db alone still runs it: frozen weights are rare), d small_scale as in the
    reference. Raises ValueError when dz's spatial size does not match the convolution geometry."""
    dw = db = None
    if need_weight or need_bias:
        dw, db = _wgrad_launch(x_full, x_small, dz_full, dz_small, dense(small_scale), tuple(kernel_size),
                               tuple(stride), tuple(padding), tuple(dilation), need_bias)
    ds = x_full.new_empty((0,)) if u_small is None or u_small.numel() == 0 else scale_grad(dz_small, u_small)
    return (dw if need_weight else x_full.new_empty((0,))), (x_full.new_empty((0,)) if db is None else db), ds
