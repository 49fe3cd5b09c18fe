"""Fused adjoined convolution, forward pass, in Triton (docs/maths.md, section 1; "Adjoined Networks", Eq. 1-2).

One launch computes both branches as a grouped implicit GEMM over NHWC data
(M = N·P·Q, N = C_out, K = R·S·C_in):

    z_full  = conv2d(x_full,  W,                    b)
    z_small = (conv2d(x_small, W[:c_out_s, :c_in_s]) + b[:c_out_s]) * small_scale

Programs ``[0, T_full)`` own one output tile of the full problem. With weight sharing on, a full tile
whose weight columns lie inside ``[:c_out_s]`` also owns the small tile with the same (M, N) index: each
weight tile it loads for input channels below ``c_in_s`` feeds both accumulators. The remaining programs
own small tiles no full tile could take (all of them when sharing is off).

Layout and tiling: docs/kernels.md, "Both branches in one launch".
"""
from __future__ import annotations

import functools

import triton
import triton.language as tl

from ... import _alloc
from .._layout import CL, cdiv, channels_last, cl_strides, dense, nhwc_order, on_device, out_shapes
from .gemm import (CACHE_TUNING, GEMM_SPACE, INTERP_GEMM, PLANS, UPCAST, configs, dot_precision, gemm_prune, pick4,
                   shared_a_tiles, swizzle)
from .launch import Relauncher

# ----------------------------------------------------------------------------------------------------
# Kernel
#
# One code path per program (no `if full: ... else: ...` around the loops): ptxas serialises every wgmma
# (advisory C7515) when an accumulator reaches an MMA through a control-flow merge, which both arms of a
# branch calling the same loop, or a runtime `if` feeding an accumulator into a later loop, produce. So
# each program first picks its problem's pointers, sizes and strides with scalar selects, then runs the
# paired loop (zero trips without a small partner), the single loop and one epilogue.


@triton.jit
def _out_rows(tile_m, M, P, Q, BM: tl.constexpr):
    """Output rows of an M-tile: (in-bounds mask, n, p, q)."""
    offs = tile_m * BM + tl.arange(0, BM)
    n = offs // (P * Q)
    pq = offs % (P * Q)
    return offs < M, n, pq // Q, pq % Q


@triton.jit
def _next_k(cb, r, s, cb_lo, cb_hi, S, ONE_TAP: tl.constexpr):
    """The K step after (channel block cb, tap r, s) in a loop over taps, channel blocks fastest.

    Carried from step to step instead of recomputed from the trip count: ``it // ncb`` and ``tap // S``
    are 32-bit divisions by runtime values, ~20 instructions each per K step on sm_90. A 1x1 filter
    (``ONE_TAP``) only counts channel blocks: the tap stays (0, 0).
    """
    cb += 1
    if not ONE_TAP:
        wrap = cb == cb_hi
        cb = tl.where(wrap, cb_lo, cb)
        s = tl.where(wrap, s + 1, s)
        wrap = s == S
        s = tl.where(wrap, 0, s)
        r = tl.where(wrap, r + 1, r)
    return cb, r, s


@triton.jit
def _x_tile(xrow, hb, wb, ok, r, s, offs_c, C, H, W, dh, dw, sxh, sxw, sxc):
    """im2col tile [BM, BK] of x for tap (r, s); zero outside the image and for channels >= C."""
    h = hb + r * dh
    w = wb + s * dw
    valid = ok & (h >= 0) & (h < H) & (w >= 0) & (w < W)
    return tl.load(xrow[:, None] + (h * sxh + w * sxw)[:, None] + offs_c[None, :] * sxc,
                   mask=valid[:, None] & (offs_c < C)[None, :], other=0.0)


