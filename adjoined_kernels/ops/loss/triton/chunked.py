"""Chunked path of the fused Triton loss: one long row per program, CHUNK classes per iteration (fp32:
half) as [R, V] blocks whose lanes (one 16-byte vector each) stay in one thread. Pass 1 keeps a running max
and rescaled sums per lane and combines the lanes once; pass 2 (eps > 0 only) sums KL, <p, b> and sum r;
pass 3 writes the gradients. The logits are read twice (eps == 0) or three times (eps > 0); docs/kernels.md,
"The loss kernels".
"""
from __future__ import annotations

import triton
import triton.language as tl

from .math import (_LOG2E, _add3, _chunk_offsets, _coefs, _combine_lanes, _eps_products, _eps_terms, _grads,
                   _kl_terms, _lane_floor, _lane_sums, _load_f32, _row_ce, _scales, _store_cast, _store_row_loss,
                   _target_logit)

_jit = triton.jit


@_jit
def _stats_pass(lf_row, ls_row, C, ct, inv_t, R: tl.constexpr, V: tl.constexpr, T_ONE: tl.constexpr,
                EPS_POS: tl.constexpr):
    """Pass 1: log-sum-exps of lf, lf/T and ls/T, and E_p[lf/T - ls/T] (see ``_combine_lanes``).

    Each lane keeps its own running max and rescaled sums across chunks (one exp2 per class and stream,
    one rescale exp2 per lane and chunk); lanes are combined once, after the loop: one CTA-wide reduction
    per row, none per chunk. The max of lf/T is max(lf)/T (T > 0), so lf and lf/T share one.
    """
    m_x = tl.zeros([R], dtype=tl.float32) + _lane_floor(ct)
    m_y = m_x
    s1 = tl.zeros([R], dtype=tl.float32)
    sp = tl.zeros([R], dtype=tl.float32)
    sq = tl.zeros([R], dtype=tl.float32)
    sn = tl.zeros([R], dtype=tl.float32)
    for start in range(0, C, R * V):
        offs = _chunk_offsets(start, R, V)
        mask = offs < C
        x = _load_f32(lf_row, offs, mask)
        y = _load_f32(ls_row, offs, mask)
        mx = tl.maximum(m_x, tl.max(x, 1))
        my = tl.maximum(m_y, tl.max(y, 1))
        c1, cp, cq, cn = _lane_sums(x, y, mx[:, None], my[:, None], ct, T_ONE, EPS_POS)
        a_1 = tl.exp2((m_x - mx) * _LOG2E)
        s1 = s1 * a_1 + c1
        if T_ONE:
            a_p = a_1
        else:
            a_p = tl.exp2((m_x - mx) * ct)
            sp = sp * a_p + cp
        sq = sq * tl.exp2((m_y - my) * ct) + cq
        if not EPS_POS:
            sn = sn * a_p + cn
        m_x = mx
        m_y = my
    if T_ONE:
        sp = s1
    return _combine_lanes(m_x, m_y, s1, sp, sq, sn, ct, inv_t)


@_jit
def _eps_pass(lf_row, ls_row, C, ct, lse2_p, lse2_q, eps, R: tl.constexpr, V: tl.constexpr,
              EPS_POS: tl.constexpr, FAST: tl.constexpr):
    """Pass 2 (eps > 0 only: log(p + eps) needs the final normalisers): KL/ln2, <p, b> - KL and sum r,
    accumulated per lane (in-thread) and reduced once after the loop."""
    kl2 = tl.zeros([R], dtype=tl.float32)
    spw = tl.zeros([R], dtype=tl.float32)
    rs = tl.zeros([R], dtype=tl.float32)
    for start in range(0, C, R * V):
        offs = _chunk_offsets(start, R, V)
        mask = offs < C
        p, q, rq, d2, w = _eps_terms(_load_f32(lf_row, offs, mask), _load_f32(ls_row, offs, mask), ct, lse2_p,
                                     lse2_q, eps, EPS_POS, FAST)
        a, b, c = _eps_products(p, q, rq, d2, w)
        kl2 += tl.sum(a, 1)
        spw += tl.sum(b, 1)
        rs += tl.sum(c, 1)
    return tl.reduce((kl2, spw, rs), 0, _add3)


