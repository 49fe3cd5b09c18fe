"""Fused adjoined convolution, forward pass, in Triton (DESIGN §1; seeds/000 Eq. 1-2).

One launch computes both branches as a grouped implicit GEMM over NHWC data
(M = N·P·Q, N = C_out, K = R·S·C_in):

    z_full  = conv2d(x_full,  W,                    b)
    z_small = (conv2d(x_small, W[:c_out_s, :c_in_s]) + b[:c_out_s]) * small_scale

Programs ``[0, T_full)`` own one output tile of the full problem. With weight sharing on, a full tile
whose weight columns lie inside ``[:c_out_s]`` also owns the small tile with the same (M, N) index: each
weight tile it loads for input channels below ``c_in_s`` feeds both accumulators. The remaining programs
own small tiles no full tile could take (all of them when sharing is off).

This file also holds the autograd glue (the backward calls conv_dgrad / conv_wgrad) and the public
wrapper :func:`adjoined_conv2d_triton`.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from . import _alloc
from ._conv_common import (CACHE_TUNING, GEMM_SPACE, INTERP_GEMM, PLANS, UPCAST, cdiv, channels_last, cl_strides,
                           configs, conv_out_size, dense, dot_precision, gemm_prune, nhwc_order, on_device,
                           restore_format, shared_a_tiles, pick4, swizzle)
from ._launch import Relauncher
from .conv_dgrad import conv2d_dgrad, dgrad_impl
from .conv_wgrad import conv2d_wgrad, wgrad_impl

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


def _out_shapes(xf_size, xs_size, w_size, stride, padding, dilation, c_out_s):
    kh, kw = w_size[2:]
    sizes = []
    for size, c in ((xf_size, w_size[0]), (xs_size, c_out_s)):
        p = conv_out_size(size[2], kh, stride[0], padding[0], dilation[0])
        q = conv_out_size(size[3], kw, stride[1], padding[1], dilation[1])
        sizes.append((size[0], c, p, q))
    return sizes


@functools.lru_cache(maxsize=PLANS)
def _fprop_plan(xf_size, xf_stride, xs_size, xs_stride, w_size, w_stride, stride, padding, dilation, c_out_s,
                share):
    """The part of a launch that depends only on sizes and strides, worked out once per layer geometry
    (tens of µs of Python per call otherwise): ``(z_full shape, z_small shape, the kernel's int arguments,
    grid)``; the last two are None when both outputs are empty."""
    full_shape, small_shape = _out_shapes(xf_size, xs_size, w_size, stride, padding, dilation, c_out_s)
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


def _fprop_launch(x_full, x_small, weight, bias, small_scale, stride, padding, dilation, c_out_s,
                  save_pre, share_weights):
    xf, xs, w = channels_last(x_full), channels_last(x_small), channels_last(weight)
    full_shape, small_shape, ints, grid = _fprop_plan(xf.shape, xf.stride(), xs.shape, xs.stride(), w.shape,
                                                      w.stride(), stride, padding, dilation, c_out_s,
                                                      share_weights)
    alloc = dict(dtype=xf.dtype, device=xf.device, memory_format=torch.channels_last)
    zf, zs = _alloc.empty(full_shape, **alloc), _alloc.empty(small_shape, **alloc)
    us = _alloc.empty(small_shape, **alloc) if save_pre else _alloc.empty((0,), dtype=xf.dtype, device=xf.device)
    if ints is None:
        return zf, zs, us
    _fprop_launcher(
        grid, xf, xs, w, w if bias is None else bias, w if small_scale is None else small_scale, zf, zs,
        us if save_pre else zs, *ints,
        HAS_BIAS=bias is not None, HAS_SCALE=small_scale is not None, SAVE_PRE=save_pre,
        SHARE=share_weights, ONE_TAP=w.shape[2] * w.shape[3] == 1, UPCAST=UPCAST, PREC=dot_precision(xf.dtype))
    return zf, zs, us


# ----------------------------------------------------------------------------------------------------
# Op registration


def fprop_impl(x_full, x_small, weight, bias, small_scale, stride, padding, dilation, c_out_s, save_pre,
               share_weights):
    """The body of :func:`conv2d_fprop`, callable without the custom-op dispatch (eager fast path)."""
    with on_device(x_full):
        return _fprop_launch(x_full, x_small, weight, dense(bias), dense(small_scale), tuple(stride),
                             tuple(padding), tuple(dilation), c_out_s, save_pre, share_weights)


@torch.library.custom_op("adjoined::conv2d_fprop", mutates_args=())
def conv2d_fprop(x_full: torch.Tensor, x_small: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                 small_scale: Optional[torch.Tensor], stride: list[int], padding: list[int], dilation: list[int],
                 c_out_s: int, save_pre: bool, share_weights: bool
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused forward of both branches (DESIGN §1): one Triton launch.

    Args:
        x_full ``[N1, C_in, H1, W1]``, x_small ``[N2, c_in_s, H2, W2]``, weight ``[C_out, C_in, kh, kw]``,
        bias ``[C_out]`` or None, small_scale ``[c_out_s]`` or None; one dtype (fp32/fp16/bf16), one
        device, any memory format (converted to channels_last internally).
        stride, padding, dilation: pairs of ints. c_out_s: small output channels.
        save_pre: also return the small output before ``small_scale`` (needed for d small_scale).
        share_weights: let one program feed each shared weight tile to both branches.

    Returns:
        ``(z_full [N1, C_out, P1, Q1], z_small [N2, c_out_s, P2, Q2], u_small)``, channels_last, where
        ``u_small`` is the small output before the scale when ``save_pre``, else an empty ``[0]`` tensor.

    Inputs are not validated here (:func:`adjoined_kernels.adjoined_conv2d` does that). The backward
    raises RuntimeError when small_scale requires grad but the forward ran with ``save_pre=False``.
    """
    return fprop_impl(x_full, x_small, weight, bias, small_scale, stride, padding, dilation, c_out_s, save_pre,
                      share_weights)


