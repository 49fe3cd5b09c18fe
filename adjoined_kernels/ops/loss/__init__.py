"""Adjoined loss: CE(full) + lam * T^2 * KL(p_full || q_small), the public op, its validation and the choice
of backend (docs/maths.md, section 3; "Adjoined Networks", Def. 1, Eq. 3).

The contract (schema, fake kernel, autograd) is in schema.py; the fused backends implementing it are triton/
(register path, chunked path, launcher) and cuda.py (docs/kernels.md, "The loss kernels").
"""
from __future__ import annotations

import importlib
import numbers

import torch
import torch.nn.functional as F

from ..._backend import resolve_backend, tunable, tuned
from ..._checks import check_same, check_tensor
from .schema import RED_CODE, REDUCTIONS

SUPPORTED = ("triton", "cuda")
_MODULES: dict = {}  # backend name -> its module (ops/loss/triton, ops/loss/cuda), imported on first use

__all__ = ["adjoined_loss", "adjoined_loss_ref", "adjoined_loss_triton", "REDUCTIONS", "SUPPORTED"]


def _load(name: str):
    if name not in _MODULES:
        _MODULES[name] = importlib.import_module(f"{__name__}.{name}")
    return _MODULES[name]


@torch.compiler.assume_constant_result
def _resolve(backend: str, device: torch.device) -> str:
    """The backend by name or fixed order, its module loaded (once, outside any traced graph)."""
    name = resolve_backend(backend, device, SUPPORTED)
    if name != "reference":
        _load(name)
    return name


def __getattr__(name):
    if name == "adjoined_loss_triton":  # needs triton: imported on first use, like the backend
        return _load("triton").adjoined_loss_triton
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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


def validate(logits_full, logits_small, target, lam, eps, temperature, reduction):
    """TypeError/ValueError naming the argument, unless the arguments are a valid adjoined-loss call."""
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


def lam_tensor(lam, like: torch.Tensor) -> torch.Tensor:
    """``lam`` as the schema takes it: a 0-dim tensor on ``like``'s device, no gradient (a fill, no host sync)."""
    if isinstance(lam, torch.Tensor):
        return lam.detach()
    return torch.full((), float(lam), dtype=torch.float32, device=like.device)


def _fused_args(logits_full, logits_small, target, lam, eps, temperature, reduction, ignore_index, detach_full):
    grad = torch.is_grad_enabled() and (logits_full.requires_grad or logits_small.requires_grad)
    return (logits_full, logits_small, target, lam_tensor(lam, logits_full), float(eps), float(temperature),
            RED_CODE[reduction], int(ignore_index), bool(detach_full), grad)


def _step(name, args):
    """A zero-argument call of the loss (and its backward when training) on backend ``name``."""
    lf, ls = (t.detach().requires_grad_(t.requires_grad) for t in args[:2])
    need = [t for t in (lf, ls) if t.requires_grad]
    train = torch.is_grad_enabled() and bool(need)

    def step():
        loss = adjoined_loss(lf, ls, *args[2:], backend=name)
        if train:
            torch.autograd.grad(loss, need, torch.ones_like(loss))
    step.backend = name  # for reports and fake timers
    return step


def _tune_key(args) -> tuple:
    """What changes the loss's timing: the logits' shapes, strides, dtype and grad, the target's dtype, the
    other arguments, grad mode and the device."""
    lf, ls, target, lam = args[:4]
    return (tuple((tuple(t.shape), t.stride(), str(t.dtype), t.requires_grad) for t in (lf, ls)), str(target.dtype),
            isinstance(lam, torch.Tensor), *args[4:], torch.is_grad_enabled(), lf.device.index)


def adjoined_loss(logits_full, logits_small, target, lam, eps=1e-6, temperature=1.0, reduction="mean",
                  ignore_index=-100, detach_full=False, backend="auto"):
    """Adjoined loss ``CE(logits_full, target) + lam * T^2 * KL(p || q)`` ("Adjoined Networks", Def. 1, Eq. 3).

    ``p = softmax(logits_full / T)``, ``q = softmax(logits_small / T)``. With ``eps > 0`` the KL is
    ``sum p (log(p+eps) - log(q+eps))`` (the paper uses 1e-6); with ``eps == 0`` it is computed stably
    from log-softmax. The maths runs in fp32 whatever the logits' dtype (docs/maths.md, section 3).

    Args:
        logits_full, logits_small: ``[B, C]`` with B, C >= 1, float32/float16/bfloat16, same dtype and device.
        target: ``[B]`` int64/int32 class indices; rows equal to ``ignore_index`` get no CE term.
        lam: float or 0-dim tensor on the logits' device (never synced to the host). The fused backends
            treat a tensor ``lam`` as a constant: no gradient flows to it.
        eps: >= 0. temperature: T > 0.
        reduction: "mean" (CE over valid rows, KL over all B rows), "sum", or "none" (``[B]``).
        detach_full: if True, no KL gradient reaches ``logits_full`` (distillation-teacher semantics).
        backend: "auto", "reference", "triton" or "cuda" (docs/kernels.md, "Backends" and "auto"). The fused
            backends compute both gradients in the forward; a valid target outside ``[0, C)`` gives a NaN
            loss there instead of an error (no host sync).

    Returns:
        0-dim loss (or ``[B]`` for "none") in the logits' dtype. With "mean" and no valid row, the CE part is 0.

    Raises:
        TypeError / ValueError: bad dtypes, shapes, devices or arguments, naming the argument.
        RuntimeError: an explicitly requested backend that is unavailable.
    """
    validate(logits_full, logits_small, target, lam, eps, temperature, reduction)
    if backend == "auto" and not torch.compiler.is_compiling() and tunable(logits_full.device):
        args = (logits_full, logits_small, target, lam, float(eps), float(temperature), reduction, int(ignore_index),
                bool(detach_full))
        be = tuned("adjoined_loss", _tune_key(args), SUPPORTED, _load, lambda n: _step(n, args))
    else:
        be = _resolve(backend, logits_full.device)
    if be == "reference":
        return adjoined_loss_ref(logits_full, logits_small, target, lam, eps, temperature, reduction,
                                 ignore_index, detach_full)
    return _MODULES[be].OP(*_fused_args(logits_full, logits_small, target, lam, eps, temperature, reduction,
                                        ignore_index, detach_full))[0]
