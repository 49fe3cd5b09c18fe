"""The Triton loss backend: the planner and launcher of the fused kernels (row.py: rows in registers;
chunked.py: long rows), registered as ``adjoined::triton_adjoined_loss_fwd`` with the contract of
ops/loss/schema.py, plus a Triton-only in-place variant (:func:`adjoined_loss_triton`, ``inplace=True``).

One program per row computes the loss term and both gradients; nothing syncs with the host (lam, n_valid and
grad_output stay on the device), and under "mean"/"sum" one program sums the per-row terms in a fixed order
(docs/kernels.md, "The loss kernels").
"""
from __future__ import annotations

import contextlib

import torch

from ... import _alloc
from ...._backend import triton_interpreting
from ..schema import RED_CODE, SCHEMA, grad_shape, loss_shape, register, scale
from .chunked import _loss_chunked_kernel, _sum_rows_kernel
from .row import _loss_row_kernel  # noqa: F401 - read by tools/loss_ptxas_report.py

MAX_BLOCK = 32768          # 16-bit rows up to this many classes (next power of 2) stay in registers; fp32: half
CHUNK = 4096               # classes per iteration of the long-row path (16-bit; fp32: half)
CHUNK_WARPS = 8
ROW_MIN_WARPS = 2          # short rows: narrower vectors rather than fewer warps
MAXNREG = 64               # registers per thread, both paths: 1024 threads per SM
COUNT_INLINE_MAX = 1024    # "mean": each program counts valid targets itself up to this batch size

# Test and benchmark knobs (:func:`knobs`), read by every launch; not part of the op's schema.
_KNOBS = {"max_block": MAX_BLOCK, "count_inline_max": COUNT_INLINE_MAX}


