"""Fused adjoined convolution, input gradient (dgrad), in Triton (DESIGN §1).

    dx_full  = dgrad(dz_full, W)
    dx_small = dgrad(dz_small * small_scale, W[:c_out_s, :c_in_s])

One launch, a grouped implicit GEMM over NHWC data: M = N·H·W, N = C_in, K = R·S·C_out.

Strided convolutions use the sub-pixel split (KERNEL-NOTES "dgrad"): the input rows are grouped into
``stride_h x stride_w`` classes by ``(h mod stride_h, w mod stride_w)``. Within a class the filter taps
that reach an output pixel form an arithmetic progression, the same for every row, so each program loops
over exactly the taps that contribute and no MACs are masked away. Each class is rounded up to
``ceil(H/stride_h) x ceil(W/stride_w)`` rows (masked), which wastes a few rows when the stride does not
divide the image.

Weight sharing works as in conv_fprop: with it on, a full-branch tile whose columns (input channels) lie
inside ``[:c_in_s]`` also computes the small tile of the same class and (M, N) index, and every weight
tile of the first ``c_out_s`` output channels feeds both accumulators.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import triton
import triton.language as tl

from . import _alloc
from ._conv_common import (GEMM_SPACE, INTERP_GEMM, UPCAST, channels_last, configs, dense, dot_precision, gemm_prune,
                           nhwc_strides, on_device, shared_a_tiles, swizzle)

# ----------------------------------------------------------------------------------------------------
# Kernel


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
def _dgrad_loop(acc, dzrow, wcol, i, j, ok, nmask, scale, a, b, r0, s0, ns, ntaps, cb_lo, cb_hi, C, P, Q,
                C_out, ph, pw, dh, dw, rstep, sstep, sh, sw, sdh, sdw, sdc, sw_o, sw_r, sw_s,
                HAS_SCALE: tl.constexpr, BK: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr):
    """One branch: acc += dz @ W over the class's ``ntaps`` taps and output-channel blocks [cb_lo, cb_hi).

    ``dzrow`` [BM] points at each row's image in dz, ``wcol`` [BN] at each input channel's filters;
    ``C`` bounds dz's channels. Tap t is (r0 + (t // ns) * rstep, s0 + (t % ns) * sstep); it reaches
    output pixel (i + (a + ph - r*dh) / sh, j + (b + pw - s*dw) / sw), the divisions being exact.
    """
    ncb = cb_hi - cb_lo
    for it in range(0, ntaps * ncb):
        tap = it // ncb
        tr = tap // ns
        r = r0 + tr * rstep
        s = s0 + (tap - tr * ns) * sstep
        offs_k = (cb_lo + it - tap * ncb) * BK + tl.arange(0, BK)
        p = i + (a + ph - r * dh) // sh
        q = j + (b + pw - s * dw) // sw
        valid = ok & (p >= 0) & (p < P) & (q >= 0) & (q < Q)
        kmask = offs_k < C
        x = tl.load(dzrow[:, None] + (p * sdh + q * sdw)[:, None] + offs_k[None, :] * sdc,
                    mask=valid[:, None] & kmask[None, :], other=0.0)
        if HAS_SCALE:
            sc = tl.load(scale + offs_k, mask=kmask, other=0.0).to(tl.float32)
            x = (x.to(tl.float32) * sc[None, :]).to(dzrow.dtype.element_ty)
        wt = tl.load(wcol[None, :] + (r * sw_r + s * sw_s) + offs_k[:, None] * sw_o,
                     mask=(offs_k < C_out)[:, None] & nmask[None, :], other=0.0)
        if UPCAST:
            x = x.to(tl.float32)
            wt = wt.to(tl.float32)
        acc = tl.dot(x, wt, acc, input_precision=PREC)
    return acc


@triton.jit
def _dgrad_pair_loop(acc1, acc2, dzrow1, i1, j1, ok1, dzrow2, i2, j2, ok2, wcol, nmask, scale, a, b,
                     r0, s0, ns, ntaps, ncb, P1, Q1, P2, Q2, C_out, c_out_s, ph, pw, dh, dw, rstep, sstep,
                     sh, sw, sf_h, sf_w, sf_c, ss_h, ss_w, ss_c, sw_o, sw_r, sw_s,
                     HAS_SCALE: tl.constexpr, BK: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr):
    """Both branches over the first ``ncb`` output-channel blocks with one weight load per step.

    dz_small is zero beyond c_out_s, so the weight rows the full branch needs there add nothing to acc2.
    """
    for it in range(0, ntaps * ncb):
        tap = it // ncb
        tr = tap // ns
        r = r0 + tr * rstep
        s = s0 + (tap - tr * ns) * sstep
        offs_k = (it - tap * ncb) * BK + tl.arange(0, BK)
        dp = (a + ph - r * dh) // sh
        dq = (b + pw - s * dw) // sw
        wt = tl.load(wcol[None, :] + (r * sw_r + s * sw_s) + offs_k[:, None] * sw_o,
                     mask=(offs_k < C_out)[:, None] & nmask[None, :], other=0.0)
        p = i1 + dp
        q = j1 + dq
        valid = ok1 & (p >= 0) & (p < P1) & (q >= 0) & (q < Q1)
        x1 = tl.load(dzrow1[:, None] + (p * sf_h + q * sf_w)[:, None] + offs_k[None, :] * sf_c,
                     mask=valid[:, None] & (offs_k < C_out)[None, :], other=0.0)
        p = i2 + dp
        q = j2 + dq
        valid = ok2 & (p >= 0) & (p < P2) & (q >= 0) & (q < Q2)
        kmask = offs_k < c_out_s
        x2 = tl.load(dzrow2[:, None] + (p * ss_h + q * ss_w)[:, None] + offs_k[None, :] * ss_c,
                     mask=valid[:, None] & kmask[None, :], other=0.0)
        if HAS_SCALE:
            sc = tl.load(scale + offs_k, mask=kmask, other=0.0).to(tl.float32)
            x2 = (x2.to(tl.float32) * sc[None, :]).to(dzrow2.dtype.element_ty)
        if UPCAST:
            x1 = x1.to(tl.float32)
            x2 = x2.to(tl.float32)
            wt = wt.to(tl.float32)
        acc1 = tl.dot(x1, wt, acc1, input_precision=PREC)
        acc2 = tl.dot(x2, wt, acc2, input_precision=PREC)
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
                      "sh", "sw", "SHARE", "HAS_SCALE", "PREC"])
@triton.jit
def _dgrad_kernel(dzf, dzs, w, scale, dxf, dxs,
                  N1, H1, W1, P1, Q1, N2, H2, W2, P2, Q2, C_in, c_in_s, C_out, c_out_s, R, S,
                  sh, sw, ph, pw, dh, dw, rstep, sstep,
                  sdf_n, sdf_h, sdf_w, sdf_c, sds_n, sds_h, sds_w, sds_c,
                  sxf_n, sxf_h, sxf_w, sxf_c, sxs_n, sxs_h, sxs_w, sxs_c,
                  sw_o, sw_i, sw_r, sw_s,
                  HAS_SCALE: tl.constexpr, SHARE: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr,
                  BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr):
    pid = tl.program_id(0)
    ncls = sh * sw
    nm1 = tl.cdiv(N1 * tl.cdiv(H1, sh) * tl.cdiv(W1, sw), BM)
    nn1 = tl.cdiv(C_in, BN)
    nm2 = tl.cdiv(N2 * tl.cdiv(H2, sh) * tl.cdiv(W2, sw), BM)
    nn2 = tl.cdiv(c_in_s, BN)
    ncb2 = tl.cdiv(c_out_s, BK)
    is_full = pid < ncls * nm1 * nn1
    if is_full:
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
    offs_n = tn * BN + tl.arange(0, BN)
    wcol = w + offs_n * sw_i
    if is_full:
        ok1, n1, h1, w1, i1, j1 = _class_rows(tm, a, b, N1, H1, W1, sh, sw, BM)
        dzrow1 = dzf + n1.to(tl.int64) * sdf_n
        nmask = offs_n < C_in
        acc1 = tl.zeros((BM, BN), dtype=tl.float32)
        cb_lo = tm * 0
        if SHARE:
            if (tm < nm2) & (tn < nn2):
                ok2, n2, h2, w2, i2, j2 = _class_rows(tm, a, b, N2, H2, W2, sh, sw, BM)
                acc2 = tl.zeros((BM, BN), dtype=tl.float32)
                acc1, acc2 = _dgrad_pair_loop(
                    acc1, acc2, dzrow1, i1, j1, ok1, dzs + n2.to(tl.int64) * sds_n, i2, j2, ok2, wcol, nmask,
                    scale, a, b, r0, s0, ns, nr * ns, ncb2, P1, Q1, P2, Q2, C_out, c_out_s, ph, pw, dh, dw,
                    rstep, sstep, sh, sw, sdf_h, sdf_w, sdf_c, sds_h, sds_w, sds_c, sw_o, sw_r, sw_s,
                    HAS_SCALE, BK, UPCAST, PREC)
                _dgrad_store(acc2, dxs, ok2, n2, h2, w2, offs_n, c_in_s, sxs_n, sxs_h, sxs_w, sxs_c)
                cb_lo = ncb2
        acc1 = _dgrad_loop(acc1, dzrow1, wcol, i1, j1, ok1, nmask, scale, a, b, r0, s0, ns, nr * ns, cb_lo,
                           tl.cdiv(C_out, BK), C_out, P1, Q1, C_out, ph, pw, dh, dw, rstep, sstep, sh, sw,
                           sdf_h, sdf_w, sdf_c, sw_o, sw_r, sw_s, False, BK, UPCAST, PREC)
        _dgrad_store(acc1, dxf, ok1, n1, h1, w1, offs_n, C_in, sxf_n, sxf_h, sxf_w, sxf_c)
    else:
        ok2, n2, h2, w2, i2, j2 = _class_rows(tm, a, b, N2, H2, W2, sh, sw, BM)
        acc2 = tl.zeros((BM, BN), dtype=tl.float32)
        acc2 = _dgrad_loop(acc2, dzs + n2.to(tl.int64) * sds_n, wcol, i2, j2, ok2, offs_n < C_in, scale, a, b,
                           r0, s0, ns, nr * ns, 0, ncb2, c_out_s, P2, Q2, C_out, ph, pw, dh, dw, rstep, sstep,
                           sh, sw, sds_h, sds_w, sds_c, sw_o, sw_r, sw_s, HAS_SCALE, BK, UPCAST, PREC)
        _dgrad_store(acc2, dxs, ok2, n2, h2, w2, offs_n, c_in_s, sxs_n, sxs_h, sxs_w, sxs_c)


def _num_programs(m1, m2, c_in, c_in_s, classes, share, meta):
    """Grid size: every full tile of every class, plus the small tiles no full tile owns."""
    bm, bn = meta["BM"], meta["BN"]
    nm1, nm2 = triton.cdiv(m1, bm), triton.cdiv(m2, bm)
    small_m = max(nm2 - nm1, 0) if share else nm2
    return classes * (nm1 * triton.cdiv(c_in, bn) + small_m * triton.cdiv(c_in_s, bn))


# ----------------------------------------------------------------------------------------------------
# Launcher


def _dgrad_launch(dz_full, dz_small, weight, small_scale, input_hw, c_in_s, stride, padding, dilation, share):
    dzf, dzs, w = channels_last(dz_full), channels_last(dz_small), channels_last(weight)
    C_out, C_in, R, S = w.shape
    H1, W1, H2, W2 = input_hw
    alloc = dict(dtype=dzf.dtype, device=dzf.device, memory_format=torch.channels_last)
    dxf = _alloc.empty((dzf.shape[0], C_in, H1, W1), **alloc)
    dxs = _alloc.empty((dzs.shape[0], c_in_s, H2, W2), **alloc)
    (sh, sw), (dh, dw) = stride, dilation
    # Rows per sub-pixel class, each class rounded up to ceil(H/sh) x ceil(W/sw).
    m1 = dzf.shape[0] * triton.cdiv(H1, sh) * triton.cdiv(W1, sw)
    m2 = dzs.shape[0] * triton.cdiv(H2, sh) * triton.cdiv(W2, sw)
    if m1 + m2 == 0:
        return dxf, dxs

    def grid(meta):
        return (_num_programs(m1, m2, C_in, c_in_s, sh * sw, share, meta),)

    _dgrad_kernel[grid](
        dzf, dzs, w, w if small_scale is None else small_scale, dxf, dxs,
        dzf.shape[0], H1, W1, dzf.shape[2], dzf.shape[3], dzs.shape[0], H2, W2, dzs.shape[2], dzs.shape[3],
        C_in, c_in_s, C_out, dzs.shape[1], R, S, sh, sw, *padding, dh, dw,
        sh // math.gcd(sh, dh), sw // math.gcd(sw, dw),
        *nhwc_strides(dzf), *nhwc_strides(dzs), *nhwc_strides(dxf), *nhwc_strides(dxs), *w.stride(),
        HAS_SCALE=small_scale is not None, SHARE=share, UPCAST=UPCAST, PREC=dot_precision(dzf.dtype))
    return dxf, dxs


# ----------------------------------------------------------------------------------------------------
# Op registration and reference


def dgrad_impl(dz_full, dz_small, weight, small_scale, input_hw, c_in_s, stride, padding, dilation, share_weights):
    """The body of :func:`conv2d_dgrad`, callable without the custom-op dispatch (eager fast path)."""
    with on_device(dz_full):
        return _dgrad_launch(dz_full, dz_small, weight, dense(small_scale), tuple(input_hw), c_in_s, tuple(stride),
                             tuple(padding), tuple(dilation), share_weights)


@torch.library.custom_op("adjoined::conv2d_dgrad", mutates_args=())
def conv2d_dgrad(dz_full: torch.Tensor, dz_small: torch.Tensor, weight: torch.Tensor,
                 small_scale: Optional[torch.Tensor], input_hw: list[int], c_in_s: int, stride: list[int],
                 padding: list[int], dilation: list[int], share_weights: bool
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Input gradients of both branches in one Triton launch (DESIGN §1).

    Args:
        dz_full ``[N1, C_out, P1, Q1]``, dz_small ``[N2, c_out_s, P2, Q2]`` (gradients of z_full, z_small),
        weight ``[C_out, C_in, kh, kw]``, small_scale ``[c_out_s]`` or None; one dtype and device.
        input_hw: ``[H1, W1, H2, W2]``, the spatial sizes of x_full and x_small. c_in_s: small input
        channels. stride, padding, dilation: pairs. share_weights: as in conv2d_fprop.

    Returns:
        ``(dx_full [N1, C_in, H1, W1], dx_small [N2, c_in_s, H2, W2])``, channels_last.
    """
    return dgrad_impl(dz_full, dz_small, weight, small_scale, input_hw, c_in_s, stride, padding, dilation,
                      share_weights)


