"""Device helpers of the fused Triton loss kernels (row.py, chunked.py): loads and stores, the base-2
probability and log-sum-exp terms, the eps > 0 terms, the gradients and the per-row loss (docs/maths.md,
section 3; "Adjoined Networks", Def. 1, Eq. 3).

Per class both paths work in base 2: a probability is one FFMA and one exp2 (p = 2^(lf*ct - lse2)); with
T == 1, p1 == p is computed once. For eps > 0, log((p+eps)/(q+eps)) is one lg2.approx of a ratio whose
1/(q+eps) is needed anyway, and both reciprocals come from one rcp.approx of (p+eps)(q+eps) when that
product is a normal fp32 number (docs/kernels.md, "The loss kernels").
"""
from __future__ import annotations

import triton
import triton.language as tl

_jit = triton.jit
_LOG2E = tl.constexpr(1.4426950408889634)
_LN2 = tl.constexpr(0.6931471805599453)


@_jit
def _load_f32(ptr, offs, mask):
    """Masked load, upcast to fp32 at once (the interpreter's bf16 arithmetic is wrong)."""
    return tl.load(ptr + offs, mask=mask, other=float("-inf")).to(tl.float32)


@_jit
def _store_cast(ptr, x, mask, MANUAL_RTNE: tl.constexpr):
    """Store fp32 ``x`` in ``ptr``'s dtype, rounding to nearest even (by hand where the interpreter truncates)."""
    if MANUAL_RTNE:
        bits = x.to(tl.uint32, bitcast=True)
        bits = bits + 0x7FFF + ((bits >> 16) & 1)
        tl.store(ptr, (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True), mask=mask)
    else:
        tl.store(ptr, x.to(ptr.dtype.element_ty), mask=mask)


@_jit
def _log2(x, FAST: tl.constexpr):
    """log2 of a tensor in one MUFU instruction on the GPU (lg2.approx.ftz, error about 2^-22; the caller
    passes (p+eps)/(q+eps) >= eps/(1+eps) and the launcher keeps eps >= 2^-126, so flushing denormals
    changes nothing). ``tl.log2`` is a ~50-instruction polynomial there. The interpreter has no inline asm:
    numpy's log2."""
    if FAST:
        return tl.inline_asm_elementwise("lg2.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=tl.float32,
                                         is_pure=True, pack=1)
    else:
        return tl.log2(x)


@_jit
def _rcp(x, FAST: tl.constexpr):
    """1/x in one MUFU instruction on the GPU (rcp.approx.ftz, 1 ulp; x >= 2^-126 here). A division
    compiles to div.full: the same MUFU plus ~7 range-check instructions."""
    if FAST:
        return tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=tl.float32,
                                         is_pure=True, pack=1)
    else:
        return 1.0 / x


@_jit
def _opaque_zero(key):
    """``key - key`` in fp32: 0 for finite key (NaN otherwise), computed on the GPU, never folded. In inline
    asm with ``.rn`` because a plain subtraction may be contracted with the multiply that produced ``key``
    into an FMA, which returns that product's rounding error, not 0 (it did: garbage 16-bit unpacking and
    wrong gradients for eps > 0, on an H100)."""
    return tl.inline_asm_elementwise("sub.rn.f32 $0, $1, $1;", "=r,r", [key], dtype=tl.float32, is_pure=True,
                                     pack=1)