@triton.jit
def _fprop_loop(acc, xrow, wcol, hb, wb, ok, nmask, cb_lo, cb_hi, C, H, W, C_in, R, S, dh, dw,
                sxh, sxw, sxc, sw_i, sw_r, sw_s,
                ONE_TAP: tl.constexpr, BK: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr):
    """One branch: acc += im2col(x) @ W over all taps and channel blocks [cb_lo, cb_hi).

    ``xrow`` [BM] points at each output row's image, ``wcol`` [BN] at each output channel's filter;
    ``C`` bounds x's channels. The loop is flat over (tap, channel block) so it pipelines as one loop.
    """
    cb = cb_lo
    r = cb_lo * 0
    s = cb_lo * 0
    for _ in range(0, R * S * (cb_hi - cb_lo)):
        offs_c = cb * BK + tl.arange(0, BK)
        a = _x_tile(xrow, hb, wb, ok, r, s, offs_c, C, H, W, dh, dw, sxh, sxw, sxc)
        b = tl.load(wcol[None, :] + (r * sw_r + s * sw_s) + offs_c[:, None] * sw_i,
                    mask=(offs_c < C_in)[:, None] & nmask[None, :], other=0.0)
        if UPCAST:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=PREC)
        cb, r, s = _next_k(cb, r, s, cb_lo, cb_hi, S, ONE_TAP)
    return acc


@triton.jit
def _fprop_pair_loop(acc1, acc2, xrow1, hb1, wb1, ok1, xrow2, hb2, wb2, ok2, wcol, nmask, ncb,
                     H1, W1, H2, W2, C_in, c_in_s, R, S, dh, dw,
                     sf_h, sf_w, sf_c, ss_h, ss_w, ss_c, sw_i, sw_r, sw_s,
                     ONE_TAP: tl.constexpr, BK: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr):
    """Both branches over the first ``ncb`` channel blocks: one weight load feeds both accumulators.

    The small input tile is zero for channels >= c_in_s, so the weight rows beyond the prefix that the
    full branch needs contribute nothing to the small accumulator.
    """
    cb = ncb * 0
    r = ncb * 0
    s = ncb * 0
    for _ in range(0, R * S * ncb):
        offs_c = cb * BK + tl.arange(0, BK)
        b = tl.load(wcol[None, :] + (r * sw_r + s * sw_s) + offs_c[:, None] * sw_i,
                    mask=(offs_c < C_in)[:, None] & nmask[None, :], other=0.0)
        a1 = _x_tile(xrow1, hb1, wb1, ok1, r, s, offs_c, C_in, H1, W1, dh, dw, sf_h, sf_w, sf_c)
        a2 = _x_tile(xrow2, hb2, wb2, ok2, r, s, offs_c, c_in_s, H2, W2, dh, dw, ss_h, ss_w, ss_c)
        if UPCAST:
            a1 = a1.to(tl.float32)
            a2 = a2.to(tl.float32)
            b = b.to(tl.float32)
        acc1 = tl.dot(a1, b, acc1, input_precision=PREC)
        acc2 = tl.dot(a2, b, acc2, input_precision=PREC)
        cb, r, s = _next_k(cb, r, s, 0, ncb, S, ONE_TAP)
    return acc1, acc2


@triton.jit
def _fprop_store(acc, z, u, bias, scale, small, ok, n, p, q, offs_n, C, sz_n, sz_h, sz_w, sz_c,
                 HAS_BIAS: tl.constexpr, HAS_SCALE: tl.constexpr, SAVE_PRE: tl.constexpr):
    """Epilogue: + bias; for a small tile (``small``, a runtime scalar) store the pre-scale value to ``u``
    and multiply by the scale; store to ``z``.

    ``small`` masks the scale load (1 for full tiles) and the ``u`` store instead of branching, so the
    full and the small problems share this one epilogue.
    """
    cmask = offs_n < C
    if HAS_BIAS:
        acc += tl.load(bias + offs_n, mask=cmask, other=0.0).to(tl.float32)[None, :]
    row = n.to(tl.int64) * sz_n + p * sz_h + q * sz_w
    offs = row[:, None] + offs_n[None, :] * sz_c
    mask = ok[:, None] & cmask[None, :]
    if SAVE_PRE:
        tl.store(u + offs, acc.to(u.dtype.element_ty), mask=mask & small)
    if HAS_SCALE:
        acc *= tl.load(scale + offs_n, mask=cmask & small, other=1.0).to(tl.float32)[None, :]
    tl.store(z + offs, acc.to(z.dtype.element_ty), mask=mask)


def _dims(a):
    return a["N1"] * a["P1"] * a["Q1"], a["C_out"], a["R"] * a["S"] * a["C_in"]


@triton.autotune(configs=configs(GEMM_SPACE, INTERP_GEMM),
                 prune_configs_by=gemm_prune(_dims, shared_a_tiles),
                 key=["N1", "P1", "Q1", "N2", "P2", "Q2", "C_in", "c_in_s", "C_out", "c_out_s", "R", "S",
                      "SHARE", "HAS_SCALE", "PREC"], cache_results=CACHE_TUNING)
