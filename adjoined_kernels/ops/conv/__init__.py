"""Adjoined convolution: the public op, its validation and the choice of backend (docs/maths.md, section 1;
"Adjoined Networks", Eq. 1-2).

    z_full  = conv2d(x_full,  W,                    b,          stride, padding, dilation)
    z_small = conv2d(x_small, W[:c_out_s, :c_in_s], b[:c_out_s], stride, padding, dilation) * small_scale

The passes' contract (schemas, fake kernels, autograd) is in contract.py; the backends implementing it are
reference.py (PyTorch ops), triton/ and cuda.py (docs/kernels.md, "Backends").
"""
from __future__ import annotations

import importlib

import torch

from ..._backend import resolve_backend, tunable, tuned
from ..._checks import check_same, check_tensor, pair
from ._layout import restore_format
from .contract import AdjoinedConv
from .reference import adjoined_conv2d_ref

SUPPORTED = ("triton", "cuda")
_MODULES: dict = {}  # backend name -> its module (ops/conv/triton, ops/conv/cuda), imported on first use

__all__ = ["adjoined_conv2d", "adjoined_conv2d_ref", "fused_conv2d", "run", "SUPPORTED"]


def _load(name: str):
    if name not in _MODULES:
        _MODULES[name] = importlib.import_module(f"{__name__}.{name}")
    return _MODULES[name]


@torch.compiler.assume_constant_result
def _resolve(backend: str, device: torch.device) -> str:
    """The backend by name or fixed order (resolve_backend), its module loaded. torch.compile takes the
    result as a constant, so the imports behind it run once, outside the traced graph."""
    name = resolve_backend(backend, device, SUPPORTED)
    if name != "reference":
        _load(name)
    return name


def _validate(x_full, x_small, weight, bias, stride, padding, dilation, small_out_channels, small_scale):
    """``(stride, padding, dilation, c_out_s)`` normalised, or TypeError/ValueError naming the argument.

    A layer calls this with the same sizes, dtypes and devices at every step, so arguments that passed are
    remembered by those (a dict lookup instead of ~20 µs of checks; docs/kernels.md, "Host overhead").
    Anything new or not hashable takes the full check, and so does every call under torch.compile."""
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
    for name, t, dim in (("x_full", x_full, 4), ("x_small", x_small, 4), ("weight", weight, 4), ("bias", bias, 1),
                         ("small_scale", small_scale, 1)):
        if t is not None or name in ("x_full", "x_small", "weight"):
            check_tensor(name, t, dim)
    check_same({"x_full": x_full, "x_small": x_small, "weight": weight, "bias": bias, "small_scale": small_scale})
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


def _tune_key(tensors, conv) -> tuple:
    """What changes a layer's timing: every tensor's shape, strides (so memory format), dtype and whether it
    needs a gradient, the widths (alpha), the conv arguments, grad mode and the device."""
    return (tuple(None if t is None else (tuple(t.shape), t.stride(), str(t.dtype), t.requires_grad)
                  for t in tensors), conv, torch.is_grad_enabled(), tensors[0].device.index)


def _step(name, tensors, conv):
    """A zero-argument call running one layer step (forward, and backward when training) on ``name``."""
    leaves = [None if t is None else t.detach().requires_grad_(t.requires_grad) for t in tensors]
    need = [t for t in leaves if t is not None and t.requires_grad]
    train = torch.is_grad_enabled() and bool(need)

    def step():
        out = fused_conv2d(name, *leaves[:4], *conv, small_scale=leaves[4])
        if train:
            torch.autograd.grad(out, need, [torch.ones_like(z) for z in out])
    step.backend = name  # for reports and fake timers
    return step