@_jit
def _f32(v, key, FAST: tl.constexpr):
    """fp32 values of one part of a row held in its storage dtype, for one phase of the register path.

    ``key`` (broadcastable to ``v``) comes from the previous part's or phase's results, and
    ``_opaque_zero(key)`` is a 0 that no compiler may fold. Mixing it in makes every unpacking a new
    computation that waits for that result: nothing merges two phases' unpacking into one fp32 copy of
    the row (live across the reductions), and ptxas cannot hoist a part's work above the previous part's
    (interleaved parts spill). 16-bit pairs are unpacked from their 32-bit register by inline asm, with the
    0 in the shift amount and the mask (no extra instruction per class); fp32 adds it (one FADD).
    """
    if FAST:
        zero = _opaque_zero(key)
        if v.dtype == tl.bfloat16:
            z = zero.to(tl.int32, bitcast=True)
            return tl.inline_asm_elementwise("{ shl.b32 $0, $2, $3; and.b32 $1, $2, $5; }", "=r,=r,r,r,r,r,r",
                                             [v, z + 16, z - 65536], dtype=tl.float32, is_pure=True, pack=2)
        elif v.dtype == tl.float16:
            return tl.inline_asm_elementwise(
                "{ .reg .b32 t; .reg .b16 l, h; xor.b32 t, $2, $3; mov.b32 {l, h}, t; cvt.f32.f16 $0, l; "
                "cvt.f32.f16 $1, h; }", "=r,=r,r,r,r", [v, zero.to(tl.int32, bitcast=True)], dtype=tl.float32,
                is_pure=True, pack=2)
        else:
            return v + zero
    else:
        return v.to(tl.float32)


@_jit
def _max2(a0, a1, b0, b1):
    return tl.maximum(a0, b0), tl.maximum(a1, b1)


@_jit
def _add3(a0, a1, a2, b0, b1, b2):
    return a0 + b0, a1 + b1, a2 + b2


@_jit
def _add4(a0, a1, a2, a3, b0, b1, b2, b3):
    return a0 + b0, a1 + b1, a2 + b2, a3 + b3


@_jit
def _merge_stats(m1a, mpa, mqa, s1a, spa, sqa, sna, m1b, mpb, mqb, s1b, spb, sqb, snb):
    """Combine two partial states (max, sum of 2^(v - max)) of the streams lf, lf/T, ls/T (log2 units);
    the eps == 0 KL numerator rescales with lf/T's."""
    m1 = tl.maximum(m1a, m1b)
    mp = tl.maximum(mpa, mpb)
    mq = tl.maximum(mqa, mqb)
    fpa = tl.exp2(mpa - mp)
    fpb = tl.exp2(mpb - mp)
    return (m1, mp, mq, s1a * tl.exp2(m1a - m1) + s1b * tl.exp2(m1b - m1), spa * fpa + spb * fpb,
            sqa * tl.exp2(mqa - mq) + sqb * tl.exp2(mqb - mq), sna * fpa + snb * fpb)


@_jit
def _scales(tgt_ptr, nvalid_ptr, B, ignore_index, REDUCTION: tl.constexpr, COUNT_INLINE: tl.constexpr,
            BLOCK_B: tl.constexpr):
    """(CE scale, KL scale): 1/n_valid and 1/B under "mean", else 1. n_valid is counted on the device."""
    ce_scale = 1.0
    kl_scale = 1.0
    if REDUCTION == 2:
        if COUNT_INLINE:
            acc = tl.zeros([BLOCK_B], dtype=tl.int32)
            for start in range(0, B, BLOCK_B):
                offs = start + tl.arange(0, BLOCK_B)
                t = tl.load(tgt_ptr + offs, mask=offs < B, other=ignore_index)
                acc += (t != ignore_index).to(tl.int32)
            n_valid = tl.sum(acc, 0)
        else:
            n_valid = tl.load(nvalid_ptr)
        ce_scale = 1.0 / tl.maximum(n_valid, 1).to(tl.float32)
        kl_scale = 1.0 / B
    return ce_scale, kl_scale


@_jit
def _coefs(lam_ptr, lam, temp, valid, ce_scale, kl_scale, LAM_PTR: tl.constexpr, DETACH: tl.constexpr):
    """(CE grad coef, KL grad coef on full, KL grad coef on small, KL loss weight lam*T^2). lam is read from
    ``lam_ptr`` (LAM_PTR, what the op passes: its schema takes a tensor) or is the immediate ``lam``."""
    if LAM_PTR:
        lam_v = tl.load(lam_ptr).to(tl.float32)
    else:
        lam_v = lam
    kl_small = lam_v * temp * kl_scale
    kl_full = 0.0 if DETACH else kl_small
    return tl.where(valid, ce_scale, 0.0), kl_full, kl_small, lam_v * temp * temp


