"""Adjoined loss: CE(full) + lam * T^2 * KL(p_full || q_small) (seeds/000 Def. 1, Eq. 3; DESIGN §1).

One file, top to bottom: the fused Triton kernels (loss and both gradients in the forward pass), their
launcher, the ``adjoined::`` custom ops with autograd, the public function, and the reference.

Kernels: one program per row, loss term and both gradients in the forward pass. Nothing syncs with the
host (lam, n_valid and grad_output stay on the device); under "mean"/"sum" a one-program kernel
(``_sum_rows_kernel``) sums the per-row terms in a fixed order, so results are deterministic.

- Register path (``_loss_row_kernel``): rows with next_pow2(C) <= max_block = 32768 classes for 16-bit
  logits, max_block // 2 for fp32. The row is read once and held in registers in its storage dtype (two
  bf16/fp16 classes per 32-bit register): 32 classes of each row per thread (fp32: 16), i.e. 16
  registers per row, up to 32 warps of 64 registers (MAXNREG; 1024 threads fill an SM's 64K registers).
  fp32 rows of 32K would need the whole register file for the data alone (2 x 32K x 4 B = 256 KB), hence
  their half limit. Phases: maxima (one CTA-wide reduction), sums of exp (one), for eps > 0 the KL sums
  (one), the gradients. Each phase recomputes its fp32 values from the stored row, one part (a quarter)
  at a time, chaining each part's unpacking on the previous part's results (``_f32``): without that,
  the compilers keep an fp32 copy of the row across the reductions or interleave the parts, and spill.
- Chunked path (``_loss_chunked_kernel``): longer rows, CHUNK = 4096 classes per iteration (fp32: 2048),
  as [R, V] blocks whose lanes (one 16-byte vector each) stay in one thread. Pass 1 keeps a running max
  and rescaled sums per lane across chunks and combines the lanes once: one CTA-wide reduction per row,
  none per chunk. Pass 2, for eps > 0 only (log(p + eps) needs the final normalisers), sums KL, <p, b>
  and sum r per lane. Pass 3 writes the gradients, with a barrier per chunk only when in place. So the
  logits are read twice (eps == 0) or three times (eps > 0).
- Per class, both paths work in base 2: a probability is one FFMA and one MUFU.EX2 (p = 2^(lf*ct -
  lse2)); with T == 1, p1 == p is computed once. For eps > 0, log((p+eps)/(q+eps)) is one lg2.approx of
  a ratio whose 1/(q+eps) is needed anyway, and both reciprocals come from one rcp.approx of
  (p+eps)(q+eps) (for eps >= 2^-60, where that product is a normal number): 4 MUFU for p, q, the
  reciprocals and the log (``tl.log`` would be a ~50-instruction polynomial per call).

ptxas figures for sm_90 (``python tools/loss_ptxas_report.py``: Triton 3.8 with its ptxas 12.9; Triton 3.6
with ptxas 12.8 gives the same counts within 2%, and 0-20 B of spill). They are compiler counts, not GPU
timings. Per class = per class and thread; spill = bytes stored/loaded per thread.

    register path, bf16, C=32768, 32 warps   regs  spill    instr/class  MUFU/class  BAR
      eps=1e-6, T=1                            64   0/0         73.0        10.1      12
      eps=1e-6, T=2                            64   0/0         79.2        12.1      12
      eps=0,    T=1                            64   0/0         48.0         4.1       8
      eps=0,    T=2                            64   32/32       55.2         6.1       8
    same at C=8192 (8 warps) and 16384 (16 warps); fp32 C=16384: 0 spill, 62-95 instr/class.
    with two rcp per class (before the shared one): 69.0 / 12.1 and 75.2 / 14.1 for eps=1e-6.
    before (fp32 rows, 32 warps): 8192 no spill, 16384 296/332, 32768 1476/1912 (eps=1e-6, T=1),
      75-178 instr/class, hence the old 8192 limit.

    chunked path, bf16, 8 warps, 16 classes/thread/iteration: per-loop instr/class, MUFU/class, BAR
      eps=1e-6, T=1   pass 1: 14.8, 2.25, 0   pass 2: 24.2, 4.0, 0   pass 3: 29.6, 4.0, 0 (1 in place)
      eps=1e-6, T=2   pass 1: 18.2, 3.38, 0   pass 2: 24.2, 4.0, 0   pass 3: 33.2, 5.0, 0
      eps=0,    T=1   pass 1: 19.9, 2.25, 0                          pass 2: 22.0, 2.0, 0
    before (CHUNK=2048, 8 classes/thread/chunk, eps=1e-6, T=1): pass 1: 33.0, 2.25, 8 barriers per chunk;
      pass 2: 92.4, 4.0 (two polynomial logs per class); pass 3: 110.8, 4.0, 1 barrier per chunk.

What that suggests, to be measured on a GPU (H100: 16 MUFU and 128 other results per clock per SM, about
12 bytes of DRAM traffic per clock per SM at 3 TB/s): a bf16 class of the register path moves 8 bytes
(0.6-0.7 clock), so eps == 0 should be memory-bound, while eps > 0 issues 10-12 MUFU per class (0.6-0.75
clock; 12-14 with two reciprocals, the version H100 run4 measured at 59% of HBM bandwidth at B=4096,
C=32000), against about 1.2 clocks of issue for the old path's 159 instructions per class. A 32K row takes
a whole SM (one CTA), so its loads do not overlap another row's work on that SM. The chunked path's 3
passes move 16 bytes per bf16 class for eps > 0 (about 1.3 clocks) against 0.8 clock of MUFU. The backward
multiplies both saved gradients by grad_output: another read and write of each, outside these kernels.
"""
from __future__ import annotations

