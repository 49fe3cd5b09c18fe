"""Sizes and memory formats shared by every conv backend (no Triton import: the CUDA backend uses them too)."""
from __future__ import annotations

import contextlib

import torch

CL = torch.channels_last


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) of host ints (``triton.cdiv`` costs microseconds per call on a launch path)."""
    return -(-a // b)


def conv_out_size(size: int, k: int, stride: int, pad: int, dil: int) -> int:
    """Output length of a 1-D convolution, as in ``torch.nn.functional.conv2d``."""
    return (size + 2 * pad - dil * (k - 1) - 1) // stride + 1


def out_shapes(xf_size, xs_size, w_size, stride, padding, dilation, c_out_s):
    """``(z_full shape, z_small shape)`` of the adjoined conv of inputs of these sizes."""
    kh, kw = w_size[2:]
    sizes = []
    for size, c in ((xf_size, w_size[0]), (xs_size, c_out_s)):
        p = conv_out_size(size[2], kh, stride[0], padding[0], dilation[0])
        q = conv_out_size(size[3], kw, stride[1], padding[1], dilation[1])
        sizes.append((size[0], c, p, q))
    return sizes


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """NHWC-strided view or copy of a 4-D tensor (no copy when it already is)."""
    return x.contiguous(memory_format=CL)


def is_channels_last(x: torch.Tensor) -> bool:
    """Whether F.conv2d would give ``x``'s output channels_last (an NCHW-contiguous tensor counts as NCHW,
    ties go to NCHW as in PyTorch)."""
    if x.is_contiguous():
        return False
    if x.is_contiguous(memory_format=CL):
        return True
    return x.stride(1) < x.stride(3)


def restore_format(out: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The channels_last ``out`` in the memory format of ``like``."""
    return out if is_channels_last(like) else out.contiguous()


def on_device(t: torch.Tensor):
    """Context making ``t``'s GPU current: kernels launch on the current device, not the tensor's."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def dense(v):
    """A 1-D parameter (bias, small_scale) with unit stride, as the kernels index it; None stays None."""
    return None if v is None else v.contiguous()


def nhwc_order(strides) -> tuple[int, int, int, int]:
    """``[N, C, H, W]`` strides in (n, h, w, c) order, the order the kernels take."""
    sn, sc, sh, sw = strides
    return sn, sh, sw, sc


def cl_strides(shape) -> tuple[int, ...]:
    """The strides ``torch.empty(shape, memory_format=torch.channels_last)`` gets (PyTorch's own rule, on the
    meta device), so a launch plan can hold them before the output exists."""
    return torch.empty(shape, device="meta", memory_format=CL).stride()
