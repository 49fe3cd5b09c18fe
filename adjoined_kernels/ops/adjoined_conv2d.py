"""Adjoined convolution: public function, validation, dispatch and the reference (DESIGN §1, seeds/000 Eq. 1-2).

    z_full  = conv2d(x_full,  W,                    b,          stride, padding, dilation)
    z_small = conv2d(x_small, W[:c_out_s, :c_in_s], b[:c_out_s], stride, padding, dilation) * small_scale

The fused Triton passes live in conv_fprop.py / conv_dgrad.py / conv_wgrad.py; the CUDA ones in conv_cuda.py.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._backend import resolve_backend
from .._checks import check_same, check_tensor, pair

SUPPORTED = ("triton", "cuda")


def adjoined_conv2d_ref(x_full, x_small, weight, bias=None, stride=1, padding=0, dilation=1,
                        small_out_channels=None, small_scale=None):
    """Reference adjoined conv in plain PyTorch ops; autograd gives every gradient.

    Same contract as :func:`adjoined_conv2d`, without validation or dispatch.
    """
    c_out_s = weight.shape[0] if small_out_channels is None else small_out_channels
    c_in_s = x_small.shape[1]
    z_full = F.conv2d(x_full, weight, bias, stride, padding, dilation)
    b_s = None if bias is None else bias[:c_out_s]
    z_small = F.conv2d(x_small, weight[:c_out_s, :c_in_s], b_s, stride, padding, dilation)
    if small_scale is not None:
        z_small = z_small * small_scale.view(1, -1, 1, 1)
    return z_full, z_small


def _validate(x_full, x_small, weight, bias, stride, padding, dilation, small_out_channels, small_scale):
    """``(stride, padding, dilation, c_out_s)`` normalised, or TypeError/ValueError naming the argument.

    A layer calls this with the same sizes, dtypes and devices at every step, so arguments that passed
    are remembered by those (a few µs to look up; ~20 to check again); anything new, or not a tensor,
    takes the full check, and so does every call under torch.compile (it traces the check once)."""
    if torch.compiler.is_compiling():
        return _check(x_full, x_small, weight, bias, stride, padding, dilation, small_out_channels, small_scale)
    try:
        key = tuple(None if t is None else (t.shape, t.dtype, t.device)
                    for t in (x_full, x_small, weight, bias, small_scale))
        key += tuple(tuple(v) if isinstance(v, list) else v for v in (stride, padding, dilation, small_out_channels))
        hit = _VALID.get(key)
    except (AttributeError, TypeError):  # a non-tensor, or an unhashable conv argument: the full check says
        key = hit = None
    if hit is None:
        hit = _check(x_full, x_small, weight, bias, stride, padding, dilation, small_out_channels, small_scale)
        if key is not None:
            if len(_VALID) >= 4096:
                _VALID.clear()
            _VALID[key] = hit
    return hit


_VALID: dict = {}  # arguments that passed _check, by sizes, dtypes, devices and conv arguments


def _check(x_full, x_small, weight, bias, stride, padding, dilation, small_out_channels, small_scale):
    check_tensor("x_full", x_full, 4)
    check_tensor("x_small", x_small, 4)
    check_tensor("weight", weight, 4)
    if bias is not None:
        check_tensor("bias", bias, 1)
    if small_scale is not None:
        check_tensor("small_scale", small_scale, 1)
    check_same({"x_full": x_full, "x_small": x_small, "weight": weight, "bias": bias,
                "small_scale": small_scale})
    c_out, c_in = weight.shape[:2]
    if x_full.shape[1] != c_in:
        raise ValueError(f"x_full must have C_in={c_in} channels (weight is {tuple(weight.shape)}), "
                         f"got shape {tuple(x_full.shape)}; groups != 1 is not supported")
    if not 1 <= x_small.shape[1] <= c_in:
        raise ValueError(f"x_small must have 1 <= c_in_s <= C_in={c_in} channels, got shape {tuple(x_small.shape)}")
    if bias is not None and bias.shape[0] != c_out:
        raise ValueError(f"bias must have shape [{c_out}], got {tuple(bias.shape)}")
    c_out_s = c_out if small_out_channels is None else int(small_out_channels)
    if not 1 <= c_out_s <= c_out:
        raise ValueError(f"small_out_channels must be in [1, C_out={c_out}], got {small_out_channels}")
    if small_scale is not None and small_scale.shape[0] != c_out_s:
        raise ValueError(f"small_scale must have shape [c_out_s={c_out_s}], got {tuple(small_scale.shape)}")
    stride, padding, dilation = pair("stride", stride), pair("padding", padding), pair("dilation", dilation)
    if min(stride) < 1 or min(dilation) < 1:
        raise ValueError(f"stride and dilation must be >= 1, got stride={stride}, dilation={dilation}")
    for name, x in (("x_full", x_full), ("x_small", x_small)):
        for d in range(2):
            eff = dilation[d] * (weight.shape[2 + d] - 1) + 1
            if x.shape[2 + d] + 2 * padding[d] < eff:
                raise ValueError(f"{name} spatial size {tuple(x.shape[2:])} is smaller than the dilated kernel "
                                 f"{eff} plus padding {padding}")
    return stride, padding, dilation, c_out_s


def _autocast(*tensors):
    """The floating tensors cast to the autocast dtype when autocast is on for their device (F.conv2d's
    rule; the fused kernels take one dtype, so they cannot leave it to the dispatcher)."""
    dev = tensors[0].device.type if isinstance(tensors[0], torch.Tensor) else None
    try:  # not torch.amp.is_autocast_available: Dynamo in torch 2.11 cannot trace it (fullgraph fails)
        on = dev is not None and torch.is_autocast_enabled(dev)
    except RuntimeError:  # a device type without autocast, e.g. meta
        on = False
    if not on:
        return tensors
    dt = torch.get_autocast_dtype(dev)
    return tuple(t.to(dt) if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in tensors)


def adjoined_conv2d(x_full, x_small, weight, bias=None, stride=1, padding=0, dilation=1,
                    small_out_channels=None, small_scale=None, backend="auto"):
    """Full-width and channel-prefix convolution over one shared weight (seeds/000 Eq. 1-2, DESIGN §1).

    Args:
        x_full: ``[N1, C_in, H1, W1]`` input of the full branch.
        x_small: ``[N2, c_in_s, H2, W2]`` input of the small branch, ``1 <= c_in_s <= C_in``. Batch and
            spatial sizes may differ from ``x_full``.
        weight: ``[C_out, C_in, kh, kw]``, shared; the small branch uses ``weight[:c_out_s, :c_in_s]``.
        bias: ``[C_out]`` or None; the small branch uses ``bias[:c_out_s]``.
        stride, padding, dilation: int or pair, as in ``torch.nn.functional.conv2d`` (groups=1 only).
        small_out_channels: ``c_out_s`` in ``[1, C_out]``; None means ``C_out``.
        small_scale: ``[c_out_s]`` per-channel gate applied to the small output (DAN), or None.
        backend: "auto", "reference", "triton" or "cuda" (DESIGN §2).

    All tensors share one device and one dtype (float32, float16 or bfloat16; fp32 accumulation). Under
    ``torch.autocast`` every floating input is first cast to the autocast dtype, as F.conv2d does.

    Returns:
        ``(z_full [N1, C_out, P1, Q1], z_small [N2, c_out_s, P2, Q2])`` in the inputs' memory format.

    Raises:
        TypeError: a non-tensor or non-floating input.
        ValueError: mismatched shapes, dtypes or devices, ``c_in_s > C_in``, a bad ``c_out_s``.
        RuntimeError: an explicitly requested backend that is unavailable.
    """
    x_full, x_small, weight, bias, small_scale = _autocast(x_full, x_small, weight, bias, small_scale)
    stride, padding, dilation, c_out_s = _validate(x_full, x_small, weight, bias, stride, padding, dilation,
                                                   small_out_channels, small_scale)
    be = resolve_backend(backend, x_full.device, SUPPORTED)
    if be == "triton":
        from .conv_fprop import adjoined_conv2d_triton
        return adjoined_conv2d_triton(x_full, x_small, weight, bias, stride, padding, dilation,
                                      c_out_s, small_scale)
    if be == "cuda":
        from .conv_cuda import adjoined_conv2d_cuda
        return adjoined_conv2d_cuda(x_full, x_small, weight, bias, stride, padding, dilation, c_out_s, small_scale)
    return adjoined_conv2d_ref(x_full, x_small, weight, bias, stride, padding, dilation, c_out_s, small_scale)
