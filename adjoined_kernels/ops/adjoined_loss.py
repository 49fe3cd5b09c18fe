"""Adjoined loss: CE(full) + lam * T^2 * KL(p_full || q_small) (seeds/000 Def. 1, Eq. 3; DESIGN §1).

One file, top to bottom: the fused Triton kernels (loss and both gradients in the forward pass), their
launcher, the ``adjoined::`` custom ops with autograd, the public function, and the reference.

Kernel layout: one program per row. Rows with ``next_pow2(C) <= max_block`` live in registers
(``_loss_row_kernel``). The default max_block is 8192, not 32768: two fp32 rows of 32K classes are 256 KB,
a whole SM register file, and ptxas (sm_90) spills 3.5 KB per thread at 32K and 0.4 KB at 16K, none up to
8K. Longer rows take ``_loss_chunked_kernel``: a first pass over chunks keeps online max / sum-exp for
``lf``, ``lf/T`` and ``ls/T`` (and, for eps == 0, the KL numerator under the same rescaling); for eps > 0
a second pass sums KL, ``<p, b>`` and ``sum r`` from explicit p and q; the last pass writes both gradients.
So eps == 0 reads the logits twice, eps > 0 three times. Under "mean"/"sum" a one-program kernel
(``_sum_rows_kernel``) then reduces the per-row terms in a fixed order (deterministic).
Nothing syncs with the host: lam, n_valid and grad_output stay on the device.
"""
from __future__ import annotations

import contextlib
import numbers

import torch
import torch.nn.functional as F

from .._backend import resolve_backend, triton_interpreting
from .._checks import check_same, check_tensor
from . import _alloc

try:
    import triton
    import triton.language as tl
    _jit = triton.jit
except ImportError:  # the "triton" backend then reports itself unavailable (_backend.py)
    triton = tl = None

    def _jit(fn):
        return fn

SUPPORTED = ("triton", "cuda")
REDUCTIONS = ("mean", "sum", "none")
_RED_CODE = {"none": 0, "sum": 1, "mean": 2}
MAX_BLOCK = 8192           # rows up to this many classes (next power of 2) stay in registers
CHUNK = 2048               # chunk width of the long-row path (8 warps: 8 values per thread)
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
def _softmax(v):
    """softmax(v), log_softmax(v) and logsumexp(v) of a whole row held in registers."""
    m = tl.max(v, 0)
    e = tl.exp(v - m)
    s = tl.sum(e, 0)
    lse = m + tl.log(s)
    return e * (1.0 / s), v - lse, lse


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
def _probs(x, y, lse1, lse_p, lse_q, inv_t, T_ONE: tl.constexpr):
    """p1 = softmax(x), p = softmax(x/T), q = softmax(y/T), and log p, log q."""
    if T_ONE:
        xt = x
        yt = y
    else:
        xt = x * inv_t
        yt = y * inv_t
    logp = xt - lse_p
    logq = yt - lse_q
    return tl.exp(x - lse1), tl.exp(logp), tl.exp(logq), logp, logq


@_jit
def _kl_terms(p, q, logp, logq, eps, EPS_POS: tl.constexpr):
    """Per class: b (DESIGN §1), the KL term, p*b and r = p*q/(q+eps). With eps == 0, b = log p - log q."""
    if EPS_POS:
        d = tl.log(p + eps) - tl.log(q + eps)
        b = d + p / (p + eps)
        kl_e = p * d
        pb_e = p * b
        r = p * q / (q + eps)
    else:
        b = logp - logq
        kl_e = tl.where(p > 0, p * b, 0.0)
        pb_e = kl_e
        r = p
    return b, kl_e, pb_e, r


@_jit
def _grads(p1, p, q, b, r, is_t, ce_coef, kl_full, kl_small, pb, rs, EPS_POS: tl.constexpr):
    """d/dlogits_full and d/dlogits_small in fp32; the true class's p1 - 1 is formed in fp32."""
    g_full = ce_coef * (p1 - tl.where(is_t, 1.0, 0.0))
    if EPS_POS:
        g_full += kl_full * p * (b - pb)
        g_small = kl_small * (q * rs - r)
    else:
        g_full += kl_full * tl.where(p > 0, p * (b - pb), 0.0)
        g_small = kl_small * (q - p)
    return g_full, g_small


