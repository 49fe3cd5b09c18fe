"""Adjoined convolution on the compiled CUDA extension (``backend="cuda"``; DESIGN §1, seeds/000 Eq. 1-2).

    z_full  = conv2d(x_full,  W,                    b)
    z_small = (conv2d(x_small, W[:c_out_s, :c_in_s]) + b[:c_out_s]) * small_scale

The kernels live in ``csrc/`` (schemas in ``csrc/torch_bindings.cpp``):

- ``adjoined::cuda_conv2d_fprop``: one launch for both branches, a grouped implicit GEMM over NHWC
  (M = N·P·Q, N = C_out, K = R·S·C_in). A block that owns a full output tile also owns the small tile
  with the same index when both exist, and feeds each weight tile of the shared channel prefix to both
  accumulators. Bias and the ``small_scale`` gate are applied in the epilogue.
- ``adjoined::cuda_conv2d_dgrad``: the same kernel with M = N·H·W, N = C_in, K = R·S·C_out; ``dz_small``
  is multiplied by ``small_scale`` first (one elementwise op: the scale runs along K). For stride > 1 the rows are split into the
  ``sh x sw`` phase classes of the input pixels (sub-pixel decomposition), each visiting only the
  filter taps that reach it, so a strided dgrad does no MMA work on zero taps. Any dilation works.
- ``adjoined::cuda_conv2d_wgrad``: split-K implicit GEMM (M = C_out, N = R·S·C_in, K = N·P·Q) into an fp32
  workspace; tiles inside the ``[:c_out_s, :c_in_s]`` block take K blocks of both branches. A second
  kernel sums the splits in a fixed order, so dW is deterministic without atomics; db and
  ``d small_scale`` come from per-channel partial sums reduced the same way.

fp16/bf16 run on tensor cores with fp32 accumulation. fprop and dgrad with 16-byte rows (every channel
count of the A source and the weight divisible by 8, aligned pointers; GPUs of compute capability >= 8.0)
take a pipelined kernel: cp.async copies into a 3-stage shared-memory ring, ldmatrix, mma.sync m16n8k16
(``csrc/conv_rowgemm_tc.cuh``); other shapes take the general kernel (register-staged loads, WMMA
16x16x16), and so does wgrad. fp32 runs on an exact fp32 FMA path (no TF32). Inputs in any memory format are converted to channels_last; outputs keep their input's format.

The extension is imported lazily (:func:`load`), so the package imports without it. Loading it also
registers the ops' fake kernels (for torch.compile / opcheck) and the autograd formula of the fprop op.
"""
from __future__ import annotations

import importlib
import threading

import torch

from .._backend import _cuda_status

_lock = threading.Lock()
_registered = False
_CL = torch.channels_last


def load() -> None:
    """Import ``adjoined_kernels._C`` and register the fake kernels and autograd of its conv ops (once).

    Raises:
        RuntimeError: the extension is not built, saying how to build it.
    """
    global _registered
    if _registered:
        return
    with _lock:
        if _registered:
            return
        reason = _cuda_status()
        if reason is not None:
            raise RuntimeError(f"backend='cuda' is unavailable: {reason}")
        importlib.import_module("adjoined_kernels._C")
        _register()
        _registered = True


# ---------------------------------------------------------------------------------------------- helpers
def _out_size(size, k, stride, pad, dil):
    """Output length of a 1-D convolution, as in ``torch.nn.functional.conv2d``."""
    return (size + 2 * pad - dil * (k - 1) - 1) // stride + 1


def _is_channels_last(x: torch.Tensor) -> bool:
    """Whether F.conv2d would give ``x``'s output channels_last (an NCHW-contiguous tensor counts as NCHW)."""
    if x.is_contiguous():
        return False
    if x.is_contiguous(memory_format=_CL):
        return True
    return x.stride(1) < x.stride(3)


