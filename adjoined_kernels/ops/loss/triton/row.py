"""Register path of the fused Triton loss: one row per program, read once and held in registers in the logits'
dtype (16-bit logits: two classes per 32-bit register), for rows with next_pow2(C) <= MAX_BLOCK classes
(fp32: half). Phases: maxima, sums of exp, for eps > 0 the KL sums, the gradients; each recomputes its fp32
values from the stored row one part (a quarter) at a time, chained on the previous part's results so that
no compiler keeps an fp32 copy of the row across the reductions (docs/kernels.md, "The loss kernels").
"""
from __future__ import annotations

import triton
import triton.language as tl

from .math import (_LOG2E, _chunk_offsets, _coefs, _eps_products, _eps_terms, _f32, _grads, _kl_terms,
                   _lane_floor, _lane_sums, _add3, _add4, _max2, _row_ce, _scales, _store_cast, _store_row_loss,
                   _target_logit)

_jit = triton.jit


@_jit
def _lane_max(v, FAST: tl.constexpr):
    """Max along axis 1, in the storage dtype on the GPU (exact; fp32 under the interpreter, whose bf16
    arithmetic is wrong)."""
    if FAST:
        return tl.max(v, 1).to(tl.float32)
    else:
        return tl.max(v.to(tl.float32), 1)


@_jit
def _row_max(x0, x1, x2, x3, y0, y1, y2, y3, floor, FAST: tl.constexpr):
    """Phase 1 of the register path: max of lf and of ls (one CTA-wide reduction); never below ``floor``."""
    mx = tl.maximum(tl.maximum(_lane_max(x0, FAST), _lane_max(x1, FAST)),
                    tl.maximum(_lane_max(x2, FAST), _lane_max(x3, FAST)))
    my = tl.maximum(tl.maximum(_lane_max(y0, FAST), _lane_max(y1, FAST)),
                    tl.maximum(_lane_max(y2, FAST), _lane_max(y3, FAST)))
    mx, my = tl.reduce((mx, my), 0, _max2)
    return tl.maximum(mx, floor), tl.maximum(my, floor)


@_jit
def _row_sums(x0, x1, x2, x3, y0, y1, y2, y3, mx, my, ct, inv_t, T_ONE: tl.constexpr, EPS_POS: tl.constexpr,
              FAST: tl.constexpr):
    """Phase 2: log2-domain log-sum-exps of lf, lf/T and ls/T (a probability is then one FFMA and one exp2
    away: p = 2^(lf*ct - lse2_p)) and E_p[lf/T - ls/T], in one CTA-wide reduction. Each part is keyed
    (``_f32``) on the previous part's sums."""
    a1, ap, aq, an = _lane_sums(_f32(x0, mx, FAST), _f32(y0, mx, FAST), mx, my, ct, T_ONE, EPS_POS)
    k = (a1 + ap + aq + an)[:, None]
    b1, bp, bq, bn = _lane_sums(_f32(x1, k, FAST), _f32(y1, k, FAST), mx, my, ct, T_ONE, EPS_POS)
    k = (b1 + bp + bq + bn)[:, None]
    c1, cp, cq, cn = _lane_sums(_f32(x2, k, FAST), _f32(y2, k, FAST), mx, my, ct, T_ONE, EPS_POS)
    k = (c1 + cp + cq + cn)[:, None]
    d1, dp, dq, dn = _lane_sums(_f32(x3, k, FAST), _f32(y3, k, FAST), mx, my, ct, T_ONE, EPS_POS)
    s1, sp, sq, sn = tl.reduce((a1 + b1 + c1 + d1, ap + bp + cp + dp, aq + bq + cq + dq, an + bn + cn + dn), 0,
                               _add4)
    return (mx * _LOG2E + tl.log2(s1), mx * ct + tl.log2(sp), my * ct + tl.log2(sq), sn / sp * inv_t)