@contextlib.contextmanager
def knobs(max_block=MAX_BLOCK, count_inline_max=COUNT_INLINE_MAX):
    """Within the block, launches use these limits (see :func:`adjoined_loss_triton`)."""
    old = dict(_KNOBS)
    _KNOBS.update(max_block=int(max_block), count_inline_max=int(count_inline_max))
    try:
        yield
    finally:
        _KNOBS.update(old)


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
    """Smallest power of 2 >= n (1 for n <= 1); ``triton.next_power_of_2`` costs microseconds per call."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def _eps_mode(eps: float) -> int:
    """The kernels' EPS_POS: 0 for eps == 0, 2 where one rcp serves both 1/(p+eps) and 1/(q+eps)
    (``_eps_terms``), 1 for 0 < eps < 2^-60."""
    return 0 if eps == 0 else 2 if eps >= 2.0 ** -60 else 1


def _launch(lf, ls, target, lam, eps, temperature, red, ignore_index, detach_full, compute_grad, loss, gf, gs):
    """Run the fused kernel: writes ``loss`` (0-dim or [B]) and, if ``compute_grad``, the gradients into
    ``gf``/``gs`` (which may be ``lf``/``ls`` themselves: in place)."""
    B, C = lf.shape
    target = target.contiguous()
    rows = loss if red == 0 else _alloc.empty((B,), dtype=torch.float32, device=lf.device)
    count_inline = B <= _KNOBS["count_inline_max"]
    n_valid = target
    if red == 2 and not count_inline:
        n_valid = (target != ignore_index).sum(dtype=torch.int32)
    interpreting = triton_interpreting()
    rtne = interpreting and lf.dtype == torch.bfloat16
    # LAM_PTR: the schema's lam is a tensor (the kernels' immediate-lam path is for compiling them alone)
    meta = dict(BLOCK_B=min(_next_pow2(B), 1024), REDUCTION=red, LAM_PTR=True, COUNT_INLINE=count_inline,
                EPS_POS=_eps_mode(eps), T_ONE=temperature == 1.0, DETACH=detach_full, GRAD=compute_grad,
                MANUAL_RTNE=rtne, FAST=not interpreting)
    # eps is only ever added to a probability before rcp/lg2.approx.ftz: keep it a normal fp32 number
    eps_k = max(float(eps), 2.0 ** -126) if eps > 0 else 0.0
    args = (lf, ls, target, lam, n_valid, rows, gf, gs, 0.0, eps_k, float(temperature), 1.0 / temperature, B, C,
            ignore_index, lf.stride(0), ls.stride(0), gf.stride(0), gs.stride(0))
    kernel, r, v, warps = _plan(C, lf.element_size(), _KNOBS["max_block"])
    if kernel is _loss_chunked_kernel:
        meta["INPLACE"] = gf is lf
    with torch.cuda.device(lf.device) if lf.is_cuda else contextlib.nullcontext():
        kernel[(B,)](*args, R=r, V=v, num_warps=warps, maxnreg=MAXNREG, **meta)
        if red != 0:
            _sum_rows_kernel[(1,)](rows, loss, B, BLOCK_R=min(_next_pow2(B), 1024), MANUAL_RTNE=rtne, num_warps=4)


def _unit_stride(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(1) == 1 else t.contiguous()


def adjoined_loss_fwd(logits_full, logits_small, target, lam, eps, temperature, reduction, ignore_index,
                      detach_full, compute_grad):
    """The ``adjoined_loss_fwd`` schema (ops/loss/schema.py) on the fused kernel."""
    lf, ls = _unit_stride(logits_full), _unit_stride(logits_small)
    loss = _alloc.empty(loss_shape(lf, reduction), dtype=lf.dtype, device=lf.device)
    gf = _alloc.empty(grad_shape(lf, compute_grad), dtype=lf.dtype, device=lf.device)
    gs = _alloc.empty(grad_shape(ls, compute_grad), dtype=ls.dtype, device=ls.device)
    _launch(lf, ls, target, lam, eps, temperature, reduction, ignore_index, detach_full, compute_grad, loss, gf, gs)
    return loss, gf, gs


torch.library.custom_op("adjoined::triton_adjoined_loss_fwd", adjoined_loss_fwd, mutates_args=(), schema=SCHEMA)
OP = register("adjoined::triton_adjoined_loss_fwd")


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


_INPLACE_SCHEMA = SCHEMA.replace("Tensor logits_full, Tensor logits_small", "Tensor(a!) logits_full, Tensor(b!) "
                                 "logits_small").replace("-> (Tensor, Tensor, Tensor)", "-> Tensor")


@torch.library.custom_op("adjoined::triton_adjoined_loss_fwd_inplace", mutates_args=("logits_full", "logits_small"),
                         schema=_INPLACE_SCHEMA)
def adjoined_loss_fwd_inplace(logits_full, logits_small, target, lam, eps, temperature, reduction, ignore_index,
                              detach_full, compute_grad):
    """As ``adjoined_loss_fwd``, but the gradients overwrite the logits (which are destroyed); returns the loss.

    With ``compute_grad=False`` the logits are left as they are.
    """
    _check_inplace(logits_full, logits_small)
    loss = _alloc.empty(loss_shape(logits_full, reduction), dtype=logits_full.dtype, device=logits_full.device)
    _launch(logits_full, logits_small, target, lam, eps, temperature, reduction, ignore_index, detach_full,
            compute_grad, loss, logits_full, logits_small)
    return loss


@adjoined_loss_fwd_inplace.register_fake
def _(logits_full, logits_small, target, lam, eps, temperature, reduction, ignore_index, detach_full, compute_grad):
    return logits_full.new_empty(loss_shape(logits_full, reduction))


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
        return scale(gf, grad_loss), scale(gs, grad_loss), *([None] * 8)


def adjoined_loss_triton(logits_full, logits_small, target, lam, eps=1e-6, temperature=1.0, reduction="mean",
                         ignore_index=-100, detach_full=False, *, inplace=False, max_block=MAX_BLOCK,
                         count_inline_max=COUNT_INLINE_MAX):
    """:func:`adjoined_kernels.adjoined_loss` on the fused Triton kernel, with internal knobs.

    Same inputs, result (0-dim or ``[B]`` loss in the logits' dtype) and errors as :func:`adjoined_loss`
    with ``backend="triton"``.

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
    """
    from .. import _resolve, adjoined_loss, lam_tensor, validate
    if not inplace:
        with knobs(max_block, count_inline_max):
            return adjoined_loss(logits_full, logits_small, target, lam, eps, temperature, reduction, ignore_index,
                                 detach_full, backend="triton")
    validate(logits_full, logits_small, target, lam, eps, temperature, reduction)
    _resolve("triton", logits_full.device)  # RuntimeError where it cannot run
    args = (target, lam_tensor(lam, logits_full), float(eps), float(temperature), RED_CODE[reduction],
            int(ignore_index), bool(detach_full), True)
    with knobs(max_block, count_inline_max):
        return _InplaceLoss.apply(logits_full, logits_small, *args)