@_jit
def _row_ce(valid, t, C, lse1, x_t):
    """CE of one row: 0 when ignored, NaN when the target is out of [0, C)."""
    ok = (t >= 0) & (t < C)
    return tl.where(valid, tl.where(ok, lse1 - x_t, float("nan")), 0.0)


@_jit
def _store_row_loss(loss_ptr, row, ce, kl, w, ce_scale, kl_scale, REDUCTION: tl.constexpr,
                    MANUAL_RTNE: tl.constexpr):
    """"none": the row's loss in the output dtype; otherwise its scaled fp32 share of the total."""
    if REDUCTION == 0:
        _store_cast(loss_ptr + row, ce + w * kl, None, MANUAL_RTNE)
    else:
        tl.store(loss_ptr + row, ce * ce_scale + w * kl * kl_scale)


@_jit
def _loss_row_kernel(lf_ptr, ls_ptr, tgt_ptr, lam_ptr, nvalid_ptr, loss_ptr, gf_ptr, gs_ptr,
                     lam, eps, temp, inv_t, B, C, ignore_index, s_lf, s_ls, s_gf, s_gs,
                     BLOCK: tl.constexpr, BLOCK_B: tl.constexpr, REDUCTION: tl.constexpr,
                     LAM_PTR: tl.constexpr, COUNT_INLINE: tl.constexpr, EPS_POS: tl.constexpr,
                     T_ONE: tl.constexpr, DETACH: tl.constexpr, GRAD: tl.constexpr, MANUAL_RTNE: tl.constexpr):
    """One row in registers (BLOCK = next_pow2(C)): loss term and both gradients."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < C
    x = _load_f32(lf_ptr + row * s_lf, cols, mask)
    y = _load_f32(ls_ptr + row * s_ls, cols, mask)
    t = tl.load(tgt_ptr + row)
    valid = t != ignore_index
    p1, logp1, lse1 = _softmax(x)
    if T_ONE:
        p, logp = p1, logp1
        q, logq, _lse_q = _softmax(y)
    else:
        p, logp, _lse_p = _softmax(x * inv_t)
        q, logq, _lse_q = _softmax(y * inv_t)
    b, kl_e, pb_e, r = _kl_terms(p, q, logp, logq, eps, EPS_POS)
    kl = tl.sum(kl_e, 0)
    ce_scale, kl_scale = _scales(tgt_ptr, nvalid_ptr, B, ignore_index, REDUCTION, COUNT_INLINE, BLOCK_B)
    ce_coef, kl_full, kl_small, w = _coefs(lam_ptr, lam, temp, valid, ce_scale, kl_scale, LAM_PTR, DETACH)
    if GRAD:
        g_full, g_small = _grads(p1, p, q, b, r, (cols == t) & valid, ce_coef, kl_full, kl_small,
                                 tl.sum(pb_e, 0), tl.sum(r, 0), EPS_POS)
        tl.debug_barrier()  # in place: every thread has read the row before any thread overwrites it
        _store_cast(gf_ptr + row * s_gf + cols, g_full, mask, MANUAL_RTNE)
        _store_cast(gs_ptr + row * s_gs + cols, g_small, mask, MANUAL_RTNE)
    x_t = tl.sum(tl.where(cols == t, x, 0.0), 0)
    ce = _row_ce(valid, t, C, lse1, x_t)
    _store_row_loss(loss_ptr, row, ce, kl, w, ce_scale, kl_scale, REDUCTION, MANUAL_RTNE)


@_jit
def _online_update(v, m, s):
    """Fold a chunk into a running (max, sum of exp): returns new max, new sum, rescale factor, exp(v - max)."""
    m_new = tl.maximum(m, tl.max(v, 0))
    e = tl.exp(v - m_new)
    alpha = tl.exp(m - m_new)
    return m_new, s * alpha + tl.sum(e, 0), alpha, e


@_jit
def _stats_pass(lf_row, ls_row, C, inv_t, CHUNK: tl.constexpr, T_ONE: tl.constexpr):
    """Pass 1: log-sum-exp of lf, lf/T, ls/T, and E_p[lf/T - ls/T] (the eps == 0 KL numerator)."""
    m1 = float("-inf")
    s1 = 0.0
    mp = float("-inf")
    sp = 0.0
    mq = float("-inf")
    sq = 0.0
    num = 0.0
    for start in range(0, C, CHUNK):
        cols = start + tl.arange(0, CHUNK)
        mask = cols < C
        x = _load_f32(lf_row, cols, mask)
        y = _load_f32(ls_row, cols, mask)
        m1, s1, _a1, _e1 = _online_update(x, m1, s1)
        xt = x if T_ONE else x * inv_t
        yt = y if T_ONE else y * inv_t
        mp, sp, alpha, ep = _online_update(xt, mp, sp)
        mq, sq, _aq, _eq = _online_update(yt, mq, sq)
        num = num * alpha + tl.sum(tl.where(ep > 0, ep * (xt - yt), 0.0), 0)
    lse_p = mp + tl.log(sp)
    lse_q = mq + tl.log(sq)
    return m1 + tl.log(s1), lse_p, lse_q, num / sp - lse_p + lse_q


@_jit
def _sums_pass(lf_row, ls_row, C, lse1, lse_p, lse_q, inv_t, eps, CHUNK: tl.constexpr,
               T_ONE: tl.constexpr):
    """Pass 2 (eps > 0): KL, <p, b> and sum r from explicit p and q."""
    kl = tl.zeros([CHUNK], dtype=tl.float32)
    pb = tl.zeros([CHUNK], dtype=tl.float32)
    rs = tl.zeros([CHUNK], dtype=tl.float32)
    for start in range(0, C, CHUNK):
        cols = start + tl.arange(0, CHUNK)
        mask = cols < C
        x = _load_f32(lf_row, cols, mask)
        y = _load_f32(ls_row, cols, mask)
        _p1, p, q, logp, logq = _probs(x, y, lse1, lse_p, lse_q, inv_t, T_ONE)
        _b, kl_e, pb_e, r = _kl_terms(p, q, logp, logq, eps, True)
        kl += kl_e
        pb += pb_e
        rs += r
    return tl.sum(kl, 0), tl.sum(pb, 0), tl.sum(rs, 0)


@_jit
def _grad_pass(lf_row, ls_row, gf_row, gs_row, C, t, valid, lse1, lse_p, lse_q, inv_t, eps, ce_coef,
               kl_full, kl_small, pb, rs, CHUNK: tl.constexpr, EPS_POS: tl.constexpr, T_ONE: tl.constexpr,
               MANUAL_RTNE: tl.constexpr):
    """Last pass: both gradients, chunk by chunk.

    In place, a chunk must be read by every thread (replicas included, when CHUNK is smaller than the
    layout) before any thread writes it: hence the barrier.
    """
    for start in range(0, C, CHUNK):
        cols = start + tl.arange(0, CHUNK)
        mask = cols < C
        x = _load_f32(lf_row, cols, mask)
        y = _load_f32(ls_row, cols, mask)
        p1, p, q, logp, logq = _probs(x, y, lse1, lse_p, lse_q, inv_t, T_ONE)
        b, _kl_e, _pb_e, r = _kl_terms(p, q, logp, logq, eps, EPS_POS)
        g_full, g_small = _grads(p1, p, q, b, r, (cols == t) & valid, ce_coef, kl_full, kl_small, pb, rs,
                                 EPS_POS)
        tl.debug_barrier()
        _store_cast(gf_row + cols, g_full, mask, MANUAL_RTNE)
        _store_cast(gs_row + cols, g_small, mask, MANUAL_RTNE)


@_jit
def _loss_chunked_kernel(lf_ptr, ls_ptr, tgt_ptr, lam_ptr, nvalid_ptr, loss_ptr, gf_ptr, gs_ptr,
                         lam, eps, temp, inv_t, B, C, ignore_index, s_lf, s_ls, s_gf, s_gs,
                         CHUNK: tl.constexpr, BLOCK_B: tl.constexpr, REDUCTION: tl.constexpr,
                         LAM_PTR: tl.constexpr, COUNT_INLINE: tl.constexpr, EPS_POS: tl.constexpr,
                         T_ONE: tl.constexpr, DETACH: tl.constexpr, GRAD: tl.constexpr, MANUAL_RTNE: tl.constexpr):
    """One long row per program, in chunks of CHUNK classes: loss term and both gradients."""
    row = tl.program_id(0).to(tl.int64)
    lf_row = lf_ptr + row * s_lf
    ls_row = ls_ptr + row * s_ls
    t = tl.load(tgt_ptr + row)
    valid = t != ignore_index
    # Read before pass 1, whose reductions (CTA barriers) then order it before any in-place store.
    x_t = tl.load(lf_row + t, mask=valid & (t >= 0) & (t < C), other=0.0).to(tl.float32)
    lse1, lse_p, lse_q, kl = _stats_pass(lf_row, ls_row, C, inv_t, CHUNK, T_ONE)
    pb = kl
    rs = 0.0
    if EPS_POS:
        kl, pb, rs = _sums_pass(lf_row, ls_row, C, lse1, lse_p, lse_q, inv_t, eps, CHUNK, T_ONE)
    ce_scale, kl_scale = _scales(tgt_ptr, nvalid_ptr, B, ignore_index, REDUCTION, COUNT_INLINE, BLOCK_B)
    ce_coef, kl_full, kl_small, w = _coefs(lam_ptr, lam, temp, valid, ce_scale, kl_scale, LAM_PTR, DETACH)
    if GRAD:
        _grad_pass(lf_row, ls_row, gf_ptr + row * s_gf, gs_ptr + row * s_gs, C, t, valid, lse1, lse_p, lse_q,
                   inv_t, eps, ce_coef, kl_full, kl_small, pb, rs, CHUNK, EPS_POS, T_ONE, MANUAL_RTNE)
    ce = _row_ce(valid, t, C, lse1, x_t)
    _store_row_loss(loss_ptr, row, ce, kl, w, ce_scale, kl_scale, REDUCTION, MANUAL_RTNE)


@_jit
def _sum_rows_kernel(rows_ptr, out_ptr, B, BLOCK_R: tl.constexpr, MANUAL_RTNE: tl.constexpr):
    """One program: out = sum of the B fp32 row terms, in a fixed order, stored in out's dtype."""
    acc = tl.zeros([BLOCK_R], dtype=tl.float32)
    for start in range(0, B, BLOCK_R):
        offs = start + tl.arange(0, BLOCK_R)
        acc += tl.load(rows_ptr + offs, mask=offs < B, other=0.0)
    _store_cast(out_ptr, tl.sum(acc, 0), None, MANUAL_RTNE)


