"""The DAN search loss and temperature schedule (the paper's Sec. 5, Eq. 6 and Sec. 7.3; ``docs/dan.md``)."""
from __future__ import annotations

import math

import torch

from .ops.loss import adjoined_loss

TAU0 = 15.0
TAU_DECAY = 0.045
TAU_END = 1.0


def tau_at(epoch: int, tau0: float = TAU0, decay: float = TAU_DECAY) -> float:
    """The Gumbel-softmax temperature of epoch ``epoch`` (0-based): ``tau0 * exp(-decay * epoch)``.

    The paper starts at 15 and multiplies by ``exp(-0.045)`` every epoch (Sec. 7.3).
    """
    return tau0 * math.exp(-decay * epoch)


def tau_at_step(step: int, total: int, tau0: float = TAU0, tau_end: float = TAU_END) -> float:
    """The temperature of step ``step`` (0-based) of ``total``, annealed geometrically every step:
    ``tau0 * (tau_end / tau0) ** (step / (total - 1))``, so the first step runs at ``tau0`` and the last at
    ``tau_end`` (docs/dan.md, "Loss and schedule"). ``total`` <= 1 gives ``tau0``."""
    return tau0 * (tau_end / tau0) ** (min(step, total - 1) / (total - 1)) if total > 1 else tau0


def flops_penalty(expected_flops: torch.Tensor, full_flops: float, flops_target: float | None = None,
                  argmax_flops: torch.Tensor | None = None, tolerance: float = 0.05):
    """The FLOPs term of the search loss, on FLOPs normalised by the full network's (docs/dan.md).

    - ``flops_target`` None: ``expected_flops / full_flops`` (the paper's Eq. 6).
    - ``flops_target`` and ``argmax_flops``: the two-sided band term in the style of TAS (Dong and Yang,
      "Network Pruning via Transformable Architecture Search", NeurIPS 2019, Eq. 5), keyed on the FLOPs of
      the current argmax architecture: ``+ratio`` above ``flops_target``, ``-ratio`` below
      ``(1 - tolerance) * flops_target``, 0 inside, where ``ratio = expected_flops / full_flops``. The sign
      says where the network that will be exported stands; the gradient of ``E[FLOPs]`` moves it.
    - ``flops_target`` alone: the one-sided hinge ``relu(ratio - flops_target)``.

    Args:
        expected_flops: 0-dim tensor, ``E[FLOPs]`` per image (differentiable). full_flops: > 0.
        flops_target: a fraction of ``full_flops``. argmax_flops: 0-dim tensor or float, FLOPs per image of
            the argmax architecture (``net.argmax_small_flops()``). tolerance: the band's width, a fraction.

    Returns a 0-dim tensor (``expected_flops``'s dtype).
    """
    ratio = expected_flops / full_flops
    if flops_target is None:
        return ratio
    if argmax_flops is None:
        return torch.relu(ratio - flops_target)
    arg = torch.as_tensor(argmax_flops, device=ratio.device).detach() / full_flops
    sign = (arg > flops_target).to(ratio.dtype) - (arg < (1 - tolerance) * flops_target).to(ratio.dtype)
    return sign * ratio


def dan_loss(logits_full, logits_small, target, lam, expected_flops, full_flops: float, flops_weight: float,
             flops_target: float | None = None, argmax_flops=None, flops_tolerance: float = 0.05,
             **loss_kwargs) -> torch.Tensor:
    """Differentiable adjoined loss (the paper's Def. 2, Eq. 6) with FLOPs normalised by the full network's:

        CE(logits_full, target) + lam * (KL(p_full || q_small) + flops_weight * penalty)

    where ``penalty`` is :func:`flops_penalty` (the paper's gamma is ``flops_weight``, on a normalised count,
    so one weight transfers between models and resolutions).

    Args:
        logits_full, logits_small: ``[B, C]`` float logits. target: ``[B]`` int64 class indices.
        lam: lambda(t), a float or 0-dim tensor.
        expected_flops: 0-dim tensor, ``net.expected_small_flops()`` (differentiable w.r.t. the gate logits).
        full_flops: the full network's FLOPs per image (``net.full_flops()``), > 0.
        flops_weight: >= 0. flops_target: None, or a fraction of ``full_flops`` in (0, 1]: with
            ``argmax_flops`` (``net.argmax_small_flops()``) the band term around
            ``[(1 - flops_tolerance) * flops_target, flops_target]``, without it the hinge above the target.
        loss_kwargs: passed to :func:`adjoined_kernels.adjoined_loss` (eps, temperature, backend...),
            which computes CE + lam * KL with the fused kernel. ``reduction`` must stay "mean".

    Returns:
        A 0-dim float32 tensor.

    Raises:
        ValueError: full_flops <= 0, flops_weight < 0, a flops_target outside (0, 1], or a reduction other
            than "mean" (the FLOPs term is per image, so it only adds to a mean), a flops_tolerance outside
            [0, 1).
    """
    if not full_flops > 0 or not flops_weight >= 0:
        raise ValueError(f"need full_flops > 0 and flops_weight >= 0, got {full_flops} and {flops_weight}")
    if flops_target is not None and not 0 < flops_target <= 1:
        raise ValueError(f"flops_target must be a fraction of the full network's FLOPs in (0, 1], got {flops_target}")
    if not 0 <= flops_tolerance < 1:
        raise ValueError(f"flops_tolerance must be in [0, 1), got {flops_tolerance}")
    if loss_kwargs.get("reduction", "mean") != "mean":
        raise ValueError(f"dan_loss needs reduction='mean', got {loss_kwargs['reduction']!r}")
    base = adjoined_loss(logits_full, logits_small, target, lam, **loss_kwargs)
    penalty = flops_penalty(expected_flops, full_flops, flops_target, argmax_flops, flops_tolerance)
    return base + lam * flops_weight * penalty.float()
