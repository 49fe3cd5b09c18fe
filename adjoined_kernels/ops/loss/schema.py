"""The contract every loss backend implements: one schema, one fake kernel and one autograd formula.

``adjoined_loss_fwd`` returns ``(loss, d loss/d logits_full, d loss/d logits_small)``: the forward already
computes both gradients of the reduced loss, so the backward only scales them by grad_output, on the device
(no host sync; docs/maths.md, section 3, "Gradient"). ``reduction`` is 0 ("none": a ``[B]`` loss), 1 ("sum")
or 2 ("mean"); ``lam`` is a 0-dim floating tensor on the logits' device; with ``compute_grad=False`` both
gradients are empty ``[0]`` tensors. Outputs are in the logits' dtype.

The Triton backend registers it as ``adjoined::triton_adjoined_loss_fwd``, the CUDA extension in C++ as
``adjoined::cuda_adjoined_loss_fwd`` (csrc/torch_bindings.cpp).
"""
from __future__ import annotations

import torch

SCHEMA = ("(Tensor logits_full, Tensor logits_small, Tensor target, Tensor lam, float eps, float temperature, "
          "int reduction, int ignore_index, bool detach_full, bool compute_grad) -> (Tensor, Tensor, Tensor)")
REDUCTIONS = ("mean", "sum", "none")
RED_CODE = {"none": 0, "sum": 1, "mean": 2}


def loss_shape(logits: torch.Tensor, reduction: int):
    return (logits.shape[0],) if reduction == 0 else ()


def grad_shape(logits: torch.Tensor, compute_grad: bool):
    return logits.shape if compute_grad else (0,)


def fake(logits_full, logits_small, target, lam, eps, temperature, reduction, ignore_index, detach_full,
         compute_grad):
    return (logits_full.new_empty(loss_shape(logits_full, reduction)),
            logits_full.new_empty(grad_shape(logits_full, compute_grad)),
            logits_small.new_empty(grad_shape(logits_small, compute_grad)))


def scale(grad: torch.Tensor, grad_output: torch.Tensor) -> torch.Tensor:
    """A saved gradient ``[B, C]`` times grad_output (0-dim, or ``[B]`` for reduction="none")."""
    return grad * (grad_output.unsqueeze(-1) if grad_output.dim() == 1 else grad_output)


def _setup_context(ctx, inputs, output):
    _, gf, gs = output
    ctx.mark_non_differentiable(gf, gs)
    ctx.save_for_backward(gf, gs)


def _backward(ctx, grad_loss, _grad_gf, _grad_gs):
    gf, gs = ctx.saved_tensors
    need = ctx.needs_input_grad
    if (need[0] or need[1]) and gf.numel() == 0:
        raise RuntimeError("adjoined_loss_fwd ran with compute_grad=False, so it saved no gradients; call it with "
                           "compute_grad=True to differentiate it")
    return (scale(gf, grad_loss) if need[0] else None, scale(gs, grad_loss) if need[1] else None,
            *([None] * 8))


def register(op_name: str):
    """Give ``op_name`` (``"adjoined::..."``, defined with SCHEMA) the fake kernel and the autograd; returns
    the op. Its backward raises RuntimeError when the forward ran with ``compute_grad=False``."""
    torch.library.register_fake(op_name)(fake)
    torch.library.register_autograd(op_name, _backward, setup_context=_setup_context)
    ns, name = op_name.split("::")
    return getattr(getattr(torch.ops, ns), name)