@conv2d_dgrad.register_fake
def _(dz_full, dz_small, weight, small_scale, input_hw, c_in_s, stride, padding, dilation, share_weights):
    alloc = dict(dtype=dz_full.dtype, device=dz_full.device, memory_format=torch.channels_last)
    H1, W1, H2, W2 = input_hw
    return (torch.empty((dz_full.shape[0], weight.shape[1], H1, W1), **alloc),
            torch.empty((dz_small.shape[0], c_in_s, H2, W2), **alloc))


def conv2d_dgrad_ref(dz_full, dz_small, weight, small_scale, input_hw, c_in_s, stride, padding, dilation,
                     share_weights=True):
    """PyTorch reference of :func:`conv2d_dgrad` (torch.nn.grad.conv2d_input)."""
    H1, W1, H2, W2 = input_hw
    c_out_s = dz_small.shape[1]
    if small_scale is not None:
        dz_small = dz_small * small_scale.view(1, -1, 1, 1)
    dxf = torch.nn.grad.conv2d_input((dz_full.shape[0], weight.shape[1], H1, W1), weight, dz_full,
                                     stride, padding, dilation)
    dxs = torch.nn.grad.conv2d_input((dz_small.shape[0], c_in_s, H2, W2), weight[:c_out_s, :c_in_s], dz_small,
                                     stride, padding, dilation)
    return dxf, dxs
