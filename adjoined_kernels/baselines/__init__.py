"""The comparison methods of the paper's tables, as ``adjoined-train --method kd|kddp|pwh`` (docs/baselines.md):

- ``kd``: knowledge distillation (Hinton et al., "Distilling the Knowledge in a Neural Network") into the AN
  small network, from a frozen ``standard`` teacher (:mod:`.kd`);
- ``kddp``: "Improved Knowledge Distillation with Dynamic Network Pruning" (:mod:`.kddp`);
- ``pwh``: "Pruning with Hints", iterated toward the AN small network's widths (:mod:`.pwh`).
"""
from __future__ import annotations

from .kd import Distilled, distill_loss, kd_loss
from .teacher import TeacherError, load_teacher

METHODS = ("kd", "kddp", "pwh")
PHASED = ("kddp", "pwh")


def build_kd(args, ds, adjoined, device):
    """The ``kd`` network: the AN small network (``export_small`` of the freshly built ``adjoined``) as the
    student of the frozen ``--teacher``."""
    from ..export import export_small
    return Distilled(export_small(adjoined), load_teacher(args, ds, device))


def run_phased(args, ds, device, log=print):
    """Train ``kddp`` or ``pwh`` (several phases); returns ``(net, history, finished)``."""
    if args.method == "kddp":
        from .kddp import run_kddp
        return run_kddp(args, ds, device, log)
    from .pwh import run_pwh
    return run_pwh(args, ds, device, log)


__all__ = ["METHODS", "PHASED", "Distilled", "TeacherError", "build_kd", "distill_loss", "kd_loss",
           "load_teacher", "run_phased"]
