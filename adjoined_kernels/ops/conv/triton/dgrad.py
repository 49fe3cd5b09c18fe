"""Fused adjoined convolution, input gradient (dgrad), in Triton (docs/maths.md, section 1, "Backward").

    dx_full  = dgrad(dz_full, W)
    dx_small = dgrad(dz_small * small_scale, W[:c_out_s, :c_in_s])

One launch, a grouped implicit GEMM over NHWC data: M = N·H·W, N = C_in, K = R·S·C_out.

Strided convolutions use the sub-pixel split (docs/kernels.md, "dgrad with stride"): the input rows are grouped into
``stride_h x stride_w`` classes by ``(h mod stride_h, w mod stride_w)``. Within a class the filter taps
that reach an output pixel form an arithmetic progression, the same for every row, so each program loops
over exactly the taps that contribute and no MACs are masked away. Each class is rounded up to
``ceil(H/stride_h) x ceil(W/stride_w)`` rows (masked), which wastes a few rows when the stride does not
divide the image.

Weight sharing works as in fprop.py: with it on, a full-branch tile whose columns (input channels) lie
inside ``[:c_in_s]`` also computes the small tile of the same class and (M, N) index, and every weight
tile of the first ``c_out_s`` output channels feeds both accumulators.
"""
from __future__ import annotations

import functools
import math

import triton
import triton.language as tl

from ... import _alloc
from .._layout import CL, cdiv, channels_last, cl_strides, dense, nhwc_order, on_device
from .gemm import (CACHE_TUNING, GEMM_SPACE, INTERP_GEMM, PLANS, UPCAST, configs, dot_precision, gemm_prune, pick4,
                   shared_a_tiles, swizzle)
from .launch import Relauncher

# ----------------------------------------------------------------------------------------------------
# Kernel
#
# One code path per program, as in fprop.py (and for the same reason: ptxas serialises every wgmma,
# advisory C7515, when an accumulator reaches an MMA through a control-flow merge): each program picks its
# problem's pointers, sizes and strides with scalar selects, then runs the paired loop (zero trips
# without a small partner), the single loop and one store.