def adjoined_conv2d(x_full, x_small, weight, bias=None, stride=1, padding=0, dilation=1,
                    small_out_channels=None, small_scale=None, backend="auto"):
    """Full-width and channel-prefix convolution over one shared weight ("Adjoined Networks", Eq. 1-2).

    Args:
        x_full: ``[N1, C_in, H1, W1]`` input of the full branch.
        x_small: ``[N2, c_in_s, H2, W2]`` input of the small branch, ``1 <= c_in_s <= C_in``. Batch and
            spatial sizes may differ from ``x_full``.
        weight: ``[C_out, C_in, kh, kw]``, shared; the small branch uses ``weight[:c_out_s, :c_in_s]``.
        bias: ``[C_out]`` or None; the small branch uses ``bias[:c_out_s]``.
        stride, padding, dilation: int or pair, as in ``torch.nn.functional.conv2d`` (groups=1 only).
        small_out_channels: ``c_out_s`` in ``[1, C_out]``; None means ``C_out``.
        small_scale: ``[c_out_s]`` per-channel gate applied to the small output (DAN), or None.
        backend: "auto", "reference", "triton" or "cuda" (docs/kernels.md, "Backends"). "auto" on CUDA
            tensors times every available backend once per layer geometry and keeps the fastest
            (docs/kernels.md, "auto"); elsewhere it is "reference".

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
    conv = _validate(x_full, x_small, weight, bias, stride, padding, dilation, small_out_channels, small_scale)
    if backend == "auto" and not torch.compiler.is_compiling() and tunable(x_full.device):
        tensors = (x_full, x_small, weight, bias, small_scale)
        be = tuned("adjoined_conv2d", _tune_key(tensors, conv), SUPPORTED, _load, lambda n: _step(n, tensors, conv))
    else:
        be = _resolve(backend, x_full.device)
    if be == "reference":
        return adjoined_conv2d_ref(x_full, x_small, weight, bias, *conv, small_scale)
    # the fused path inlined (not a call of fused_conv2d): one frame less between a module and its kernel
    args = _fprop_args(x_full, x_small, weight, bias, small_scale, *conv, True)
    if torch.compiler.is_compiling():
        zf, zs, _ = _MODULES[be].OPS.fprop(*args)
    else:
        zf, zs, _ = AdjoinedConv.apply(_MODULES[be].IMPL, *args)
    return restore_format(zf, x_full), restore_format(zs, x_small)


def _fprop_args(x_full, x_small, weight, bias, small_scale, stride, padding, dilation, c_out_s, share_weights):
    """The fprop op's arguments; the pre-scale output is saved only when small_scale will need a gradient."""
    save_pre = small_scale is not None and small_scale.requires_grad and torch.is_grad_enabled()
    return (x_full, x_small, weight, bias, small_scale, list(stride), list(padding), list(dilation), int(c_out_s),
            save_pre, share_weights)


def fused_conv2d(backend, x_full, x_small, weight, bias, stride, padding, dilation, c_out_s, small_scale=None,
                 share_weights=True):
    """:func:`adjoined_conv2d` on one backend after validation, differentiable (timing, tests, benchmarks).

    ``stride``/``padding``/``dilation`` are int pairs and ``c_out_s`` an int. ``share_weights=False`` turns
    off weight-tile sharing between the branches (same results; for tests and benchmarks). Raises
    RuntimeError when the backend is unavailable.
    """
    be = _resolve(backend, x_full.device)
    if be == "reference":
        return adjoined_conv2d_ref(x_full, x_small, weight, bias, stride, padding, dilation, c_out_s, small_scale)
    return run(_MODULES[be], x_full, x_small, weight, bias, stride, padding, dilation, c_out_s, small_scale,
               share_weights)


def run(module, x_full, x_small, weight, bias, stride, padding, dilation, c_out_s, small_scale=None,
        share_weights=True):
    """The fused path of a backend ``module`` (ops/conv/triton or ops/conv/cuda) without any check: its ops
    under torch.compile, else its ``IMPL`` through :class:`AdjoinedConv`."""
    args = _fprop_args(x_full, x_small, weight, bias, small_scale, stride, padding, dilation, c_out_s, share_weights)
    if torch.compiler.is_compiling():
        zf, zs, _ = module.OPS.fprop(*args)
    else:
        zf, zs, _ = AdjoinedConv.apply(module.IMPL, *args)
    return restore_format(zf, x_full), restore_format(zs, x_small)
