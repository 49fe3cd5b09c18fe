"""Modules: FusedAdjoinedConv2d, AdjoinedBatchNorm2d, AdjoinedLoss."""
from .conv import FusedAdjoinedConv2d
from .loss import AdjoinedLoss
from .norm import AdjoinedBatchNorm2d

__all__ = ["FusedAdjoinedConv2d", "AdjoinedBatchNorm2d", "AdjoinedLoss"]