@conv2d_fprop.register_fake
def _(x_full, x_small, weight, bias, small_scale, stride, padding, dilation, c_out_s, save_pre, share_weights):
    full_shape, small_shape = _out_shapes(x_full.shape, x_small.shape, weight.shape, stride, padding, dilation,
                                          c_out_s)
    alloc = dict(dtype=x_full.dtype, device=x_full.device, memory_format=torch.channels_last)
    zs = torch.empty(small_shape, **alloc)
    us = torch.empty(small_shape, **alloc) if save_pre else x_full.new_empty((0,))
    return torch.empty(full_shape, **alloc), zs, us


def _fprop_setup_context(ctx, inputs, output):
    x_full, x_small, weight, bias, small_scale, stride, padding, dilation, c_out_s, save_pre, share = inputs
    ctx.save_for_backward(x_full, x_small, weight, small_scale, output[2])
    ctx.conv = (tuple(stride), tuple(padding), tuple(dilation))
    ctx.share = share
    ctx.has_bias = bias is not None
    ctx.mark_non_differentiable(output[2])


def _backward(ctx, dz_full, dz_small, dgrad, wgrad):
    """dx via ``dgrad``, dW/db via ``wgrad`` (the ops, or their bodies in eager mode), d small_scale =
    sum(dz_small * u_small) (DESIGN §1)."""
    x_full, x_small, weight, small_scale, u_small = ctx.saved_tensors
    stride, padding, dilation = ctx.conv
    need = ctx.needs_input_grad
    dx_full = dx_small = dw = db = dscale = None
    if need[0] or need[1]:
        hw = [x_full.shape[2], x_full.shape[3], x_small.shape[2], x_small.shape[3]]
        dx_full, dx_small = dgrad(dz_full, dz_small, weight, small_scale, hw, x_small.shape[1],
                                  list(stride), list(padding), list(dilation), ctx.share)
        dx_full, dx_small = restore_format(dx_full, x_full), restore_format(dx_small, x_small)
    if need[2] or (ctx.has_bias and need[3]):
        dw, db = wgrad(x_full, x_small, dz_full, dz_small, small_scale, list(weight.shape[2:]),
                       list(stride), list(padding), list(dilation), ctx.has_bias and need[3])
        db = db if ctx.has_bias and need[3] else None
    if small_scale is not None and need[4]:
        if u_small.numel() != dz_small.numel():
            raise RuntimeError("adjoined::conv2d_fprop: d small_scale needs save_pre=True in the forward call")
        dscale = (dz_small.float() * u_small.float()).sum((0, 2, 3)).to(small_scale.dtype)
    return dx_full, dx_small, dw, db, dscale, None, None, None, None, None, None


