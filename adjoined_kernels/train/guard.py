"""Stop a run at its first non-finite loss or gradient, before it can write non-finite weights.

Every step adds its metric terms (loss, CE, KL) and whether its gradients are finite to a record kept on
the training device, so the check costs no host sync; the host reads it every step on the CPU, and on a GPU
every ``CHECK_EVERY`` steps and before every checkpoint. ``--detect-anomaly`` adds a forward hook on every
module that names the first one whose output is non-finite while its inputs are finite, and turns on
autograd's anomaly mode for the backward.
"""
from __future__ import annotations

import contextlib

import torch

CHECK_EVERY = 50  # GPU steps between host checks: a sync per step would stall the launch queue
TERMS = ("loss", "CE", "KL", "gradient")


class NonFiniteError(RuntimeError):
    """The loss or a gradient became NaN or infinite; the message names the step and what went wrong."""


class Guard:
    """The first step whose loss terms or gradients were not finite, found without a host sync."""

    def __init__(self, device: torch.device, last_good: str):
        self.device, self.last_good = device, last_good
        self.first = torch.full((), -1, dtype=torch.int64, device=device)
        self.which = torch.zeros(len(TERMS), dtype=torch.bool, device=device)

    def update(self, step: int, terms: torch.Tensor, params) -> None:
        """Record step ``step``: ``terms`` is the step's metric tensor (loss, CE, KL first); ``params`` the
        parameters whose ``.grad`` the optimizer is about to read."""
        grads = [p.grad for p in params if p.grad is not None]
        gnorm = torch.nn.utils.get_total_norm(grads) if grads else terms.new_zeros(())
        bad = ~torch.isfinite(torch.cat([terms[:3].float(), gnorm.float().view(1)]))
        fresh = (self.first < 0) & bad.any()
        self.first = torch.where(fresh, step, self.first)
        self.which = torch.where(fresh, bad, self.which)

    def due(self, step: int) -> bool:
        return self.device.type != "cuda" or step % CHECK_EVERY == 0

    def check(self, epoch: int, steps_per_epoch: int) -> None:
        """Raise NonFiniteError if any recorded step was not finite (one host sync)."""
        first = int(self.first)
        if first < 0:
            return
        what = ", ".join(t for t, b in zip(TERMS, self.which.tolist()) if b)
        raise NonFiniteError(
            f"non-finite {what} at step {first} (epoch {first // steps_per_epoch + 1}, found while in epoch "
            f"{epoch + 1}); the run stopped without saving. The last good checkpoint is {self.last_good}. Lower "
            "--lr, or rerun with --detect-anomaly to name the first layer producing a non-finite value")

    def saved(self, path: str, epoch: int, step: int) -> None:
        """A checkpoint of finite weights was written: the message points to it from now on."""
        self.last_good = f"{path} (epoch {epoch}, step {step})"


def _finite(x) -> bool:
    if isinstance(x, torch.Tensor):
        return not x.is_floating_point() or bool(torch.isfinite(x).all())
    if isinstance(x, (tuple, list)):
        return all(_finite(v) for v in x)
    if isinstance(x, dict):
        return all(_finite(v) for v in x.values())
    return True


@contextlib.contextmanager
def detect_anomaly(model: torch.nn.Module):
    """Within the block, a forward that produces a non-finite value raises NonFiniteError naming the first
    module (by its qualified name) whose inputs were finite and output was not; the backward runs under
    ``torch.autograd.detect_anomaly``, which names the backward op that produced a NaN."""
    def hook(name):
        def check(module, inputs, output):
            if _finite(inputs) and not _finite(output):
                raise NonFiniteError(f"--detect-anomaly: {name or 'the model'} ({type(module).__name__}) produced "
                                     "a non-finite output from finite inputs")
        return check

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules()]
    try:
        with torch.autograd.detect_anomaly(check_nan=True):
            yield
    finally:
        for h in handles:
            h.remove()
