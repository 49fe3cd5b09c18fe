"""Autograd of the fused-loss ops (Triton and CUDA): their forward already computed both gradients.

The op returns ``(loss, grad_full, grad_small)``; backward only scales the saved gradients by
grad_output, on the device (no host sync): DESIGN §1, seeds/000 Eq. 3.
"""
from __future__ import annotations

import torch


def scale(grad: torch.Tensor, grad_output: torch.Tensor) -> torch.Tensor:
    """A saved gradient ``[B, C]`` times grad_output (0-dim, or ``[B]`` for reduction="none")."""
    return grad * (grad_output.unsqueeze(-1) if grad_output.dim() == 1 else grad_output)


def register(op_name: str, n_inputs: int) -> None:
    """Register the saved-gradient autograd for ``op_name`` (``"adjoined::..."``), whose first two of
    ``n_inputs`` arguments are the logits and whose outputs are ``(loss, grad_full, grad_small)``.

    Backward raises RuntimeError when the forward ran with ``compute_grad=False`` (empty saved gradients).
    """
    def setup_context(ctx, inputs, output):
        _, gf, gs = output
        ctx.mark_non_differentiable(gf, gs)
        ctx.save_for_backward(gf, gs)

    def backward(ctx, grad_loss, _grad_gf, _grad_gs):
        gf, gs = ctx.saved_tensors
        need = ctx.needs_input_grad
        if (need[0] or need[1]) and gf.numel() == 0:
            raise RuntimeError(f"{op_name} ran with compute_grad=False, so it saved no gradients; call it with "
                               "compute_grad=True to differentiate it")
        return (scale(gf, grad_loss) if need[0] else None, scale(gs, grad_loss) if need[1] else None,
                *([None] * (n_inputs - 2)))

    torch.library.register_autograd(op_name, backward, setup_context=setup_context)
