"""AdjoinedLoss: module form of adjoined_loss ("Adjoined Networks", Def. 1, Eq. 3)."""
from __future__ import annotations

import torch.nn as nn

from ..ops.loss import REDUCTIONS, adjoined_loss


class AdjoinedLoss(nn.Module):
    """``loss_fn(logits_full, logits_small, target, lam)``; see :func:`adjoined_kernels.adjoined_loss`.

    ``lam`` is passed per call because it follows a schedule (:func:`adjoined_kernels.lambda_schedule`).

    Raises:
        ValueError: eps < 0, temperature <= 0 or an unknown reduction, at construction.
    """

    def __init__(self, eps=1e-6, temperature=1.0, reduction="mean", ignore_index=-100, detach_full=False,
                 backend="auto"):
        super().__init__()
        if eps < 0 or temperature <= 0 or reduction not in REDUCTIONS:
            raise ValueError(f"need eps >= 0, temperature > 0 and reduction in {REDUCTIONS}; got eps={eps}, "
                             f"temperature={temperature}, reduction={reduction!r}")
        self.eps, self.temperature, self.reduction = eps, temperature, reduction
        self.ignore_index, self.detach_full, self.backend = ignore_index, detach_full, backend

    def forward(self, logits_full, logits_small, target, lam):
        return adjoined_loss(logits_full, logits_small, target, lam, self.eps, self.temperature,
                             self.reduction, self.ignore_index, self.detach_full, self.backend)

    def extra_repr(self):
        return (f"eps={self.eps}, temperature={self.temperature}, reduction={self.reduction!r}, "
                f"detach_full={self.detach_full}, backend={self.backend!r}")
