"""The contract every conv backend implements: one schema, one fake kernel and one autograd formula per pass.

A backend is an :class:`Impl` of the three passes, nothing else (docs/kernels.md, "Backends"):

- ``conv2d_fprop``: both branches' outputs; ``u_small`` is z_small before ``small_scale`` when ``save_pre``.
- ``conv2d_dgrad``: both branches' input gradients; ``dz_small`` is scaled by ``small_scale`` first.
- ``conv2d_wgrad``: dW and db summed over both branches (the small branch adds into the prefix block
  ``[:c_out_s, :c_in_s]``), and d small_scale = sum(dz_small * u_small) when ``u_small`` is given.

Memory formats: 4-D outputs are channels_last, 1-D outputs contiguous; an output that is not asked for
(``u_small`` without ``save_pre``, dW without ``need_weight``, ...) is an empty ``[0]`` tensor. The maths is
in docs/maths.md ("Gradients") and the paper "Adjoined Networks", Eq. 1-2.

The Triton backend registers these schemas as ``adjoined::triton_<pass>``; the CUDA extension registers
them in C++ (csrc/torch_bindings.cpp) as ``adjoined::cuda_<pass>``. Both get the fake kernels and the
autograd formula below, so torch.compile traces either one the same way.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from ._layout import CL, out_shapes, restore_format

FPROP = ("(Tensor x_full, Tensor x_small, Tensor weight, Tensor? bias, Tensor? small_scale, int[] stride, "
         "int[] padding, int[] dilation, int c_out_s, bool save_pre, bool share_weights) -> (Tensor, Tensor, Tensor)")
DGRAD = ("(Tensor dz_full, Tensor dz_small, Tensor weight, Tensor? small_scale, int[] full_hw, int[] small_hw, "
         "int c_in_s, int[] stride, int[] padding, int[] dilation, bool share_weights) -> (Tensor, Tensor)")
WGRAD = ("(Tensor x_full, Tensor x_small, Tensor dz_full, Tensor dz_small, Tensor? small_scale, Tensor? u_small, "
         "int[] kernel_size, int[] stride, int[] padding, int[] dilation, bool need_weight, bool need_bias) "
         "-> (Tensor, Tensor, Tensor)")
SCHEMAS = {"conv2d_fprop": FPROP, "conv2d_dgrad": DGRAD, "conv2d_wgrad": WGRAD}


class Impl(NamedTuple):
    """One backend's implementation of the three passes, each with the signature of its schema."""
    fprop: Callable
    dgrad: Callable
    wgrad: Callable


def _empty_cl(shape, like):
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=CL)


def _none(like):
    return like.new_empty((0,))


def fprop_fake(x_full, x_small, weight, bias, small_scale, stride, padding, dilation, c_out_s, save_pre,
               share_weights):
    full, small = out_shapes(x_full.shape, x_small.shape, weight.shape, stride, padding, dilation, c_out_s)
    u = _empty_cl(small, x_full) if save_pre else _none(x_full)
    return _empty_cl(full, x_full), _empty_cl(small, x_full), u


def dgrad_fake(dz_full, dz_small, weight, small_scale, full_hw, small_hw, c_in_s, stride, padding, dilation,
               share_weights):
    return (_empty_cl((dz_full.shape[0], weight.shape[1], *full_hw), dz_full),
            _empty_cl((dz_small.shape[0], c_in_s, *small_hw), dz_full))


def wgrad_fake(x_full, x_small, dz_full, dz_small, small_scale, u_small, kernel_size, stride, padding, dilation,
               need_weight, need_bias):
    c_out = dz_full.shape[1]
    dw = _empty_cl((c_out, x_full.shape[1], *kernel_size), x_full) if need_weight else _none(x_full)
    db = x_full.new_empty((c_out,)) if need_bias else _none(x_full)
    ds = x_full.new_empty((dz_small.shape[1],)) if u_small is not None and u_small.numel() else _none(x_full)
    return dw, db, ds


