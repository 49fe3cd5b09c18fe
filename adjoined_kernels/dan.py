"""The DAN search loss and temperature schedule (the paper's Sec. 5, Eq. 6 and Sec. 7.3; ``docs/dan.md``)."""
from __future__ import annotations

import math

import torch

from .ops.loss import adjoined_loss

TAU0 = 15.0
TAU_DECAY = 0.045


def tau_at(epoch: int, tau0: float = TAU0, decay: float = TAU_DECAY) -> float:
    """The Gumbel-softmax temperature of epoch ``epoch`` (0-based): ``tau0 * exp(-decay * epoch)``.

    The paper starts at 15 and multiplies by ``exp(-0.045)`` every epoch (Sec. 7.3).
    """
    return tau0 * math.exp(-decay * epoch)


def flops_penalty(expected_flops: torch.Tensor, full_flops: float, flops_target: float | None = None):
    """The FLOPs term of the search loss, on FLOPs normalised by the full network's.

    ``expected_flops / full_flops`` when ``flops_target`` is None; otherwise only the excess over the target,
    ``relu(expected_flops / full_flops - flops_target)``. Returns a 0-dim tensor (``expected_flops``'s dtype).
    """
    ratio = expected_flops / full_flops
    return ratio if flops_target is None else torch.relu(ratio - flops_target)


def dan_loss(logits_full, logits_small, target, lam, expected_flops, full_flops: float, flops_weight: float,
             flops_target: float | None = None, **loss_kwargs) -> torch.Tensor:
    """Differentiable adjoined loss (the paper's Def. 2, Eq. 6) with FLOPs normalised by the full network's:

        CE(logits_full, target) + lam * (KL(p_full || q_small) + flops_weight * penalty)

    where ``penalty`` is :func:`flops_penalty` (the paper's gamma is ``flops_weight``, on a normalised count,
    so one weight transfers between models and resolutions).

    Args:
        logits_full, logits_small: ``[B, C]`` float logits. target: ``[B]`` int64 class indices.
        lam: lambda(t), a float or 0-dim tensor.
        expected_flops: 0-dim tensor, ``net.expected_small_flops()`` (differentiable w.r.t. the gate logits).
        full_flops: the full network's FLOPs per image (``net.full_flops()``), > 0.
        flops_weight: >= 0. flops_target: None, or a fraction of ``full_flops`` in (0, 1] below which FLOPs are
            free. loss_kwargs: passed to :func:`adjoined_kernels.adjoined_loss` (eps, temperature, backend...),
            which computes CE + lam * KL with the fused kernel. ``reduction`` must stay "mean".

    Returns:
        A 0-dim float32 tensor.

    Raises:
        ValueError: full_flops <= 0, flops_weight < 0, a flops_target outside (0, 1], or a reduction other
            than "mean" (the FLOPs term is per image, so it only adds to a mean).
    """
    if not full_flops > 0 or not flops_weight >= 0:
        raise ValueError(f"need full_flops > 0 and flops_weight >= 0, got {full_flops} and {flops_weight}")
    if flops_target is not None and not 0 < flops_target <= 1:
        raise ValueError(f"flops_target must be a fraction of the full network's FLOPs in (0, 1], got {flops_target}")
    if loss_kwargs.get("reduction", "mean") != "mean":
        raise ValueError(f"dan_loss needs reduction='mean', got {loss_kwargs['reduction']!r}")
    base = adjoined_loss(logits_full, logits_small, target, lam, **loss_kwargs)
    return base + lam * flops_weight * flops_penalty(expected_flops, full_flops, flops_target).float()
