"""DAN width search: one Gumbel-softmax gate per searchable width of an adjoined ResNet.

Paper: "Adjoined Networks: a training paradigm with applications to network compression", Sec. 5, Eq. 4-5;
the derivation of the gate and its placement are in ``docs/dan.md``.

A searchable width of full size ``C`` has candidates ``c_i = C / alpha_i`` and gate logits ``eta`` (one entry
per candidate, in the order of ``search_alphas``). The Gumbel weights are ``g = softmax((eta + G) / tau)``,
with ``G ~ Gumbel(0, 1)`` drawn afresh at every training forward. The mixture of the candidates' masked
outputs, ``sum_i g_i * mask_i(z)``, is one output of the widest candidate's width times the channel scale
``s[c] = sum_{i: c < c_i} g_i``, which the model applies right after the small branch's batch-norm.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .._checks import divide
from .widths import StageWidths


def check_alphas(alphas) -> tuple[int, ...]:
    """``search_alphas`` as a tuple of distinct positive ints; ValueError otherwise."""
    try:
        out = tuple(int(a) for a in alphas)
    except (TypeError, ValueError):
        raise ValueError(f"search_alphas must be a sequence of positive ints, got {alphas!r}") from None
    if not out or min(out) < 1 or len(set(out)) != len(out) or any(a != b for a, b in zip(out, alphas)):
        raise ValueError(f"search_alphas must be distinct positive ints, e.g. (1, 2, 4, 8, 16); got {alphas!r}")
    return out


class WidthGate(nn.Module):
    """The gate of one searchable width.

    Args:
        name: the width's name, e.g. ``"layer3.out"`` or ``"layer3.1.conv2"`` (used in errors and reports).
        full: the full network's width C. alphas: the candidate divisors.

    Attributes:
        eta: ``[len(alphas)]`` float32 gate logits, initialised to 0 (every candidate equally likely).
        widths: the candidate widths ``C // alpha_i``, in the order of ``alphas``.

    Raises:
        ValueError: a candidate divisor that does not divide C, naming the layer.
    """

    def __init__(self, name: str, full: int, alphas: tuple[int, ...]):
        super().__init__()
        self.name, self.full = name, full
        self.widths = tuple(divide(f"{name} width", full, a) for a in alphas)
        self.eta = nn.Parameter(torch.zeros(len(alphas)))
        keep = torch.arange(max(self.widths))[None, :] < torch.tensor(self.widths)[:, None]
        self.register_buffer("mask", keep.float(), persistent=False)  # [candidates, widest]
        self.register_buffer("cand", torch.tensor(self.widths, dtype=torch.float32), persistent=False)

    @property
    def widest(self) -> int:
        return max(self.widths)

    def probs(self) -> torch.Tensor:
        """Candidate probabilities ``softmax(eta)``, ``[candidates]``: the law of the Gumbel-max sample
        ``argmax(eta + G)`` and the distribution whose mode (or projection) is exported."""
        return torch.softmax(self.eta, dim=0)

    def relaxed(self, tau) -> torch.Tensor:
        """The noise-free relaxed gate ``softmax(eta / tau)``, ``[candidates]`` (the eval mixture)."""
        return torch.softmax(self.eta / tau, dim=0)

    def one_hot(self, index=None) -> torch.Tensor:
        """The one-hot gate of candidate ``index`` (default: ``argmax eta``), ``[candidates]`` float32, made
        on the device without a host sync."""
        index = self.eta.detach().argmax() if index is None else torch.tensor(index, device=self.eta.device)
        return torch.nn.functional.one_hot(index, self.eta.numel()).to(self.eta.dtype)

    def gumbel_weights(self, tau) -> torch.Tensor:
        """``softmax((eta + G) / tau)`` with fresh Gumbel(0, 1) noise ``G = -log(E)``, ``E ~ Exp(1)``."""
        noise = -torch.empty_like(self.eta).exponential_().log()
        return torch.softmax((self.eta + noise) / tau, dim=0)

    def scale(self, g: torch.Tensor) -> torch.Tensor:
        """The channel scale ``s[c] = sum_{i: c < c_i} g_i``, ``[widest]``."""
        return g @ self.mask

    def expected_width(self) -> torch.Tensor:
        """``E[c] = sum_i softmax(eta)_i c_i``, a 0-dim tensor differentiable w.r.t. eta."""
        return self.probs() @ self.cand

    def argmax_width(self) -> int:
        return self.widths[int(self.eta.detach().argmax())]

    def extra_repr(self) -> str:
        return f"{self.name}: candidates {self.widths}"


class WidthSearch(nn.Module):
    """The gates of every searchable width of stages 2-4 of an adjoined ResNet, and the temperature tau.

    Searchable widths: each stage's residual-stream width (one gate shared by every block that adds into the
    stage) and every inner conv width of every block. ``gates`` lists them stage by stage: the stage's
    ``out`` gate, then the inner gates block by block.

    Args:
        full: the full widths of stages 2-4 (:class:`StageWidths`). alphas: candidate divisors.
        tau: initial temperature (> 0).
    """

    def __init__(self, full: list[StageWidths], alphas, tau: float = 15.0):
        super().__init__()
        self.alphas = check_alphas(alphas)
        self.gates = nn.ModuleList()
        self.layout: list[StageWidths] = []  # the same structure as ``full``, holding indices into ``gates``
        for si, st in enumerate(full):
            stage = f"layer{si + 2}"
            out = self._add(f"{stage}.out", st.out)
            inner = [[self._add(f"{stage}.{b}.conv{j + 1}", w) for j, w in enumerate(blk)]
                     for b, blk in enumerate(st.inner)]
            self.layout.append(StageWidths(out, inner))
        self.register_buffer("tau", torch.tensor(float(tau)))
        # eval forwards use one-hot gates of these candidate indices (one per gate) when set; not saved
        self.eval_choice: list[int] | None = None

    def _add(self, name: str, full: int) -> int:
        self.gates.append(WidthGate(name, full, self.alphas))
        return len(self.gates) - 1

    def _map(self, fn) -> list[StageWidths]:
        return [StageWidths(fn(self.gates[st.out]), [[fn(self.gates[i]) for i in blk] for blk in st.inner])
                for st in self.layout]

    def widest(self) -> list[StageWidths]:
        """The small branch's widths during the search: every gate's widest candidate."""
        return self._map(lambda g: g.widest)

    def argmax_widths(self) -> list[StageWidths]:
        """The searched architecture: the most likely candidate of every gate."""
        return self._map(lambda g: g.argmax_width())

    def expected_widths(self) -> list[StageWidths]:
        """Every width's expectation under ``softmax(eta)`` (0-dim tensors, differentiable w.r.t. eta)."""
        return self._map(lambda g: g.expected_width())

    def argmax_width_tensors(self) -> list[StageWidths]:
        """The argmax widths as 0-dim float64 tensors on eta's device (no host sync; exact for widths)."""
        return self._map(lambda g: g.one_hot().double() @ g.cand.double())

    def block_scales(self, noise: bool) -> list[tuple[list[torch.Tensor], torch.Tensor]]:
        """Per block, in model order: ``(inner scales, out scale)``. ``noise``: Gumbel weights (training).
        Otherwise one-hot gates of :attr:`eval_choice` when it is set (the architecture to export, run through
        the super-network), else the noise-free ``softmax(eta / tau)``. A stage's out gate draws one sample
        per call."""
        if noise:
            weights = [g.gumbel_weights(self.tau) for g in self.gates]
        elif self.eval_choice is not None:
            weights = [g.one_hot(k) for g, k in zip(self.gates, self.eval_choice)]
        else:
            weights = [g.relaxed(self.tau) for g in self.gates]
        scales = [g.scale(w) for g, w in zip(self.gates, weights)]
        return [([scales[i] for i in blk], scales[st.out]) for st in self.layout for blk in st.inner]

    def probabilities(self) -> dict[str, list[float]]:
        """``{gate name: softmax(eta) as floats}``, for logs and reports."""
        with torch.no_grad():
            return {g.name: [float(p) for p in g.probs()] for g in self.gates}

    def etas(self) -> dict[str, list[float]]:
        """``{gate name: eta as floats}``, for logs and reports."""
        return {g.name: [float(e) for e in g.eta.detach().cpu()] for g in self.gates}
