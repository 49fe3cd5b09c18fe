"""Old import path of the adjoined loss (adjoined_kernels.ops.adjoined_loss): the public names, re-exported
from :mod:`adjoined_kernels.ops.loss`; other names (tools/loss_ptxas_report.py reads the Triton planner and
kernels here) come from :mod:`adjoined_kernels.ops.loss.triton`, imported on first use."""
from .loss import REDUCTIONS, SUPPORTED, adjoined_loss, adjoined_loss_ref  # noqa: F401


def __getattr__(name):
    from .loss import triton
    return getattr(triton, name)
