"""Adjoined ResNets and the plain networks they export to."""
from .plain import PlainBlock, PlainResNet
from .resnet import (AdjoinedBlock, AdjoinedResNet, adjoined_resnet18, adjoined_resnet34, adjoined_resnet50,
                     adjoined_resnet100, adjoined_resnet101)
from .search import WidthGate, WidthSearch
from .widths import StageWidths

__all__ = ["AdjoinedResNet", "AdjoinedBlock", "PlainResNet", "PlainBlock", "StageWidths", "adjoined_resnet18",
           "adjoined_resnet34", "adjoined_resnet50", "adjoined_resnet100",
           "adjoined_resnet101", "WidthSearch", "WidthGate"]