@triton.jit
def _fprop_kernel(xf, xs, w, bias, scale, zf, zs, us,
                  N1, H1, W1, P1, Q1, N2, H2, W2, P2, Q2, C_in, c_in_s, C_out, c_out_s, R, S,
                  sh, sw, ph, pw, dh, dw,
                  sxf_n, sxf_h, sxf_w, sxf_c, sxs_n, sxs_h, sxs_w, sxs_c,
                  szf_n, szf_h, szf_w, szf_c, szs_n, szs_h, szs_w, szs_c,
                  sw_o, sw_i, sw_r, sw_s,
                  HAS_BIAS: tl.constexpr, HAS_SCALE: tl.constexpr, SAVE_PRE: tl.constexpr,
                  SHARE: tl.constexpr, ONE_TAP: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr,
                  BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr):
    pid = tl.program_id(0)
    nm1 = tl.cdiv(N1 * P1 * Q1, BM)
    nn1 = tl.cdiv(C_out, BN)
    nm2 = tl.cdiv(N2 * P2 * Q2, BM)
    nn2 = tl.cdiv(c_out_s, BN)
    ncb2 = tl.cdiv(c_in_s, BK)
    # Which tile: scalars only in this branch (no accumulator crosses it).
    full = pid < nm1 * nn1
    if full:
        tm, tn = swizzle(pid, nm1, nn1, GROUP_M)
    else:
        t = pid - nm1 * nn1
        tm = t // nn2
        tn = t - tm * nn2
        if SHARE:
            tm += nm1  # small tiles below nm1 were paired with a full tile
    small = pid >= nm1 * nn1
    # The program's own problem, by scalar selects.
    x = tl.where(full, xf, xs)
    z = tl.where(full, zf, zs)
    H = tl.where(full, H1, H2)
    W = tl.where(full, W1, W2)
    P = tl.where(full, P1, P2)
    Q = tl.where(full, Q1, Q2)
    M = tl.where(full, N1 * P1 * Q1, N2 * P2 * Q2)
    C_x = tl.where(full, C_in, c_in_s)
    C_z = tl.where(full, C_out, c_out_s)
    ncb = tl.where(full, tl.cdiv(C_in, BK), ncb2)
    sx_n, sx_h, sx_w, sx_c = pick4(full, sxf_n, sxf_h, sxf_w, sxf_c, sxs_n, sxs_h, sxs_w, sxs_c)
    sz_n, sz_h, sz_w, sz_c = pick4(full, szf_n, szf_h, szf_w, szf_c, szs_n, szs_h, szs_w, szs_c)

    offs_n = tn * BN + tl.arange(0, BN)
    wcol = w + offs_n * sw_o
    nmask = offs_n < C_out
    ok, n, p, q = _out_rows(tm, M, P, Q, BM)
    xrow = x + n.to(tl.int64) * sx_n
    hb = p * sh - ph
    wb = q * sw - pw
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    cb_lo = tm * 0
    if SHARE:
        # A full tile inside [:c_out_s] also owns the small tile with its (M, N) index.
        paired = full & (tm < nm2) & (tn < nn2)
        npair = tl.where(paired, ncb2, 0)
        ok2, n2, p2, q2 = _out_rows(tm, N2 * P2 * Q2, P2, Q2, BM)
        acc2 = tl.zeros((BM, BN), dtype=tl.float32)
        acc, acc2 = _fprop_pair_loop(
            acc, acc2, xrow, hb, wb, ok, xs + n2.to(tl.int64) * sxs_n, p2 * sh - ph, q2 * sw - pw, ok2,
            wcol, nmask, npair, H, W, H2, W2, C_x, c_in_s, R, S, dh, dw, sx_h, sx_w, sx_c,
            sxs_h, sxs_w, sxs_c, sw_i, sw_r, sw_s, ONE_TAP, BK, UPCAST, PREC)
        if paired:  # stores only: no accumulator is defined under this branch
            _fprop_store(acc2, zs, us, bias, scale, paired, ok2, n2, p2, q2, offs_n, c_out_s,
                         szs_n, szs_h, szs_w, szs_c, HAS_BIAS, HAS_SCALE, SAVE_PRE)
        cb_lo = npair
    acc = _fprop_loop(acc, xrow, wcol, hb, wb, ok, nmask, cb_lo, ncb, C_x, H, W, C_in, R, S, dh, dw,
                      sx_h, sx_w, sx_c, sw_i, sw_r, sw_s, ONE_TAP, BK, UPCAST, PREC)
    _fprop_store(acc, z, us, bias, scale, small, ok, n, p, q, offs_n, C_z, sz_n, sz_h, sz_w, sz_c,
                 HAS_BIAS, HAS_SCALE, SAVE_PRE)


