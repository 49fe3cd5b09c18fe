"""Rounding bounds that follow the arithmetic: a test compares two computations of the same
value and allows what floating point can make of it, from the dtype's eps and the reduction length, never a
floor scaled to the value itself (a gradient that is exactly 0 has nothing but round-off to compare)."""
from __future__ import annotations

import math

import torch


def eps(dtype: torch.dtype) -> float:
    """Unit round-off of ``dtype`` (half of ``torch.finfo(dtype).eps``)."""
    return torch.finfo(dtype).eps / 2


def gamma(n: int, dtype: torch.dtype) -> float:
    """Higham's ``gamma_n = n u / (1 - n u)``: the relative bound of a recursive sum or dot product of ``n``
    terms, relative to the sum of the terms' absolute values ("Accuracy and Stability of Numerical
    Algorithms", Higham, Eq. 3.4 and Lemma 3.1)."""
    nu = n * eps(dtype)
    if nu >= 1:
        raise ValueError(f"gamma_{n} is unbounded for {dtype}: n * u = {nu} >= 1")
    return nu / (1 - nu)


def _abs_max(ts) -> float:
    vals = [float(t.detach().abs().max()) for t in ts if isinstance(t, torch.Tensor) and t.numel()]
    return max(vals, default=0.0)


def _tensors(x):
    return [x] if isinstance(x, torch.Tensor) else [t for t in x if isinstance(t, torch.Tensor)]


class GradTolerances:
    """Per parameter, an upper bound on the rounding error of its gradient in ``dtype``.

    Every parameter gradient of a conv, BN or linear layer is a sum over the output positions of its layer,
    ``L = numel(output) / channels`` terms (batch x P x Q). Each term is at most
    ``T = max|dLoss/dOutput| * max(1, max|input|, sqrt(L))`` (the last for a BN's normalised input, at most
    ``sqrt(L)`` in magnitude), so the gradient's error is at most ``gamma_L * L * T``. Upstream error in
    ``dLoss/dOutput`` is relative, a few ``u`` per layer, and ``gamma_L`` (``L >= 2``) already covers it.

    Use: ``tol = GradTolerances(model)``; run forward and backward; ``tol.bound(name)``; ``tol.close()``.
    """

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype = torch.float32):
        self.dtype, self.stats, self.handles = dtype, {}, []
        for name, mod in model.named_modules():
            own = [n for n, _ in mod.named_parameters(recurse=False)]
            if own:
                self.handles.append(mod.register_forward_hook(self._hook([f"{name}.{n}" if name else n
                                                                          for n in own])))

    def _hook(self, names):
        def hook(mod, inputs, output):
            outs = _tensors(output)
            reduced = max(t.numel() // t.shape[1] if t.dim() > 1 else 1 for t in outs)
            stat = {"L": reduced, "x": _abs_max(_tensors(inputs)), "dy": 0.0}
            for name in names:
                self.stats[name] = stat
            for t in outs:
                if t.requires_grad:
                    t.register_hook(lambda g, s=stat: s.__setitem__("dy", max(s["dy"], _abs_max([g]))))
        return hook

    def bound(self, name: str) -> float:
        """The bound for the gradient of parameter ``name`` (a ``named_parameters`` key), in its units."""
        s = self.stats[name]
        L = max(s["L"], 2)
        return gamma(L, self.dtype) * L * s["dy"] * max(1.0, s["x"], math.sqrt(L))

    def close(self) -> None:
        for h in self.handles:
            h.remove()