def _restore_format(out: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The channels_last ``out`` in the memory format of ``like``."""
    return out if _is_channels_last(like) else out.contiguous()


def _empty_cl(shape, like: torch.Tensor) -> torch.Tensor:
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=_CL)


# ------------------------------------------------------------------------------------------ fake kernels
def _fprop_fake(x_full, x_small, weight, bias, small_scale, stride, padding, dilation, c_out_s, save_pre,
                share_weights):
    c_out, _, kh, kw = weight.shape
    shapes = []
    for x, c in ((x_full, c_out), (x_small, c_out_s)):
        shapes.append((x.shape[0], c, _out_size(x.shape[2], kh, stride[0], padding[0], dilation[0]),
                       _out_size(x.shape[3], kw, stride[1], padding[1], dilation[1])))
    u = _empty_cl(shapes[1], x_full) if save_pre else x_full.new_empty((0,))
    return _empty_cl(shapes[0], x_full), _empty_cl(shapes[1], x_full), u


def _dgrad_fake(dz_full, dz_small, weight, small_scale, full_hw, small_hw, c_in_s, stride, padding, dilation,
                share_weights):
    c_in = weight.shape[1]
    return (_empty_cl((dz_full.shape[0], c_in, full_hw[0], full_hw[1]), dz_full),
            _empty_cl((dz_small.shape[0], c_in_s, small_hw[0], small_hw[1]), dz_full))


def _wgrad_fake(x_full, x_small, dz_full, dz_small, small_scale, u_small, kernel_size, stride, padding, dilation,
                need_weight, need_bias):
    c_out, c_in, c_out_s = dz_full.shape[1], x_full.shape[1], dz_small.shape[1]
    dw = _empty_cl((c_out, c_in, kernel_size[0], kernel_size[1]), x_full) if need_weight else x_full.new_empty((0,))
    db = x_full.new_empty((c_out,)) if need_bias else x_full.new_empty((0,))
    need_scale = u_small is not None and u_small.numel() > 0
    ds = x_full.new_empty((c_out_s,)) if need_scale else x_full.new_empty((0,))
    return dw, db, ds


# -------------------------------------------------------------------------------------------- autograd
def _fprop_setup_context(ctx, inputs, output):
    x_full, x_small, weight, bias, small_scale, stride, padding, dilation, c_out_s, save_pre, share = inputs
    ctx.save_for_backward(x_full, x_small, weight, small_scale, output[2])
    ctx.conv = (list(stride), list(padding), list(dilation))
    ctx.share = bool(share)
    ctx.has_bias = bias is not None
    ctx.mark_non_differentiable(output[2])


def _fprop_backward(ctx, dz_full, dz_small, _du_small):
    """dx via cuda_conv2d_dgrad; dW, db and d small_scale via cuda_conv2d_wgrad (DESIGN §1)."""
    x_full, x_small, weight, small_scale, u_small = ctx.saved_tensors
    stride, padding, dilation = ctx.conv
    need = ctx.needs_input_grad
    dx_full = dx_small = dw = db = dscale = None
    if need[0] or need[1]:
        dx_full, dx_small = torch.ops.adjoined.cuda_conv2d_dgrad(
            dz_full, dz_small, weight, small_scale, [x_full.shape[2], x_full.shape[3]],
            [x_small.shape[2], x_small.shape[3]], x_small.shape[1], stride, padding, dilation, ctx.share)
    need_w = need[2]
    need_b = ctx.has_bias and need[3]
    need_s = small_scale is not None and need[4]
    if need_s and u_small.numel() != dz_small.numel():
        raise RuntimeError("adjoined::cuda_conv2d_fprop: the gradient of small_scale needs save_pre=True in the "
                           "forward call (adjoined_conv2d_cuda sets it when small_scale requires grad)")
    if need_w or need_b or need_s:
        dw, db, dscale = torch.ops.adjoined.cuda_conv2d_wgrad(
            x_full, x_small, dz_full, dz_small, small_scale, u_small if need_s else None,
            [weight.shape[2], weight.shape[3]], stride, padding, dilation, need_w, need_b)
    return (dx_full if need[0] else None, dx_small if need[1] else None, dw if need_w else None,
            db if need_b else None, dscale if need_s else None, None, None, None, None, None, None)


def _register() -> None:
    """Fake kernels for the three conv ops and autograd for the fprop op (each guarded: the op must exist)."""
    ops = torch.ops.adjoined
    if hasattr(ops, "cuda_conv2d_fprop"):
        torch.library.register_fake("adjoined::cuda_conv2d_fprop")(_fprop_fake)
        torch.library.register_autograd("adjoined::cuda_conv2d_fprop", _fprop_backward,
                                        setup_context=_fprop_setup_context)
    if hasattr(ops, "cuda_conv2d_dgrad"):
        torch.library.register_fake("adjoined::cuda_conv2d_dgrad")(_dgrad_fake)
    if hasattr(ops, "cuda_conv2d_wgrad"):
        torch.library.register_fake("adjoined::cuda_conv2d_wgrad")(_wgrad_fake)


class _EagerConv(torch.autograd.Function):
    """``adjoined::cuda_conv2d_fprop`` with the same autograd formulas, minus the Python autograd kernel
    that ``register_autograd`` installs (~100 µs of host time per call in torch 2.x). torch.compile
    traces the op instead. The forward takes ``ctx`` itself: a separate ``setup_context`` makes ``apply``
    bind arguments with ``inspect``."""

    @staticmethod
    def forward(ctx, *inputs):
        with torch._C._AutoDispatchBelowAutograd():  # straight to the CUDA kernel
            output = torch.ops.adjoined.cuda_conv2d_fprop(*inputs)
        _fprop_setup_context(ctx, inputs, output)
        return output

    @staticmethod
    def backward(ctx, dz_full, dz_small, du_small):
        return _fprop_backward(ctx, dz_full, dz_small, du_small)


# ------------------------------------------------------------------------------------------ public entry
def adjoined_conv2d_cuda(x_full, x_small, weight, bias, stride, padding, dilation, c_out_s, small_scale=None,
                         share_weights=True):
    """Adjoined conv on the CUDA extension, differentiable (DESIGN §1; seeds/000 Eq. 1-2).

    Args: as :func:`adjoined_kernels.adjoined_conv2d` after its validation: CUDA tensors of one dtype
    (float32/float16/bfloat16) and device; ``stride``/``padding``/``dilation`` int pairs; ``c_out_s`` an int;
    ``bias`` ``[C_out]`` or None; ``small_scale`` ``[c_out_s]`` or None. ``share_weights=False`` turns off
    weight-tile sharing between the branches in fprop and dgrad (same results; for tests and benchmarks).

    Returns:
        ``(z_full, z_small)``, each in the memory format of its input (like F.conv2d).

    Gradients reach x_full, x_small, weight, bias and small_scale (dgrad and wgrad ops in the backward).
    torch.compile traces the ops; eager calls skip the op's Python autograd kernel. Nothing syncs with
    the host. Raises RuntimeError when the extension is not built.
    """
    load()
    save_pre = small_scale is not None and small_scale.requires_grad and torch.is_grad_enabled()
    fprop = torch.ops.adjoined.cuda_conv2d_fprop if torch.compiler.is_compiling() else _EagerConv.apply
    zf, zs, _ = fprop(
        x_full.contiguous(memory_format=_CL), x_small.contiguous(memory_format=_CL),
        weight.contiguous(memory_format=_CL), bias, small_scale, [int(v) for v in stride],
        [int(v) for v in padding], [int(v) for v in dilation], int(c_out_s), bool(save_pre), bool(share_weights))
    return _restore_format(zf, x_full), _restore_format(zs, x_small)