def _fprop_backward(ctx, dz_full, dz_small, _du_small):
    return _backward(ctx, dz_full, dz_small, conv2d_dgrad, conv2d_wgrad)


conv2d_fprop.register_autograd(_fprop_backward, setup_context=_fprop_setup_context)


class _EagerConv(torch.autograd.Function):
    """``adjoined::conv2d_fprop`` with the same launchers and autograd formulas, minus the custom-op
    dispatch: in eager mode that costs ~130 µs of host time per call in torch 2.x (~220 µs with autograd,
    measured on CPU), more than the kernels of a launch-bound layer. torch.compile traces the op instead.
    The forward takes ``ctx`` itself: a separate ``setup_context`` makes ``apply`` bind arguments with
    ``inspect`` (another ~70 µs)."""

    @staticmethod
    def forward(ctx, *inputs):
        output = fprop_impl(*inputs)
        _fprop_setup_context(ctx, inputs, output)
        return output

    @staticmethod
    def backward(ctx, dz_full, dz_small, _du_small):
        return _backward(ctx, dz_full, dz_small, dgrad_impl, wgrad_impl)


# ----------------------------------------------------------------------------------------------------
# Reference and public wrapper


def conv2d_fprop_ref(x_full, x_small, weight, bias, small_scale, stride, padding, dilation, c_out_s,
                     save_pre=False, share_weights=True):
    """PyTorch reference of :func:`conv2d_fprop` (same signature and outputs; F.conv2d, DESIGN §1)."""
    b_s = None if bias is None else bias[:c_out_s]
    zf = F.conv2d(x_full, weight, bias, stride, padding, dilation)
    us = F.conv2d(x_small, weight[:c_out_s, :x_small.shape[1]], b_s, stride, padding, dilation)
    zs = us if small_scale is None else us * small_scale.view(1, -1, 1, 1)
    return zf, zs, (us if save_pre else us.new_empty((0,)))


def adjoined_conv2d_triton(x_full, x_small, weight, bias, stride, padding, dilation, c_out_s,
                           small_scale=None, share_weights=True):
    """Adjoined conv on the fused Triton kernels, differentiable (DESIGN §1, seeds/000 Eq. 1-2).

    Args: as :func:`adjoined_kernels.adjoined_conv2d` after validation: stride/padding/dilation are int
    pairs, ``c_out_s`` an int. ``share_weights=False`` turns off weight-tile sharing between the branches
    (same results; for benchmarks).

    Returns:
        ``(z_full, z_small)``, each in the memory format of its input (like F.conv2d).

    Gradients flow to x_full, x_small, weight, bias and small_scale through the dgrad and wgrad kernels.
    Under torch.compile (fullgraph=True works) it traces the ``adjoined::conv2d_*`` ops; eager calls run
    the same launchers through an autograd.Function, skipping the custom-op dispatch. No host syncs.
    """
    save_pre = small_scale is not None and small_scale.requires_grad and torch.is_grad_enabled()
    fprop = conv2d_fprop if torch.compiler.is_compiling() else _EagerConv.apply
    zf, zs, _ = fprop(x_full, x_small, weight, bias, small_scale, list(stride), list(padding), list(dilation),
                      int(c_out_s), save_pre, share_weights)
    return restore_format(zf, x_full), restore_format(zs, x_small)