@_jit
def _exp_terms(x, y, mx, my, ct, T_ONE: tl.constexpr, EPS_POS: tl.constexpr):
    """exp(lf - mx), exp((lf - mx)/T), exp((ls - my)/T) per class, in base 2 (one FFMA + one MUFU each; with
    T == 1 the first two are one), and for eps == 0 the second weighted by lf - ls (the KL numerator; 0 where
    it vanishes, so padding's -inf - -inf stays out)."""
    e1 = tl.exp2(x * _LOG2E - mx * _LOG2E)
    if T_ONE:
        ep = e1
    else:
        ep = tl.exp2(x * ct - mx * ct)
    eq = tl.exp2(y * ct - my * ct)
    if EPS_POS:
        num = tl.zeros_like(e1)
    else:
        num = tl.where(ep > 0, ep * (x - y), 0.0)
    return e1, ep, eq, num


@_jit
def _lane_floor(ct):
    """Floor of a lane's max: a lane of padding only (-inf) gets this finite max instead, so -inf - max stays
    -inf (not NaN) and max * ct stays finite. Sums relative to any max >= the lane's values are exact."""
    return -3.0e38 / tl.maximum(ct, _LOG2E)


@_jit
def _lane_sums(x, y, mx, my, ct, T_ONE: tl.constexpr, EPS_POS: tl.constexpr):
    """Per lane (row of an [R, V] block, held by one thread): the sums along axis 1 of ``_exp_terms``, given
    maxima that broadcast to the block (the row's, or one per lane)."""
    e1, ep, eq, num = _exp_terms(x, y, mx, my, ct, T_ONE, EPS_POS)
    return tl.sum(e1, 1), tl.sum(ep, 1), tl.sum(eq, 1), tl.sum(num, 1)


@_jit
def _combine_lanes(m_x, m_y, s1, sp, sq, sn, ct, inv_t):
    """All lanes' (max, sums) in one CTA-wide reduction: the row's log2-domain log-sum-exps of lf, lf/T,
    ls/T (a probability is then one FFMA and one exp2 away: p = 2^(lf*ct - lse2_p)), and E_p[lf/T - ls/T]."""
    m1, mp, mq, s1, sp, sq, sn = tl.reduce((m_x * _LOG2E, m_x * ct, m_y * ct, s1, sp, sq, sn), 0, _merge_stats)
    return m1 + tl.log2(s1), mp + tl.log2(sp), mq + tl.log2(sq), sn / sp * inv_t


@_jit
def _eps_terms(x, y, ct, lse2_p, lse2_q, eps, EPS_POS: tl.constexpr, FAST: tl.constexpr):
    """eps > 0: p, q, 1/(q+eps), log2((p+eps)/(q+eps)) and p/(p+eps) per class: 2 exp2, 1 log2 (of the
    ratio: 1/(q+eps) is needed anyway) and, with EPS_POS == 2, one rcp of (p+eps)(q+eps) for both
    reciprocals (3 FMUL instead of a MUFU; the register path is MUFU-bound). The product is >= eps^2, a
    normal fp32 number only for eps >= 2^-60: below that (EPS_POS == 1) two rcp."""
    p = tl.exp2(x * ct - lse2_p)
    q = tl.exp2(y * ct - lse2_q)
    pe = p + eps
    qe = q + eps
    if EPS_POS == 2:
        r = _rcp(pe * qe, FAST)
        rq = pe * r
        rp = qe * r
    else:
        rq = _rcp(qe, FAST)
        rp = _rcp(pe, FAST)
    return p, q, rq, _log2(pe * rq, FAST), p * rp