@_jit
def _grad_pass(lf_row, ls_row, gf_row, gs_row, C, t_col, ct, inv_t, lse2_1, lse2_p, lse2_q, eps, pb, rs,
               ce_coef, kl_full, kl_small, R: tl.constexpr, V: tl.constexpr, T_ONE: tl.constexpr,
               EPS_POS: tl.constexpr, INPLACE: tl.constexpr, FAST: tl.constexpr, MANUAL_RTNE: tl.constexpr):
    """Last pass: both gradients, chunk by chunk.

    In place, a chunk must be read by every thread (replicas included, when the chunk is smaller than the
    layout) before any thread writes it: hence the barrier, only then.
    """
    for start in range(0, C, R * V):
        offs = _chunk_offsets(start, R, V)
        mask = offs < C
        x = _load_f32(lf_row, offs, mask)
        y = _load_f32(ls_row, offs, mask)
        g_full, g_small = _grads(x, y, offs == t_col, ct, inv_t, lse2_1, lse2_p, lse2_q, eps, pb, rs, ce_coef,
                                 kl_full, kl_small, T_ONE, EPS_POS, FAST)
        if INPLACE:
            tl.debug_barrier()
        _store_cast(gf_row + offs, g_full, mask, MANUAL_RTNE)
        _store_cast(gs_row + offs, g_small, mask, MANUAL_RTNE)


@_jit
def _loss_chunked_kernel(lf_ptr, ls_ptr, tgt_ptr, lam_ptr, nvalid_ptr, loss_ptr, gf_ptr, gs_ptr,
                         lam, eps, temp, inv_t, B, C, ignore_index, s_lf, s_ls, s_gf, s_gs,
                         R: tl.constexpr, V: tl.constexpr, BLOCK_B: tl.constexpr, REDUCTION: tl.constexpr,
                         LAM_PTR: tl.constexpr, COUNT_INLINE: tl.constexpr, EPS_POS: tl.constexpr,
                         T_ONE: tl.constexpr, DETACH: tl.constexpr, GRAD: tl.constexpr, INPLACE: tl.constexpr,
                         MANUAL_RTNE: tl.constexpr, FAST: tl.constexpr):
    """One long row per program, in chunks of R*V classes: loss term and both gradients. Reads the logits
    twice (eps == 0) or three times (eps > 0)."""
    row = tl.program_id(0).to(tl.int64)
    lf_row = lf_ptr + row * s_lf
    ls_row = ls_ptr + row * s_ls
    t = tl.load(tgt_ptr + row)
    valid = t != ignore_index
    x_t, t_col = _target_logit(lf_row, t, valid, C)
    ct = inv_t * _LOG2E
    lse2_1, lse2_p, lse2_q, e_pd = _stats_pass(lf_row, ls_row, C, ct, inv_t, R, V, T_ONE, EPS_POS)
    kl2 = 0.0
    spw = 0.0
    rs = 0.0
    if EPS_POS:
        kl2, spw, rs = _eps_pass(lf_row, ls_row, C, ct, lse2_p, lse2_q, eps, R, V, EPS_POS, FAST)
    kl, pb = _kl_terms(lse2_p, lse2_q, e_pd, kl2, spw, EPS_POS)
    ce_scale, kl_scale = _scales(tgt_ptr, nvalid_ptr, B, ignore_index, REDUCTION, COUNT_INLINE, BLOCK_B)
    ce_coef, kl_full, kl_small, w = _coefs(lam_ptr, lam, temp, valid, ce_scale, kl_scale, LAM_PTR, DETACH)
    if GRAD:
        _grad_pass(lf_row, ls_row, gf_ptr + row * s_gf, gs_ptr + row * s_gs, C, t_col, ct, inv_t, lse2_1, lse2_p,
                   lse2_q, eps, pb, rs, ce_coef, kl_full, kl_small, R, V, T_ONE, EPS_POS, INPLACE, FAST,
                   MANUAL_RTNE)
    _store_row_loss(loss_ptr, row, _row_ce(valid, t, C, lse2_1, x_t), kl, w, ce_scale, kl_scale, REDUCTION,
                    MANUAL_RTNE)


@_jit
def _sum_rows_kernel(rows_ptr, out_ptr, B, BLOCK_R: tl.constexpr, MANUAL_RTNE: tl.constexpr):
    """One program: out = sum of the B fp32 row terms, in a fixed order, stored in out's dtype."""
    acc = tl.zeros([BLOCK_R], dtype=tl.float32)
    for start in range(0, B, BLOCK_R):
        offs = start + tl.arange(0, BLOCK_R)
        acc += tl.load(rows_ptr + offs, mask=offs < B, other=0.0)
    _store_cast(out_ptr, tl.sum(acc, 0), None, MANUAL_RTNE)

