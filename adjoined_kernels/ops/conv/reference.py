"""The conv passes in PyTorch ops: the reference implementation of the contract (ops/conv/contract.py).

These are the ``forward_native`` of each pass: the same schemas as the Triton and CUDA kernels, built from
F.conv2d and ``torch.nn.grad`` (docs/maths.md, section 1). The tests compare every backend's passes with
them; ``backend="reference"`` itself runs :func:`adjoined_conv2d_ref` under PyTorch's own autograd.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._layout import CL
from .contract import Impl


def adjoined_conv2d_ref(x_full, x_small, weight, bias=None, stride=1, padding=0, dilation=1,
                        small_out_channels=None, small_scale=None):
    """Reference adjoined conv in plain PyTorch ops; autograd gives every gradient.

    Same contract as :func:`adjoined_kernels.adjoined_conv2d`, without validation or dispatch.
    """
    c_out_s = weight.shape[0] if small_out_channels is None else small_out_channels
    c_in_s = x_small.shape[1]
    z_full = F.conv2d(x_full, weight, bias, stride, padding, dilation)
    b_s = None if bias is None else bias[:c_out_s]
    z_small = F.conv2d(x_small, weight[:c_out_s, :c_in_s], b_s, stride, padding, dilation)
    if small_scale is not None:
        z_small = z_small * small_scale.view(1, -1, 1, 1)
    return z_full, z_small


def scale_grad(dz_small, u_small):
    """d small_scale = sum over (n, h, w) of dz_small * u_small, in fp32, cast to dz_small's dtype."""
    return (dz_small.float() * u_small.float()).sum((0, 2, 3)).to(dz_small.dtype)


def _cl(t):
    return t.contiguous(memory_format=CL)


def fprop(x_full, x_small, weight, bias, small_scale, stride, padding, dilation, c_out_s, save_pre=False,
          share_weights=True):
    b_s = None if bias is None else bias[:c_out_s]
    zf = F.conv2d(x_full, weight, bias, stride, padding, dilation)
    us = F.conv2d(x_small, weight[:c_out_s, :x_small.shape[1]], b_s, stride, padding, dilation)
    zs = us if small_scale is None else us * small_scale.view(1, -1, 1, 1)
    return _cl(zf), _cl(zs), (_cl(us) if save_pre else us.new_empty((0,)))


def dgrad(dz_full, dz_small, weight, small_scale, full_hw, small_hw, c_in_s, stride, padding, dilation,
          share_weights=True):
    c_out_s = dz_small.shape[1]
    if small_scale is not None:
        dz_small = dz_small * small_scale.view(1, -1, 1, 1)
    dxf = torch.nn.grad.conv2d_input((dz_full.shape[0], weight.shape[1], *full_hw), weight, dz_full,
                                     stride, padding, dilation)
    dxs = torch.nn.grad.conv2d_input((dz_small.shape[0], c_in_s, *small_hw), weight[:c_out_s, :c_in_s], dz_small,
                                     stride, padding, dilation)
    return _cl(dxf), _cl(dxs)


def wgrad(x_full, x_small, dz_full, dz_small, small_scale, u_small, kernel_size, stride, padding, dilation,
          need_weight, need_bias):
    ds = x_full.new_empty((0,)) if u_small is None or u_small.numel() == 0 else scale_grad(dz_small, u_small)
    c_out_s, c_in_s = dz_small.shape[1], x_small.shape[1]
    if small_scale is not None:
        dz_small = dz_small * small_scale.view(1, -1, 1, 1)
    c_out, c_in = dz_full.shape[1], x_full.shape[1]
    dw = torch.nn.grad.conv2d_weight(x_full, (c_out, c_in, *kernel_size), dz_full, stride, padding, dilation)
    dws = torch.nn.grad.conv2d_weight(x_small, (c_out_s, c_in_s, *kernel_size), dz_small, stride, padding,
                                      dilation)
    dw[:c_out_s, :c_in_s] += dws
    db = dz_full.sum((0, 2, 3))
    db[:c_out_s] += dz_small.sum((0, 2, 3))
    return (_cl(dw) if need_weight else x_full.new_empty((0,))), (db if need_bias else x_full.new_empty((0,))), ds


IMPL = Impl(fprop, dgrad, wgrad)