@triton.jit
def _first_tap(a, pad, dil, stride, step, K):
    """Taps k of one dimension that map input class ``a`` onto an output pixel: k0, k0+step, ... < K.

    The condition is ``(a + pad - k*dil) % stride == 0``; its solutions repeat with period ``step =
    stride / gcd(stride, dil)``. Returns (k0, count); count is 0 when no tap fits.
    """
    none = K + step
    k0 = a * 0 + none
    for t in range(0, step):
        # Offset by a multiple of stride so that % sees a non-negative number (C and Python agree then).
        hit = ((a + pad - t * dil + stride * dil * step) % stride == 0) & (k0 == none)
        k0 = tl.where(hit, t, k0)
    count = tl.where(k0 < K, (K - k0 + step - 1) // step, 0)
    return k0, count


@triton.jit
def _class_rows(tile_m, a, b, N, H, W, sh, sw, BM: tl.constexpr):
    """Input rows of an M-tile of sub-pixel class (a, b): (in-bounds mask, n, h, w, i, j), h = a + i*sh."""
    Hc = tl.cdiv(H, sh)
    Wc = tl.cdiv(W, sw)
    offs = tile_m * BM + tl.arange(0, BM)
    n = offs // (Hc * Wc)
    ij = offs % (Hc * Wc)
    i = ij // Wc
    j = ij % Wc
    h = a + i * sh
    w = b + j * sw
    ok = (offs < N * Hc * Wc) & (h < H) & (w < W)
    return ok, n, h, w, i, j


@triton.jit
def _next_k(cb, ts, r, s, dp, dq, cb_lo, cb_hi, ns, s0, dq0, rstep, sstep, dp_step, dq_step,
            ONE_TAP: tl.constexpr):
    """The K step after (output-channel block cb, tap r, s) over the class's taps, channel blocks fastest.

    ``ts`` counts the s taps (``ns`` of them); (dp, dq) = ((a + ph - r*dh) / sh, (b + pw - s*dw) / sw),
    the output-pixel offset of the tap, moves by a constant (``dp_step``, ``dq_step``: exact) per tap.
    Carried from step to step instead of recomputed from the trip count: ``it // ncb``, ``tap // ns`` and
    the two divisions by the stride are 32-bit divisions by runtime values, ~20 instructions each per K
    step on sm_90. A 1x1 filter (``ONE_TAP``: at most one tap per class) only counts channel blocks.
    """
    cb += 1
    if not ONE_TAP:
        wrap = cb == cb_hi
        cb = tl.where(wrap, cb_lo, cb)
        ts = tl.where(wrap, ts + 1, ts)
        s = tl.where(wrap, s + sstep, s)
        dq = tl.where(wrap, dq - dq_step, dq)
        wrap = ts == ns
        ts = tl.where(wrap, 0, ts)
        s = tl.where(wrap, s0, s)
        dq = tl.where(wrap, dq0, dq)
        r = tl.where(wrap, r + rstep, r)
        dp = tl.where(wrap, dp - dp_step, dp)
    return cb, ts, r, s, dp, dq


@triton.jit
def _dz_tile(dzrow, i, j, ok, dp, dq, offs_k, C, P, Q, sdh, sdw, sdc):
    """Tile [BM, BK] of dz at output pixels (i + dp, j + dq); zero outside dz and for channels >= C."""
    p = i + dp
    q = j + dq
    valid = ok & (p >= 0) & (p < P) & (q >= 0) & (q < Q)
    return tl.load(dzrow[:, None] + (p * sdh + q * sdw)[:, None] + offs_k[None, :] * sdc,
                   mask=valid[:, None] & (offs_k < C)[None, :], other=0.0)


@triton.jit
def _dgrad_loop(acc, dzrow, wcol, i, j, ok, nmask, r0, s0, dp0, dq0, ns, ntaps, cb_lo, cb_hi,
                C, P, Q, C_out, rstep, sstep, dp_step, dq_step, sdh, sdw, sdc, sw_o, sw_r, sw_s,
                ONE_TAP: tl.constexpr, BK: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr):
    """One branch: acc += dz @ W over the class's ``ntaps`` taps and output-channel blocks [cb_lo, cb_hi).

    ``dzrow`` [BM] points at each row's image in dz, ``wcol`` [BN] at each input channel's filters;
    ``C`` bounds dz's channels. Taps run r = r0, r0 + rstep, ... (outer) and s = s0, s0 + sstep, ...
    (``ns`` of them); tap (r, s) reaches output pixel (i + dp, j + dq), dp starting at ``dp0`` and
    moving by ``-dp_step`` per r step (likewise dq).
    """
    cb = cb_lo
    ts = cb_lo * 0
    r = r0
    s = s0
    dp = dp0
    dq = dq0
    for _ in range(0, ntaps * (cb_hi - cb_lo)):
        offs_k = cb * BK + tl.arange(0, BK)
        x = _dz_tile(dzrow, i, j, ok, dp, dq, offs_k, C, P, Q, sdh, sdw, sdc)
        wt = tl.load(wcol[None, :] + (r * sw_r + s * sw_s) + offs_k[:, None] * sw_o,
                     mask=(offs_k < C_out)[:, None] & nmask[None, :], other=0.0)
        if UPCAST:
            x = x.to(tl.float32)
            wt = wt.to(tl.float32)
        acc = tl.dot(x, wt, acc, input_precision=PREC)
        cb, ts, r, s, dp, dq = _next_k(cb, ts, r, s, dp, dq, cb_lo, cb_hi, ns, s0, dq0, rstep, sstep,
                                       dp_step, dq_step, ONE_TAP)
    return acc


@triton.jit
def _dgrad_pair_loop(acc1, acc2, dzrow1, i1, j1, ok1, dzrow2, i2, j2, ok2, wcol, nmask,
                     r0, s0, dp0, dq0, ns, ntaps, ncb, P1, Q1, P2, Q2, C_out, c_out_s, rstep, sstep,
                     dp_step, dq_step, sf_h, sf_w, sf_c, ss_h, ss_w, ss_c, sw_o, sw_r, sw_s,
                     ONE_TAP: tl.constexpr, BK: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr):
    """Both branches over the first ``ncb`` output-channel blocks with one weight load per step.

    dz_small is zero beyond c_out_s, so the weight rows the full branch needs there add nothing to acc2.
    """
    cb = ncb * 0
    ts = ncb * 0
    r = r0
    s = s0
    dp = dp0
    dq = dq0
    for _ in range(0, ntaps * ncb):
        offs_k = cb * BK + tl.arange(0, BK)
        wt = tl.load(wcol[None, :] + (r * sw_r + s * sw_s) + offs_k[:, None] * sw_o,
                     mask=(offs_k < C_out)[:, None] & nmask[None, :], other=0.0)
        x1 = _dz_tile(dzrow1, i1, j1, ok1, dp, dq, offs_k, C_out, P1, Q1, sf_h, sf_w, sf_c)
        x2 = _dz_tile(dzrow2, i2, j2, ok2, dp, dq, offs_k, c_out_s, P2, Q2, ss_h, ss_w, ss_c)
        if UPCAST:
            x1 = x1.to(tl.float32)
            x2 = x2.to(tl.float32)
            wt = wt.to(tl.float32)
        acc1 = tl.dot(x1, wt, acc1, input_precision=PREC)
        acc2 = tl.dot(x2, wt, acc2, input_precision=PREC)
        cb, ts, r, s, dp, dq = _next_k(cb, ts, r, s, dp, dq, 0, ncb, ns, s0, dq0, rstep, sstep,
                                       dp_step, dq_step, ONE_TAP)
    return acc1, acc2


@triton.jit
def _dgrad_store(acc, dx, ok, n, h, w, offs_n, C, sn, sh, sw, sc):
    row = n.to(tl.int64) * sn + h * sh + w * sw
    mask = ok[:, None] & (offs_n < C)[None, :]
    tl.store(dx + row[:, None] + offs_n[None, :] * sc, acc.to(dx.dtype.element_ty), mask=mask)


def _dims(a):
    return a["N1"] * a["H1"] * a["W1"], a["C_in"], a["R"] * a["S"] * a["C_out"]


@triton.autotune(configs=configs(GEMM_SPACE, INTERP_GEMM),
                 prune_configs_by=gemm_prune(_dims, shared_a_tiles),
                 key=["N1", "H1", "W1", "N2", "H2", "W2", "C_in", "c_in_s", "C_out", "c_out_s", "R", "S",
                      "sh", "sw", "SHARE", "PREC"], cache_results=CACHE_TUNING)
@triton.jit
def _dgrad_kernel(dzf, dzs, w, dxf, dxs,
                  N1, H1, W1, P1, Q1, N2, H2, W2, P2, Q2, C_in, c_in_s, C_out, c_out_s, R, S,
                  sh, sw, ph, pw, dh, dw, rstep, sstep,
                  sdf_n, sdf_h, sdf_w, sdf_c, sds_n, sds_h, sds_w, sds_c,
                  sxf_n, sxf_h, sxf_w, sxf_c, sxs_n, sxs_h, sxs_w, sxs_c,
                  sw_o, sw_i, sw_r, sw_s,
                  SHARE: tl.constexpr, ONE_TAP: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr,
                  BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr):
    pid = tl.program_id(0)
    ncls = sh * sw
    nm1 = tl.cdiv(N1 * tl.cdiv(H1, sh) * tl.cdiv(W1, sw), BM)
    nn1 = tl.cdiv(C_in, BN)
    nm2 = tl.cdiv(N2 * tl.cdiv(H2, sh) * tl.cdiv(W2, sw), BM)
    nn2 = tl.cdiv(c_in_s, BN)
    ncb2 = tl.cdiv(c_out_s, BK)
    # Which class and tile: scalars only in this branch (no accumulator crosses it).
    full = pid < ncls * nm1 * nn1
    if full:
        cls = pid // (nm1 * nn1)
        tm, tn = swizzle(pid - cls * nm1 * nn1, nm1, nn1, GROUP_M)
    else:
        t = pid - ncls * nm1 * nn1
        nm2_own = nm2
        if SHARE:
            nm2_own = tl.maximum(nm2 - nm1, 0)  # tiles below nm1 were paired with a full tile
        cls = t // (nm2_own * nn2)
        t = t - cls * nm2_own * nn2
        tm = t // nn2
        tn = t - tm * nn2
        if SHARE:
            tm += nm1
    a = cls // sw
    b = cls - a * sw
    r0, nr = _first_tap(a, ph, dh, sh, rstep, R)
    s0, ns = _first_tap(b, pw, dw, sw, sstep, S)
    # Output-pixel offset of the first tap and its change per tap step (all exact divisions).
    dp0 = (a + ph - r0 * dh) // sh
    dq0 = (b + pw - s0 * dw) // sw
    dp_step = rstep * dh // sh
    dq_step = sstep * dw // sw
    # The program's own problem, by scalar selects.
    dz = tl.where(full, dzf, dzs)
    dx = tl.where(full, dxf, dxs)
    Nx = tl.where(full, N1, N2)
    H = tl.where(full, H1, H2)
    W = tl.where(full, W1, W2)
    P = tl.where(full, P1, P2)
    Q = tl.where(full, Q1, Q2)
    C_dz = tl.where(full, C_out, c_out_s)
    C_dx = tl.where(full, C_in, c_in_s)
    ncb = tl.where(full, tl.cdiv(C_out, BK), ncb2)
    sd_n, sd_h, sd_w, sd_c = pick4(full, sdf_n, sdf_h, sdf_w, sdf_c, sds_n, sds_h, sds_w, sds_c)
    sx_n, sx_h, sx_w, sx_c = pick4(full, sxf_n, sxf_h, sxf_w, sxf_c, sxs_n, sxs_h, sxs_w, sxs_c)

    offs_n = tn * BN + tl.arange(0, BN)
    wcol = w + offs_n * sw_i
    nmask = offs_n < C_in
    ok, n, h, w_, i, j = _class_rows(tm, a, b, Nx, H, W, sh, sw, BM)
    dzrow = dz + n.to(tl.int64) * sd_n
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    cb_lo = tm * 0
    if SHARE:
        # A full tile inside [:c_in_s] also owns the small tile of its class and (M, N) index.
        paired = full & (tm < nm2) & (tn < nn2)
        npair = tl.where(paired, ncb2, 0)
        ok2, n2, h2, w2, i2, j2 = _class_rows(tm, a, b, N2, H2, W2, sh, sw, BM)
        acc2 = tl.zeros((BM, BN), dtype=tl.float32)
        acc, acc2 = _dgrad_pair_loop(
            acc, acc2, dzrow, i, j, ok, dzs + n2.to(tl.int64) * sds_n, i2, j2, ok2, wcol, nmask,
            r0, s0, dp0, dq0, ns, nr * ns, npair, P, Q, P2, Q2, C_dz, c_out_s, rstep, sstep, dp_step, dq_step,
            sd_h, sd_w, sd_c, sds_h, sds_w, sds_c, sw_o, sw_r, sw_s, ONE_TAP, BK, UPCAST, PREC)
        if paired:  # a store only: no accumulator is defined under this branch
            _dgrad_store(acc2, dxs, ok2, n2, h2, w2, offs_n, c_in_s, sxs_n, sxs_h, sxs_w, sxs_c)
        cb_lo = npair
    acc = _dgrad_loop(acc, dzrow, wcol, i, j, ok, nmask, r0, s0, dp0, dq0, ns, nr * ns, cb_lo, ncb,
                      C_dz, P, Q, C_out, rstep, sstep, dp_step, dq_step, sd_h, sd_w, sd_c, sw_o, sw_r, sw_s,
                      ONE_TAP, BK, UPCAST, PREC)
    _dgrad_store(acc, dx, ok, n, h, w_, offs_n, C_dx, sx_n, sx_h, sx_w, sx_c)


def _num_programs(m1, m2, c_in, c_in_s, classes, share, meta):
    """Grid size: every full tile of every class, plus the small tiles no full tile owns."""
    bm, bn = meta["BM"], meta["BN"]
    nm1, nm2 = cdiv(m1, bm), cdiv(m2, bm)
    small_m = max(nm2 - nm1, 0) if share else nm2
    return classes * (nm1 * cdiv(c_in, bn) + small_m * cdiv(c_in_s, bn))


# ----------------------------------------------------------------------------------------------------
# Launcher


@functools.lru_cache(maxsize=PLANS)
def _dgrad_plan(dzf_size, dzf_stride, dzs_size, dzs_stride, w_size, w_stride, input_hw, c_in_s, stride, padding,
                dilation, share):
    """The part of a launch that depends only on sizes and strides, worked out once per layer geometry:
    ``(dx_full shape, dx_small shape, the kernel's int arguments, grid)``; the last two are None when both
    outputs are empty."""
    C_out, C_in, R, S = w_size
    H1, W1, H2, W2 = input_hw
    full_shape, small_shape = (dzf_size[0], C_in, H1, W1), (dzs_size[0], c_in_s, H2, W2)
    (sh, sw), (dh, dw) = stride, dilation
    # Rows per sub-pixel class, each class rounded up to ceil(H/sh) x ceil(W/sw).
    m1 = dzf_size[0] * cdiv(H1, sh) * cdiv(W1, sw)
    m2 = dzs_size[0] * cdiv(H2, sh) * cdiv(W2, sw)
    if m1 + m2 == 0:
        return full_shape, small_shape, None, None
    ints = (dzf_size[0], H1, W1, dzf_size[2], dzf_size[3], dzs_size[0], H2, W2, dzs_size[2], dzs_size[3],
            C_in, c_in_s, C_out, dzs_size[1], R, S, sh, sw, *padding, dh, dw,
            sh // math.gcd(sh, dh), sw // math.gcd(sw, dw),
            *nhwc_order(dzf_stride), *nhwc_order(dzs_stride), *nhwc_order(cl_strides(full_shape)),
            *nhwc_order(cl_strides(small_shape)), *w_stride)

    def grid(meta):
        return (_num_programs(m1, m2, C_in, c_in_s, sh * sw, share, meta),)

    return full_shape, small_shape, ints, grid


_dgrad_launcher = Relauncher(_dgrad_kernel)


def _dgrad_launch(dz_full, dz_small, weight, small_scale, input_hw, c_in_s, stride, padding, dilation, share):
    """Both input gradients; ``input_hw`` is ``(H1, W1, H2, W2)``."""
    dzf, dzs, w = channels_last(dz_full), channels_last(dz_small), channels_last(weight)
    if small_scale is not None:
        # The scale runs along dgrad's K (output channels), so it cannot be an epilogue; inside the loop it
        # sat on the MMA operand path, where ptxas serialised the wgmmas (C7515). One elementwise pass over
        # dz_small instead, rounded to dz's dtype as the reference does.
        dzs = dzs * small_scale.view(1, -1, 1, 1)
    full_shape, small_shape, ints, grid = _dgrad_plan(dzf.shape, dzf.stride(), dzs.shape, dzs.stride(), w.shape,
                                                      w.stride(), input_hw, c_in_s, stride, padding, dilation,
                                                      share)
    alloc = dict(dtype=dzf.dtype, device=dzf.device, memory_format=CL)
    dxf, dxs = _alloc.empty(full_shape, **alloc), _alloc.empty(small_shape, **alloc)
    if ints is None:
        return dxf, dxs
    consts = dict(SHARE=share, ONE_TAP=w.shape[2] * w.shape[3] == 1, UPCAST=UPCAST, PREC=dot_precision(dzf.dtype))
    with on_device(dzf):
        _dgrad_launcher.bind(grid, (dzf, dzs, w, dxf, dxs, *ints), consts)()
    return dxf, dxs


def dgrad(dz_full, dz_small, weight, small_scale, full_hw, small_hw, c_in_s, stride, padding, dilation,
          share_weights):
    """The ``conv2d_dgrad`` schema (ops/conv/contract.py) on one Triton launch, without the op dispatcher."""
    return _dgrad_launch(dz_full, dz_small, weight, dense(small_scale), (*full_hw, *small_hw), c_in_s,
                         tuple(stride), tuple(padding), tuple(dilation), share_weights)
