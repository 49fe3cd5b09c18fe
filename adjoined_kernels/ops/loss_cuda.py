"""Adjoined loss on the compiled CUDA extension (``backend="cuda"``; DESIGN §1, seeds/000 Def. 1, Eq. 3).

    loss = CE(logits_full, target) + lam * T^2 * KL(softmax(logits_full / T) || softmax(logits_small / T))

``adjoined::cuda_adjoined_loss_fwd`` (``csrc/adjoined_loss.cu``) runs one warp per row up to 2048 classes
and one block per row beyond, over rows of any length: an online-softmax pass for the three log-sum-exps (and, for eps == 0, the KL numerator), a
second pass for the eps > 0 sums, and a last pass that writes both gradients (per class in base 2 with
ex2/lg2/rcp.approx, as the Triton kernel; eps is kept >= 2^-126), already scaled by the
reduction (1/n_valid for CE and 1/B for KL under "mean"; n_valid is counted on the device). "sum" and
"mean" add the per-row terms with one single-block kernel in a fixed order. The backward only multiplies
the saved gradients by grad_output. ``lam`` stays on the device: a Python float becomes a 0-dim tensor
(a fill kernel, no host sync). No gradient flows to a tensor ``lam``.

A target outside ``[0, C)`` that is not ``ignore_index`` gives a NaN loss for its row (no host sync).
"""
from __future__ import annotations

import torch

from . import _saved_grads
from .conv_cuda import load as _load_extension

_RED_CODE = {"none": 0, "sum": 1, "mean": 2}
_registered = False


def load() -> None:
    """Import ``adjoined_kernels._C`` and register the loss op's fake kernel and autograd (once).

    Raises:
        RuntimeError: the extension is not built, saying how to build it.
    """
    global _registered
    _load_extension()
    if _registered:
        return
    _registered = True
    if hasattr(torch.ops.adjoined, "cuda_adjoined_loss_fwd"):
        torch.library.register_fake("adjoined::cuda_adjoined_loss_fwd")(_loss_fake)
        _saved_grads.register("adjoined::cuda_adjoined_loss_fwd", 10)


def _loss_fake(logits_full, logits_small, target, lam, eps, temperature, reduction, ignore_index, detach_full,
               compute_grad):
    loss = logits_full.new_empty((logits_full.shape[0],) if reduction == 0 else ())
    if compute_grad:
        return loss, logits_full.new_empty(logits_full.shape), logits_full.new_empty(logits_small.shape)
    return loss, logits_full.new_empty((0,)), logits_full.new_empty((0,))


def adjoined_loss_cuda(logits_full, logits_small, target, lam, eps=1e-6, temperature=1.0, reduction="mean",
                       ignore_index=-100, detach_full=False):
    """Adjoined loss on the fused CUDA kernel, differentiable w.r.t. both logits (DESIGN §1).

    Args: as :func:`adjoined_kernels.adjoined_loss` after its validation: ``[B, C]`` CUDA logits of one dtype
    (float32/float16/bfloat16), ``target`` int64/int32 ``[B]``, ``lam`` a float or 0-dim floating tensor on
    the logits' device, ``eps >= 0``, ``temperature > 0``, ``reduction`` in "mean"/"sum"/"none".

    Returns:
        The loss, 0-dim (or ``[B]`` for "none") in the logits' dtype; fp32 maths inside.

    The gradients are computed in the forward pass only when autograd will need them. Raises RuntimeError
    when the extension is not built.
    """
    load()
    if reduction not in _RED_CODE:
        raise ValueError(f"reduction must be one of {tuple(_RED_CODE)}, got {reduction!r}")
    if isinstance(lam, torch.Tensor):
        lam = lam.detach()
    else:
        lam = torch.full((), float(lam), dtype=torch.float32, device=logits_full.device)
    compute_grad = torch.is_grad_enabled() and (logits_full.requires_grad or logits_small.requires_grad)
    loss, _, _ = torch.ops.adjoined.cuda_adjoined_loss_fwd(
        logits_full, logits_small, target, lam, float(eps), float(temperature), _RED_CODE[reduction],
        int(ignore_index), bool(detach_full), bool(compute_grad))
    return loss
