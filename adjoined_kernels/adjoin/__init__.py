"""``ak.adjoin``: turn a torch.fx-traceable CNN into an adjoined network and export either branch
(the paper "Adjoined Networks: a training paradigm with applications to network compression", Sec. 3).
See docs/adjoin.md."""
from .export import export_branch, fold_batchnorm_fx
from .layout import Layout
from .model import AdjoinedModel, adjoin
from .modules import AdjoinedLinear, SplitAdjoinedConv2d
from .timm_models import build_timm, timm_start
from .torchvision_models import DEFAULT_START, build_torchvision

__all__ = ["adjoin", "AdjoinedModel", "export_branch", "fold_batchnorm_fx", "Layout", "AdjoinedLinear",
           "SplitAdjoinedConv2d", "DEFAULT_START", "build_torchvision", "build_timm", "timm_start"]