FAKES = {"conv2d_fprop": fprop_fake, "conv2d_dgrad": dgrad_fake, "conv2d_wgrad": wgrad_fake}


def setup_context(ctx, inputs, output):
    x_full, x_small, weight, bias, small_scale, stride, padding, dilation, c_out_s, save_pre, share = inputs
    ctx.save_for_backward(x_full, x_small, weight, small_scale, output[2])
    ctx.conv = (list(stride), list(padding), list(dilation))
    ctx.share = bool(share)
    ctx.has_bias = bias is not None
    ctx.mark_non_differentiable(output[2])


def backward(impl: Impl, ctx, need, dz_full, dz_small):
    """Gradients of the fprop inputs (``need``: which ones) through ``impl``'s dgrad and wgrad.

    Raises RuntimeError when small_scale needs a gradient but the forward ran with ``save_pre=False``.
    """
    x_full, x_small, weight, small_scale, u_small = ctx.saved_tensors
    stride, padding, dilation = ctx.conv
    dx_full = dx_small = dw = db = ds = None
    if need[0] or need[1]:
        dx_full, dx_small = impl.dgrad(dz_full, dz_small, weight, small_scale, list(x_full.shape[2:]),
                                       list(x_small.shape[2:]), x_small.shape[1], stride, padding, dilation,
                                       ctx.share)
        dx_full, dx_small = restore_format(dx_full, x_full), restore_format(dx_small, x_small)
    need_w, need_b, need_s = need[2], ctx.has_bias and need[3], small_scale is not None and need[4]
    if need_s and u_small.numel() != dz_small.numel():
        raise RuntimeError("adjoined conv: the gradient of small_scale needs save_pre=True in the forward call")
    if need_w or need_b or need_s:
        dw, db, ds = impl.wgrad(x_full, x_small, dz_full, dz_small, small_scale, u_small if need_s else None,
                                list(weight.shape[2:]), stride, padding, dilation, need_w, need_b)
    return (dx_full if need[0] else None, dx_small if need[1] else None, dw if need_w else None,
            db if need_b else None, ds if need_s else None, None, None, None, None, None, None)


class AdjoinedConv(torch.autograd.Function):
    """``impl.fprop`` with the autograd formula above, called without the custom-op dispatcher: in eager
    mode that costs ~130 µs of host time per call (~220 µs with autograd), more than the kernels of a small
    layer. torch.compile traces the registered ops instead. ``forward`` takes ``ctx`` itself: a separate
    ``setup_context`` makes ``apply`` bind its arguments with ``inspect`` (~70 µs)."""

    @staticmethod
    def forward(ctx, impl, *inputs):
        output = impl.fprop(*inputs)
        setup_context(ctx, inputs, output)
        ctx.impl = impl
        return output

    @staticmethod
    def backward(ctx, dz_full, dz_small, _du_small):
        return None, *backward(ctx.impl, ctx, ctx.needs_input_grad[1:], dz_full, dz_small)


def register(prefix: str, ns: str = "adjoined") -> Impl:
    """Give ``<ns>::<prefix>_<pass>`` (already defined with these schemas) the fake kernels and the fprop
    autograd; returns the three ops, for torch.compile to trace. ``ns`` other than "adjoined": the CPU
    emulation of the CUDA kernels (csrc/emu/)."""
    for name, fake in FAKES.items():
        torch.library.register_fake(f"{ns}::{prefix}_{name}")(fake)
    ops = Impl(*(getattr(getattr(torch.ops, ns), f"{prefix}_{name}") for name in SCHEMAS))

    def op_backward(ctx, dz_full, dz_small, _du_small):
        return backward(ops, ctx, ctx.needs_input_grad, dz_full, dz_small)

    torch.library.register_autograd(f"{ns}::{prefix}_conv2d_fprop", op_backward, setup_context=setup_context)
    return ops