def _num_programs(m1, m2, c_out, c_out_s, share, meta):
    """Grid size: every full tile, plus the small tiles that no full tile owns."""
    bm, bn = meta["BM"], meta["BN"]
    nm1, nm2 = cdiv(m1, bm), cdiv(m2, bm)
    small_m = max(nm2 - nm1, 0) if share else nm2
    return nm1 * cdiv(c_out, bn) + small_m * cdiv(c_out_s, bn)


# ----------------------------------------------------------------------------------------------------
# Launcher


@functools.lru_cache(maxsize=PLANS)
def _fprop_plan(xf_size, xf_stride, xs_size, xs_stride, w_size, w_stride, stride, padding, dilation, c_out_s,
                share):
    """The part of a launch that depends only on sizes and strides, worked out once per layer geometry
    (tens of µs of Python per call otherwise): ``(z_full shape, z_small shape, the kernel's int arguments,
    grid)``; the last two are None when both outputs are empty."""
    full_shape, small_shape = out_shapes(xf_size, xs_size, w_size, stride, padding, dilation, c_out_s)
    m1 = full_shape[0] * full_shape[2] * full_shape[3]
    m2 = small_shape[0] * small_shape[2] * small_shape[3]
    if m1 + m2 == 0:
        return full_shape, small_shape, None, None
    C_out, C_in, R, S = w_size
    ints = (xf_size[0], xf_size[2], xf_size[3], full_shape[2], full_shape[3],
            xs_size[0], xs_size[2], xs_size[3], small_shape[2], small_shape[3],
            C_in, xs_size[1], C_out, c_out_s, R, S, *stride, *padding, *dilation,
            *nhwc_order(xf_stride), *nhwc_order(xs_stride), *nhwc_order(cl_strides(full_shape)),
            *nhwc_order(cl_strides(small_shape)), *w_stride)

    def grid(meta):
        return (_num_programs(m1, m2, C_out, c_out_s, share, meta),)

    return full_shape, small_shape, ints, grid


_fprop_launcher = Relauncher(_fprop_kernel)


def fprop(x_full, x_small, weight, bias, small_scale, stride, padding, dilation, c_out_s, save_pre, share_weights):
    """The ``conv2d_fprop`` schema (ops/conv/contract.py) on one Triton launch, without the op dispatcher."""
    xf, xs, w = channels_last(x_full), channels_last(x_small), channels_last(weight)
    bias, small_scale = dense(bias), dense(small_scale)
    full_shape, small_shape, ints, grid = _fprop_plan(xf.shape, xf.stride(), xs.shape, xs.stride(), w.shape,
                                                      w.stride(), tuple(stride), tuple(padding), tuple(dilation),
                                                      c_out_s, share_weights)
    alloc = dict(dtype=xf.dtype, device=xf.device, memory_format=CL)
    zf, zs = _alloc.empty(full_shape, **alloc), _alloc.empty(small_shape, **alloc)
    us = _alloc.empty(small_shape, **alloc) if save_pre else _alloc.empty((0,), dtype=xf.dtype, device=xf.device)
    if ints is None:
        return zf, zs, us
    args = (xf, xs, w, w if bias is None else bias, w if small_scale is None else small_scale, zf, zs,
            us if save_pre else zs, *ints)
    consts = dict(HAS_BIAS=bias is not None, HAS_SCALE=small_scale is not None, SAVE_PRE=save_pre,
                  SHARE=share_weights, ONE_TAP=w.shape[2] * w.shape[3] == 1, UPCAST=UPCAST,
                  PREC=dot_precision(xf.dtype))
    with on_device(xf):  # the launch goes to the current device
        _fprop_launcher.bind(grid, args, consts)()
    return zf, zs, us


_fprop_launch = fprop  # the name tools/conv_sass_report.py records launches through