# ---------------------------------------------------------------------------------------------- launcher
def _row_warps(block: int) -> int:
    """8 values of each row per thread. ptxas (sm_90) then uses 60-102 registers; at BLOCK=8192 it spills
    76 bytes for eps > 0 with T != 1, nothing elsewhere."""
    return min(32, max(4, block // 256))


def _device_ctx(t: torch.Tensor):
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _launch(lf, ls, target, lam_t, lam, eps, temperature, reduction, ignore_index, detach_full, compute_grad,
            loss, gf, gs, max_block, count_inline_max):
    """Run the fused kernel: writes ``loss`` (0-dim or [B]) and, if ``compute_grad``, the gradients into
    ``gf``/``gs``."""
    B, C = lf.shape
    red = _RED_CODE[reduction]
    target = target.contiguous()
    rows = loss if red == 0 else _alloc.empty((B,), dtype=torch.float32, device=lf.device)
    count_inline = B <= count_inline_max
    n_valid = target
    if red == 2 and not count_inline:
        n_valid = (target != ignore_index).sum(dtype=torch.int32)
    rtne = triton_interpreting() and lf.dtype == torch.bfloat16
    meta = dict(BLOCK_B=min(triton.next_power_of_2(B), 1024), REDUCTION=red, LAM_PTR=lam_t is not None,
                COUNT_INLINE=count_inline, EPS_POS=eps > 0, T_ONE=temperature == 1.0, DETACH=detach_full,
                GRAD=compute_grad, MANUAL_RTNE=rtne)
    args = (lf, ls, target, lf if lam_t is None else lam_t, n_valid, rows, gf, gs,
            float(lam), float(eps), float(temperature), 1.0 / temperature, B, C, ignore_index,
            lf.stride(0), ls.stride(0), gf.stride(0), gs.stride(0))
    block = triton.next_power_of_2(C)
    with _device_ctx(lf):
        if block <= max_block:
            _loss_row_kernel[(B,)](*args, BLOCK=block, num_warps=_row_warps(block), **meta)
        else:
            _loss_chunked_kernel[(B,)](*args, CHUNK=min(max_block, CHUNK), num_warps=8, **meta)
        if red != 0:
            _sum_rows_kernel[(1,)](rows, loss, B, BLOCK_R=min(triton.next_power_of_2(B), 1024),
                                   MANUAL_RTNE=rtne, num_warps=4)


def _unit_stride(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(1) == 1 else t.contiguous()


def _loss_shape(lf: torch.Tensor, reduction: str):
    return (lf.shape[0],) if reduction == "none" else ()


def _grad_shape(t: torch.Tensor, compute_grad: bool):
    return t.shape if compute_grad else (0,)


# ------------------------------------------------------------------------------------ custom ops, autograd
_ARGS = ("Tensor target, Tensor? lam_tensor, float lam, float eps, float temperature, str reduction, "
         "int ignore_index, bool detach_full, bool compute_grad=True, int max_block=8192, "
         "int count_inline_max=1024")


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


def _scale(grad: torch.Tensor, grad_output: torch.Tensor) -> torch.Tensor:
    """The saved gradient times grad_output (0-dim, or [B] for reduction="none"), on the device."""
    return grad * (grad_output.unsqueeze(-1) if grad_output.dim() == 1 else grad_output)


def _fwd_setup_context(ctx, inputs, output):
    _, gf, gs = output
    ctx.mark_non_differentiable(gf, gs)
    ctx.save_for_backward(gf, gs)


def _fwd_backward(ctx, grad_loss, _grad_gf, _grad_gs):
    gf, gs = ctx.saved_tensors
    need = ctx.needs_input_grad
    if (need[0] or need[1]) and gf.numel() == 0:
        raise RuntimeError("adjoined::adjoined_loss_fwd ran with compute_grad=False; it has no gradients to give")
    return (_scale(gf, grad_loss) if need[0] else None, _scale(gs, grad_loss) if need[1] else None,
            *([None] * 11))


adjoined_loss_fwd.register_autograd(_fwd_backward, setup_context=_fwd_setup_context)


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
        return _scale(gf, grad_loss), _scale(gs, grad_loss), *([None] * 11)


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
        max_block: rows with ``next_pow2(C) <= max_block`` stay in registers; longer rows take the chunked
            kernel with chunks of ``min(max_block, 2048)``.
        count_inline_max: under "mean", batches up to this size count valid targets inside the kernel;
            larger ones count them with one device reduction first.

    Raises:
        TypeError / ValueError as :func:`adjoined_loss`; RuntimeError if triton is unavailable.
    """
    _validate(logits_full, logits_small, target, lam, eps, temperature, reduction)
    resolve_backend("triton", logits_full.device, SUPPORTED)
    return _triton_loss(logits_full, logits_small, target, lam, eps, temperature, reduction, ignore_index,
                        detach_full, inplace, max_block, count_inline_max)