@_jit
def _part_eps_sums(xs, ys, key, ct, lse2_p, lse2_q, eps, EPS_POS: tl.constexpr, FAST: tl.constexpr):
    """Per lane of one part: the eps > 0 sums of ``_eps_products``."""
    a, b, c = _eps_products(*_eps_terms(_f32(xs, key, FAST), _f32(ys, key, FAST), ct, lse2_p, lse2_q, eps,
                                        EPS_POS, FAST))
    return tl.sum(a, 1), tl.sum(b, 1), tl.sum(c, 1)


@_jit
def _row_eps_sums(x0, x1, x2, x3, y0, y1, y2, y3, ct, lse2_p, lse2_q, eps, EPS_POS: tl.constexpr,
                  FAST: tl.constexpr):
    """Phase 3 (eps > 0): KL/ln2, <p, b> - KL and sum r, in one CTA-wide reduction; parts keyed in a chain."""
    a0, b0, c0 = _part_eps_sums(x0, y0, lse2_p, ct, lse2_p, lse2_q, eps, EPS_POS, FAST)
    a1, b1, c1 = _part_eps_sums(x1, y1, a0[:, None], ct, lse2_p, lse2_q, eps, EPS_POS, FAST)
    a2, b2, c2 = _part_eps_sums(x2, y2, a1[:, None], ct, lse2_p, lse2_q, eps, EPS_POS, FAST)
    a3, b3, c3 = _part_eps_sums(x3, y3, a2[:, None], ct, lse2_p, lse2_q, eps, EPS_POS, FAST)
    return tl.reduce((a0 + a1 + a2 + a3, b0 + b1 + b2 + b3, c0 + c1 + c2 + c3), 0, _add3)


@_jit
def _part_grads(xs, ys, offs, gf_row, gs_row, C, t_col, key, ct, inv_t, lse2_1, lse2_p, lse2_q, eps, pb, rs,
                ce_coef, kl_full, kl_small, T_ONE: tl.constexpr, EPS_POS: tl.constexpr, FAST: tl.constexpr,
                MANUAL_RTNE: tl.constexpr):
    """Last phase, one part: both gradients, stored. Returns the key of the next part (its lane sums of
    g_small: g_small needs p and q, the last values computed)."""
    g_full, g_small = _grads(_f32(xs, key, FAST), _f32(ys, key, FAST), offs == t_col, ct, inv_t, lse2_1, lse2_p,
                             lse2_q, eps, pb, rs, ce_coef, kl_full, kl_small, T_ONE, EPS_POS, FAST)
    mask = offs < C
    _store_cast(gf_row + offs, g_full, mask, MANUAL_RTNE)
    _store_cast(gs_row + offs, g_small, mask, MANUAL_RTNE)
    return tl.sum(g_small, 1)[:, None]