import contextlib
import numbers

import torch
import torch.nn.functional as F

from .._backend import resolve_backend, triton_interpreting
from .._checks import check_same, check_tensor
from . import _alloc, _saved_grads

try:
    import triton
    import triton.language as tl
    _jit = triton.jit
    _LOG2E = tl.constexpr(1.4426950408889634)
    _LN2 = tl.constexpr(0.6931471805599453)
except ImportError:  # the "triton" backend then reports itself unavailable (_backend.py)
    triton = tl = None

    def _jit(fn):
        return fn

SUPPORTED = ("triton", "cuda")
REDUCTIONS = ("mean", "sum", "none")
_RED_CODE = {"none": 0, "sum": 1, "mean": 2}
MAX_BLOCK = 32768          # 16-bit rows up to this many classes (next power of 2) stay in registers; fp32: half
CHUNK = 4096               # classes per iteration of the long-row path (16-bit; fp32: half)
CHUNK_WARPS = 8
ROW_MIN_WARPS = 2          # short rows: narrower vectors rather than fewer warps
MAXNREG = 64               # registers per thread, both paths: 1024 threads per SM
COUNT_INLINE_MAX = 1024    # "mean": each program counts valid targets itself up to this batch size


# ----------------------------------------------------------------------------------------------- kernels
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
    """(CE grad coef, KL grad coef on full, KL grad coef on small, KL loss weight lam*T^2)."""
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
    """d/dlogits_full and d/dlogits_small (DESIGN §1) in fp32, recomputed from the logits: the true class's
    p1 - 1 is formed in fp32. With T == 1, p1 == p is computed once."""
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


