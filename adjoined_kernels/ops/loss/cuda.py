"""The CUDA loss backend: ``adjoined::cuda_adjoined_loss_fwd`` of ``csrc/adjoined_loss.cu`` behind the contract
of ops/loss/schema.py. One warp per row up to 2048 classes and one block per row beyond: an online-softmax
pass for the three log-sum-exps, a second pass for the eps > 0 sums, a last pass writing both gradients;
"sum" and "mean" add the per-row terms in a fixed order (docs/kernels.md, "The loss kernels").

Importing this module loads the extension and raises RuntimeError when it is not built.
"""
from __future__ import annotations

from .._ext import load
from .schema import register

load()
OP = register("adjoined::cuda_adjoined_loss_fwd")