@_jit
def _loss_row_kernel(lf_ptr, ls_ptr, tgt_ptr, lam_ptr, nvalid_ptr, loss_ptr, gf_ptr, gs_ptr,
                     lam, eps, temp, inv_t, B, C, ignore_index, s_lf, s_ls, s_gf, s_gs,
                     R: tl.constexpr, V: tl.constexpr, BLOCK_B: tl.constexpr, REDUCTION: tl.constexpr,
                     LAM_PTR: tl.constexpr, COUNT_INLINE: tl.constexpr, EPS_POS: tl.constexpr,
                     T_ONE: tl.constexpr, DETACH: tl.constexpr, GRAD: tl.constexpr, MANUAL_RTNE: tl.constexpr,
                     FAST: tl.constexpr):
    """One row per program, read once and held in registers in the logits' dtype (16-bit logits: two
    classes per register): loss term and both gradients.

    The row is four parts of R lanes of V classes (4*R*V = next_pow2(C)), one 16-byte vector per thread
    each. Every phase (maxima; sums of exp; eps > 0 sums; gradients) goes part by part and unpacks its
    own fp32 values (``_f32``), so at most one part's fp32 values are live, never a whole fp32 row.
    """
    row = tl.program_id(0).to(tl.int64)
    lf_row = lf_ptr + row * s_lf
    ls_row = ls_ptr + row * s_ls
    o0 = _chunk_offsets(0, R, V)
    o1 = o0 + R * V
    o2 = o1 + R * V
    o3 = o2 + R * V
    x0 = tl.load(lf_row + o0, mask=o0 < C, other=float("-inf"))
    x1 = tl.load(lf_row + o1, mask=o1 < C, other=float("-inf"))
    x2 = tl.load(lf_row + o2, mask=o2 < C, other=float("-inf"))
    x3 = tl.load(lf_row + o3, mask=o3 < C, other=float("-inf"))
    y0 = tl.load(ls_row + o0, mask=o0 < C, other=float("-inf"))
    y1 = tl.load(ls_row + o1, mask=o1 < C, other=float("-inf"))
    y2 = tl.load(ls_row + o2, mask=o2 < C, other=float("-inf"))
    y3 = tl.load(ls_row + o3, mask=o3 < C, other=float("-inf"))
    t = tl.load(tgt_ptr + row)
    valid = t != ignore_index
    x_t, t_col = _target_logit(lf_row, t, valid, C)
    ct = inv_t * _LOG2E
    mx, my = _row_max(x0, x1, x2, x3, y0, y1, y2, y3, _lane_floor(ct), FAST)
    lse2_1, lse2_p, lse2_q, e_pd = _row_sums(x0, x1, x2, x3, y0, y1, y2, y3, mx, my, ct, inv_t, T_ONE, EPS_POS,
                                             FAST)
    kl2 = 0.0
    spw = 0.0
    rs = 0.0
    if EPS_POS:
        kl2, spw, rs = _row_eps_sums(x0, x1, x2, x3, y0, y1, y2, y3, ct, lse2_p, lse2_q, eps, EPS_POS, FAST)
    kl, pb = _kl_terms(lse2_p, lse2_q, e_pd, kl2, spw, EPS_POS)
    ce_scale, kl_scale = _scales(tgt_ptr, nvalid_ptr, B, ignore_index, REDUCTION, COUNT_INLINE, BLOCK_B)
    ce_coef, kl_full, kl_small, w = _coefs(lam_ptr, lam, temp, valid, ce_scale, kl_scale, LAM_PTR, DETACH)
    if GRAD:
        gf_row = gf_ptr + row * s_gf
        gs_row = gs_ptr + row * s_gs
        tl.debug_barrier()  # in place: every thread has read the row before any thread overwrites it
        k = _part_grads(x0, y0, o0, gf_row, gs_row, C, t_col, kl, ct, inv_t, lse2_1, lse2_p, lse2_q, eps, pb, rs,
                        ce_coef, kl_full, kl_small, T_ONE, EPS_POS, FAST, MANUAL_RTNE)
        k = _part_grads(x1, y1, o1, gf_row, gs_row, C, t_col, k, ct, inv_t, lse2_1, lse2_p, lse2_q, eps, pb, rs,
                        ce_coef, kl_full, kl_small, T_ONE, EPS_POS, FAST, MANUAL_RTNE)
        k = _part_grads(x2, y2, o2, gf_row, gs_row, C, t_col, k, ct, inv_t, lse2_1, lse2_p, lse2_q, eps, pb, rs,
                        ce_coef, kl_full, kl_small, T_ONE, EPS_POS, FAST, MANUAL_RTNE)
        _part_grads(x3, y3, o3, gf_row, gs_row, C, t_col, k, ct, inv_t, lse2_1, lse2_p, lse2_q, eps, pb, rs,
                    ce_coef, kl_full, kl_small, T_ONE, EPS_POS, FAST, MANUAL_RTNE)
    _store_row_loss(loss_ptr, row, _row_ce(valid, t, C, lse2_1, x_t), kl, w, ce_scale, kl_scale, REDUCTION,
                    MANUAL_RTNE)