# ---------------------------------------------------------------------------------------------- launcher
def _plan(C: int, element_size: int, max_block: int):
    """How rows of C classes run: ``(kernel, R, V, num_warps)``.

    Lengths in classes (``max_block``, ``CHUNK``) are for 16-bit logits; fp32 rows (twice the bytes) get
    half. Register path: next_pow2(C) classes as 4 parts of R lanes of V classes, one lane of each part per
    thread. V is one 16-byte vector (32 classes of each row per thread in 16 registers for 16-bit logits,
    16 for fp32, up to 32 warps), narrowed to 2 classes on short rows so that they still get ROW_MIN_WARPS
    warps. Chunked path: R*V classes per loop iteration (V = one vector), CHUNK_WARPS warps.
    """
    half = 2 if element_size == 4 else 1
    vec = 16 // element_size
    block = _next_pow2(C)
    if block <= max_block // half:
        v = max(2, min(vec, block // (4 * 32 * ROW_MIN_WARPS)))
        block = max(block, 4 * v)
        return _loss_row_kernel, block // (4 * v), v, min(32, block // (4 * 32 * v) or 1)
    chunk = max(1, min(max_block, CHUNK) // half)
    chunk = 1 << (chunk.bit_length() - 1)  # a power of 2, whatever max_block is
    v = min(vec, chunk)
    return _loss_chunked_kernel, chunk // v, v, CHUNK_WARPS


def _next_pow2(n: int) -> int:
    """Smallest power of 2 >= n (1 for n <= 1). ``triton.next_power_of_2`` is a constexpr_function:
    microseconds per call on the launch path."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def _eps_mode(eps: float) -> int:
    """The kernels' EPS_POS: 0 for eps == 0, 2 where one rcp serves both 1/(p+eps) and 1/(q+eps)
    (``_eps_terms``), 1 for 0 < eps < 2^-60."""
    return 0 if eps == 0 else 2 if eps >= 2.0 ** -60 else 1


def _device_ctx(t: torch.Tensor):
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _launch(lf, ls, target, lam_t, lam, eps, temperature, reduction, ignore_index, detach_full, compute_grad,
            loss, gf, gs, max_block, count_inline_max):
    """Run the fused kernel: writes ``loss`` (0-dim or [B]) and, if ``compute_grad``, the gradients into
    ``gf``/``gs`` (which may be ``lf``/``ls`` themselves: in place)."""
    B, C = lf.shape
    red = _RED_CODE[reduction]
    target = target.contiguous()
    rows = loss if red == 0 else _alloc.empty((B,), dtype=torch.float32, device=lf.device)
    count_inline = B <= count_inline_max
    n_valid = target
    if red == 2 and not count_inline:
        n_valid = (target != ignore_index).sum(dtype=torch.int32)
    interpreting = triton_interpreting()
    rtne = interpreting and lf.dtype == torch.bfloat16
    meta = dict(BLOCK_B=min(_next_pow2(B), 1024), REDUCTION=red, LAM_PTR=lam_t is not None,
                COUNT_INLINE=count_inline, EPS_POS=_eps_mode(eps), T_ONE=temperature == 1.0, DETACH=detach_full,
                GRAD=compute_grad, MANUAL_RTNE=rtne, FAST=not interpreting)
    # eps is only ever added to a probability before rcp/lg2.approx.ftz: keep it a normal fp32 number
    eps_k = max(float(eps), 2.0 ** -126) if eps > 0 else 0.0
    args = (lf, ls, target, lf if lam_t is None else lam_t, n_valid, rows, gf, gs,
            float(lam), eps_k, float(temperature), 1.0 / temperature, B, C, ignore_index,
            lf.stride(0), ls.stride(0), gf.stride(0), gs.stride(0))
    kernel, r, v, warps = _plan(C, lf.element_size(), max_block)
    if kernel is _loss_chunked_kernel:
        meta["INPLACE"] = gf is lf
    with _device_ctx(lf):
        kernel[(B,)](*args, R=r, V=v, num_warps=warps, maxnreg=MAXNREG, **meta)
        if red != 0:
            _sum_rows_kernel[(1,)](rows, loss, B, BLOCK_R=min(_next_pow2(B), 1024),
                                   MANUAL_RTNE=rtne, num_warps=4)


def _unit_stride(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(1) == 1 else t.contiguous()


def _loss_shape(lf: torch.Tensor, reduction: str):
    return (lf.shape[0],) if reduction == "none" else ()


def _grad_shape(t: torch.Tensor, compute_grad: bool):
    return t.shape if compute_grad else (0,)


# ------------------------------------------------------------------------------------ custom ops, autograd
_ARGS = ("Tensor target, Tensor? lam_tensor, float lam, float eps, float temperature, str reduction, "
         f"int ignore_index, bool detach_full, bool compute_grad=True, int max_block={MAX_BLOCK}, "
         f"int count_inline_max={COUNT_INLINE_MAX}")


@torch.library.custom_op("adjoined::adjoined_loss_fwd", mutates_args=(),
                         schema=f"(Tensor logits_full, Tensor logits_small, {_ARGS}) -> (Tensor, Tensor, Tensor)")
def adjoined_loss_fwd(logits_full, logits_small, target, lam_tensor, lam, eps, temperature, reduction,
                      ignore_index, detach_full, compute_grad=True, max_block=MAX_BLOCK,
                      count_inline_max=COUNT_INLINE_MAX):
    """Fused forward: ``(loss, d loss/d logits_full, d loss/d logits_small)``, all in the logits' dtype.

    ``lam_tensor`` (0-dim, on the logits' device) is used when given, else the float ``lam``. The
    gradients are those of the (reduced) loss, so backward only multiplies them by grad_output. With
    ``compute_grad=False`` they are empty ``[0]`` tensors and the kernel skips them (no backward then).
    """
    lf, ls = _unit_stride(logits_full), _unit_stride(logits_small)
    loss = _alloc.empty(_loss_shape(lf, reduction), dtype=lf.dtype, device=lf.device)
    gf = _alloc.empty(_grad_shape(lf, compute_grad), dtype=lf.dtype, device=lf.device)
    gs = _alloc.empty(_grad_shape(ls, compute_grad), dtype=ls.dtype, device=ls.device)
    _launch(lf, ls, target, lam_tensor, lam, eps, temperature, reduction, ignore_index, detach_full, compute_grad,
            loss, gf, gs, max_block, count_inline_max)
    return loss, gf, gs


@adjoined_loss_fwd.register_fake
def _(logits_full, logits_small, target, lam_tensor, lam, eps, temperature, reduction, ignore_index,
      detach_full, compute_grad=True, max_block=MAX_BLOCK, count_inline_max=COUNT_INLINE_MAX):
    return (logits_full.new_empty(_loss_shape(logits_full, reduction)),
            logits_full.new_empty(_grad_shape(logits_full, compute_grad)),
            logits_small.new_empty(_grad_shape(logits_small, compute_grad)))


_saved_grads.register("adjoined::adjoined_loss_fwd", 13)


def _check_inplace(lf: torch.Tensor, ls: torch.Tensor) -> None:
    """ValueError unless the gradients can be written over the logits: unit class stride, no overlap."""
    for t in (lf, ls):
        if t.stride(1) != 1 or (t.shape[0] > 1 and t.stride(0) < t.shape[1]):
            raise ValueError("inplace=True needs logits with unit class stride and rows that do not overlap, "
                             f"got strides {t.stride()}; use inplace=False")
    span = lf.element_size() * lf.shape[1]
    a, b = lf.data_ptr(), ls.data_ptr()
    a_end = a + lf.element_size() * lf.stride(0) * (lf.shape[0] - 1) + span
    b_end = b + ls.element_size() * ls.stride(0) * (ls.shape[0] - 1) + span
    if lf.untyped_storage().data_ptr() == ls.untyped_storage().data_ptr() and a < b_end and b < a_end:
        raise ValueError("inplace=True needs logits_full and logits_small in non-overlapping memory; "
                         "use inplace=False")


@torch.library.custom_op("adjoined::adjoined_loss_fwd_inplace", mutates_args=("logits_full", "logits_small"),
                         schema=f"(Tensor(a!) logits_full, Tensor(b!) logits_small, {_ARGS}) -> Tensor")
def adjoined_loss_fwd_inplace(logits_full, logits_small, target, lam_tensor, lam, eps, temperature, reduction,
                              ignore_index, detach_full, compute_grad=True, max_block=MAX_BLOCK,
                              count_inline_max=COUNT_INLINE_MAX):
    """As ``adjoined_loss_fwd``, but the gradients overwrite the logits (which are destroyed); returns the loss.

    With ``compute_grad=False`` the logits are left as they are.
    """
    _check_inplace(logits_full, logits_small)
    loss = _alloc.empty(_loss_shape(logits_full, reduction), dtype=logits_full.dtype, device=logits_full.device)
    _launch(logits_full, logits_small, target, lam_tensor, lam, eps, temperature, reduction, ignore_index,
            detach_full, compute_grad, loss, logits_full, logits_small, max_block, count_inline_max)
    return loss


@adjoined_loss_fwd_inplace.register_fake
def _(logits_full, logits_small, target, lam_tensor, lam, eps, temperature, reduction, ignore_index,
      detach_full, compute_grad=True, max_block=MAX_BLOCK, count_inline_max=COUNT_INLINE_MAX):
    return logits_full.new_empty(_loss_shape(logits_full, reduction))


class _InplaceLoss(torch.autograd.Function):
    """Autograd around ``adjoined_loss_fwd_inplace``: the logits' storage holds the gradients afterwards."""

    @staticmethod
    def forward(ctx, logits_full, logits_small, *args):
        loss = adjoined_loss_fwd_inplace(logits_full, logits_small, *args)
        ctx.save_for_backward(logits_full, logits_small)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        gf, gs = ctx.saved_tensors
        return _saved_grads.scale(gf, grad_loss), _saved_grads.scale(gs, grad_loss), *([None] * 11)


def _triton_loss(logits_full, logits_small, target, lam, eps, temperature, reduction, ignore_index,
                 detach_full, inplace=False, max_block=MAX_BLOCK, count_inline_max=COUNT_INLINE_MAX):
    """Validated inputs -> loss through the custom op (functional, or in place with autograd)."""
    lam_t, lam_f = (lam, 0.0) if isinstance(lam, torch.Tensor) else (None, float(lam))
    grad = inplace or (torch.is_grad_enabled() and (logits_full.requires_grad or logits_small.requires_grad))
    args = (target, lam_t, lam_f, float(eps), float(temperature), reduction, int(ignore_index),
            bool(detach_full), grad, int(max_block), int(count_inline_max))
    if inplace:
        return _InplaceLoss.apply(logits_full, logits_small, *args)
    return adjoined_loss_fwd(logits_full, logits_small, *args)[0]


# ------------------------------------------------------------------------------------- public, reference
def adjoined_loss_ref(logits_full, logits_small, target, lam, eps=1e-6, temperature=1.0,
                      reduction="mean", ignore_index=-100, detach_full=False):
    """Reference adjoined loss in PyTorch ops (fp32 maths, float64 kept); autograd gives both gradients.

    Same contract as :func:`adjoined_loss`, without validation or dispatch.
    """
    up = torch.float64 if logits_full.dtype == torch.float64 else torch.float32
    lf, ls = logits_full.to(up), logits_small.to(up)
    valid = target != ignore_index
    ce = F.cross_entropy(lf, target.long(), ignore_index=ignore_index, reduction="none")
    lf_t = (lf.detach() if detach_full else lf) / temperature
    ls_t = ls / temperature
    if eps > 0:
        p, q = lf_t.softmax(-1), ls_t.softmax(-1)
        kl = (p * ((p + eps).log() - (q + eps).log())).sum(-1)
    else:
        lp, lq = lf_t.log_softmax(-1), ls_t.log_softmax(-1)
        kl = (lp.exp() * (lp - lq)).sum(-1)
    w = lam * temperature ** 2
    if reduction == "none":
        out = ce + w * kl
    elif reduction == "sum":
        out = ce.sum() + w * kl.sum()
    else:
        out = ce.sum() / valid.sum().clamp_min(1) + w * kl.mean()
    return out.to(logits_full.dtype)


def _validate(logits_full, logits_small, target, lam, eps, temperature, reduction):
    check_tensor("logits_full", logits_full, 2)
    check_tensor("logits_small", logits_small, 2)
    check_same({"logits_full": logits_full, "logits_small": logits_small})
    if logits_small.shape != logits_full.shape:
        raise ValueError(f"logits_small must have the shape of logits_full {tuple(logits_full.shape)}, "
                         f"got {tuple(logits_small.shape)}")
    if min(logits_full.shape) < 1:
        raise ValueError(f"logits must have at least one row and one class, got shape {tuple(logits_full.shape)}")
    if not isinstance(target, torch.Tensor) or target.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"target must be an int64 or int32 tensor of class indices, got "
                        f"{getattr(target, 'dtype', type(target).__name__)}")
    if target.shape != logits_full.shape[:1]:
        raise ValueError(f"target must have shape [B]=[{logits_full.shape[0]}], got {tuple(target.shape)}")
    check_same({"logits_full": logits_full, "target": target}, dtype=False)
    if isinstance(lam, torch.Tensor):
        if lam.dim() != 0 or not lam.is_floating_point():
            raise ValueError(f"lam must be a float or a 0-dim floating tensor, got shape {tuple(lam.shape)} "
                             f"dtype {lam.dtype}")
        check_same({"logits_full": logits_full, "lam": lam}, dtype=False)
    elif not isinstance(lam, numbers.Real):
        raise TypeError(f"lam must be a float or a 0-dim tensor, got {type(lam).__name__}")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def adjoined_loss(logits_full, logits_small, target, lam, eps=1e-6, temperature=1.0, reduction="mean",
                  ignore_index=-100, detach_full=False, backend="auto"):
    """Adjoined loss ``CE(logits_full, target) + lam * T^2 * KL(p || q)`` (seeds/000 Def. 1, Eq. 3).

    ``p = softmax(logits_full / T)``, ``q = softmax(logits_small / T)``. With ``eps > 0`` the KL is
    ``sum p (log(p+eps) - log(q+eps))`` (the paper uses 1e-6); with ``eps == 0`` it is computed stably
    from log-softmax. The maths runs in fp32 whatever the logits' dtype.

    Args:
        logits_full, logits_small: ``[B, C]`` with B, C >= 1, float32/float16/bfloat16, same dtype and device.
        target: ``[B]`` int64/int32 class indices; rows equal to ``ignore_index`` get no CE term.
        lam: float or 0-dim tensor on the logits' device (never synced to the host). The triton backend
            treats a tensor ``lam`` as a constant: no gradient flows to it.
        eps: >= 0. temperature: T > 0.
        reduction: "mean" (CE over valid rows, KL over all B rows), "sum", or "none" (``[B]``).
        detach_full: if True, no KL gradient reaches ``logits_full`` (distillation-teacher semantics).
        backend: "auto", "reference", "triton" or "cuda". "triton" runs one fused kernel that also
            computes both gradients (custom op ``adjoined::adjoined_loss_fwd``); a valid target outside
            ``[0, C)`` gives a NaN loss there instead of an error (no host sync).

    Returns:
        0-dim loss (or ``[B]`` for "none") in the logits' dtype. With "mean" and no valid row, the CE part is 0.

    Raises:
        TypeError / ValueError: bad dtypes, shapes, devices or arguments, naming the argument.
        RuntimeError: an explicitly requested backend that is unavailable.
    """
    _validate(logits_full, logits_small, target, lam, eps, temperature, reduction)
    be = resolve_backend(backend, logits_full.device, SUPPORTED)
    if be == "triton":
        return _triton_loss(logits_full, logits_small, target, lam, eps, temperature, reduction,
                            ignore_index, detach_full)
    if be == "cuda":
        from .loss_cuda import adjoined_loss_cuda
        return adjoined_loss_cuda(logits_full, logits_small, target, lam, eps, temperature, reduction,
                                  ignore_index, detach_full)
    return adjoined_loss_ref(logits_full, logits_small, target, lam, eps, temperature, reduction,
                             ignore_index, detach_full)


def adjoined_loss_triton(logits_full, logits_small, target, lam, eps=1e-6, temperature=1.0, reduction="mean",
                         ignore_index=-100, detach_full=False, *, inplace=False, max_block=MAX_BLOCK,
                         count_inline_max=COUNT_INLINE_MAX):
    """:func:`adjoined_loss` on the fused Triton kernel (seeds/000 Def. 1, Eq. 3), with internal knobs.

    Same inputs, result (0-dim or ``[B]`` loss in the logits' dtype) and errors as :func:`adjoined_loss`
    with ``backend="triton"``; runs through ``adjoined::adjoined_loss_fwd`` (or ``..._fwd_inplace``).

    Args (beyond :func:`adjoined_loss`):
        inplace: write the gradients over ``logits_full``/``logits_small`` instead of new buffers. This
            DESTROYS the logits' values (they hold the gradients afterwards) and saves two ``[B, C]``
            buffers. Needs unit class stride and non-overlapping logits; anything else that saved the
            logits for its own backward then fails PyTorch's version check.
        max_block: 16-bit rows with ``next_pow2(C) <= max_block`` (fp32: ``max_block // 2``) stay in
            registers; longer rows take the chunked kernel, ``min(max_block, CHUNK)`` classes per chunk
            (fp32: half, rounded down to a power of 2).
        count_inline_max: under "mean", batches up to this size count valid targets inside the kernel;
            larger ones count them with one device reduction first.

    Raises:
        TypeError / ValueError as :func:`adjoined_loss`; RuntimeError if triton is unavailable.
    """
    _validate(logits_full, logits_small, target, lam, eps, temperature, reduction)
    resolve_backend("triton", logits_full.device, SUPPORTED)
    return _triton_loss(logits_full, logits_small, target, lam, eps, temperature, reduction, ignore_index,
                        detach_full, inplace, max_block, count_inline_max)
