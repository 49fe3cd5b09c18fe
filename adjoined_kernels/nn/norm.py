"""AdjoinedBatchNorm2d: one BatchNorm per branch (the paper's App. C), DAN's gate after the small BN."""
from __future__ import annotations

import torch.nn as nn


class AdjoinedBatchNorm2d(nn.Module):
    """Separate batch-norms for the full branch (``full``, C channels) and the small one (``small``, c_s).

    ``forward(z_full, z_small, small_scale=None)`` returns both normalised tensors. ``small_scale``
    ``[c_s]`` multiplies the small output *after* its BN, so batch statistics cannot cancel it
    (docs/maths.md, section 5; docs/dan.md).
    """

    def __init__(self, num_features: int, small_features: int, device=None, dtype=None):
        super().__init__()
        if not 1 <= small_features <= num_features:
            raise ValueError(f"small_features must be in [1, {num_features}], got {small_features}")
        self.full = nn.BatchNorm2d(num_features, device=device, dtype=dtype)
        self.small = nn.BatchNorm2d(small_features, device=device, dtype=dtype)

    def forward(self, z_full, z_small, small_scale=None):
        y_small = self.small(z_small)
        if small_scale is not None:
            y_small = y_small * small_scale.view(1, -1, 1, 1)
        return self.full(z_full), y_small