@_jit
def _eps_products(p, q, rq, d2, w):
    """The eps > 0 per-class terms of KL/ln2, <p, b> - KL and sum r, with r = p*q/(q+eps)."""
    return p * d2, p * w, p * (q * rq)


@_jit
def _kl_terms(lse2_p, lse2_q, e_pd, kl2, spw, EPS_POS: tl.constexpr):
    """KL of the row, and ``pb``: <p, b> for eps > 0, E_p[lf/T - ls/T] for eps == 0 (what _grads subtracts)."""
    if EPS_POS:
        kl = kl2 * _LN2
        pb = kl + spw
    else:
        kl = e_pd - (lse2_p - lse2_q) * _LN2
        pb = e_pd
    return kl, pb


@_jit
def _grads(x, y, is_t, ct, inv_t, lse2_1, lse2_p, lse2_q, eps, pb, rs, ce_coef, kl_full, kl_small,
           T_ONE: tl.constexpr, EPS_POS: tl.constexpr, FAST: tl.constexpr):
    """d/dlogits_full and d/dlogits_small (docs/maths.md, section 3, "Gradient") in fp32, recomputed from the
    logits: the true class's p1 - 1 is formed in fp32. With T == 1, p1 == p is computed once."""
    if EPS_POS:
        p, q, rq, d2, w = _eps_terms(x, y, ct, lse2_p, lse2_q, eps, EPS_POS, FAST)
        dev = d2 * _LN2 + w - pb                      # b - <p, b>
        g_small = kl_small * q * (rs - p * rq)        # lam T (q sum r - r)
    else:
        p = tl.exp2(x * ct - lse2_p)
        q = tl.exp2(y * ct - lse2_q)
        dev = tl.where(p > 0, (x - y) * inv_t - pb, 0.0)  # log p - log q - KL
        g_small = kl_small * (q - p)
    if T_ONE:
        g_full = p * (ce_coef + kl_full * dev)
    else:
        g_full = ce_coef * tl.exp2(x * _LOG2E - lse2_1) + kl_full * (p * dev)
    return tl.where(is_t, g_full - ce_coef, g_full), g_small


@_jit
def _target_logit(lf_row, t, valid, C):
    """lf[t] in fp32 (0 when ignored or out of range), and t as an int32 column (-1 when out of range).
    Loaded before any in-place store; the barriers of the reductions that follow order it before them."""
    ok = (t >= 0) & (t < C)
    x_t = tl.load(lf_row + t, mask=valid & ok, other=0.0).to(tl.float32)
    return x_t, tl.where(ok, t, -1).to(tl.int32)


@_jit
def _row_ce(valid, t, C, lse2_1, x_t):
    """CE of one row: 0 when ignored, NaN when the target is out of [0, C)."""
    ok = (t >= 0) & (t < C)
    return tl.where(valid, tl.where(ok, lse2_1 * _LN2 - x_t, float("nan")), 0.0)


@_jit
def _store_row_loss(loss_ptr, row, ce, kl, w, ce_scale, kl_scale, REDUCTION: tl.constexpr,
                    MANUAL_RTNE: tl.constexpr):
    """"none": the row's loss in the output dtype; otherwise its scaled fp32 share of the total."""
    if REDUCTION == 0:
        _store_cast(loss_ptr + row, ce + w * kl, None, MANUAL_RTNE)
    else:
        tl.store(loss_ptr + row, ce * ce_scale + w * kl * kl_scale)


@_jit
def _chunk_offsets(start, R: tl.constexpr, V: tl.constexpr):
    """Offsets of R*V classes as [R, V]: a lane (row of the block) is V contiguous classes, one 16-byte
    vector held by one thread, so reducing along axis 1 is in-thread (no shuffle, no barrier)."""
    return start + tl.arange(0, R)[:, None] * V + tl.arange(0, V)[None, :]


