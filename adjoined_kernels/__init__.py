"""adjoined-kernels: fused kernels, modules, models and a trainer for Adjoined Networks, from the paper
"Adjoined Networks: A Training Paradigm with Applications to Network Compression" (Nath, Kushagra, Yang).
The design (maths, kernels, benchmark protocol) is in docs/; docs/README.md indexes it.

Public API: adjoined_conv2d, adjoined_loss, AdjoinedLoss, FusedAdjoinedConv2d,
models.adjoined_resnet18/34/50/100/101 (DAN search networks with ``search_alphas=``), export_small,
available_backends, lambda_schedule, dan_loss and tau_at (DAN; docs/dan.md); adjoin, AdjoinedModel and
export_full (any torch.fx-traceable CNN; docs/adjoin.md).
"""
from . import models
from ._backend import available_backends
from .dan import dan_loss, tau_at
from .adjoin import AdjoinedModel, adjoin
from .export import export_full, export_small
from .nn import AdjoinedBatchNorm2d, AdjoinedLoss, FusedAdjoinedConv2d
from .ops.adjoined_conv2d import adjoined_conv2d, adjoined_conv2d_ref
from .ops.adjoined_loss import adjoined_loss, adjoined_loss_ref
from .schedules import SCHEDULES, lambda_schedule

__version__ = "0.1.0"

__all__ = [
    "adjoined_conv2d", "adjoined_conv2d_ref", "adjoined_loss", "adjoined_loss_ref", "AdjoinedLoss",
    "FusedAdjoinedConv2d", "AdjoinedBatchNorm2d", "models", "export_small", "export_full", "adjoin",
    "AdjoinedModel", "available_backends",
    "lambda_schedule", "SCHEDULES", "dan_loss", "tau_at",
]
