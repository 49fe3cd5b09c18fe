"""Projection of a DAN search onto a FLOPs budget: the most likely architecture whose counted FLOPs fit.

Given the gate logits ``eta_l`` of every searchable width ``l``, the projection solves exactly

    maximise   sum_l log softmax(eta_l)[c_l]
    subject to (1 - tolerance) * B <= FLOPs(c) <= B

over every combination ``c`` of candidates, where ``FLOPs(c)`` is the count of
:func:`adjoined_kernels.models.flops.adjoined_flops` (what ``torch.utils.flop_counter`` reports for the
exported small network). ``docs/dan.md`` ("Projection at export") explains the method:

- the residual-stream width of each stage is enumerated (``K`` per stage, stage by stage, so a stage's
  prefix is shared by every choice of the later stages);
- given the stream widths, the FLOPs of a block depend only on its own inner widths, so the blocks are
  independent groups of a multiple-choice knapsack: a block offers one item per combination of its inner
  candidates, with its exact FLOPs and log-probability;
- the knapsack is a dynamic programme over the exact integer FLOPs reached so far: a state is one FLOPs
  value with the best log-probability reaching it. Every conv's FLOPs increase with every width, so the
  FLOPs still to come lie between the all-narrowest and all-widest completions, and states that cannot
  end in the band are dropped. Nothing is rounded, so the result is the exact maximum; it is recounted
  by ``adjoined_flops`` before it is returned.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch

from .flops import adjoined_flops, block_flops, shared_flops
from .widths import StageWidths


@dataclass
class Projection:
    """The result of :func:`project`.

    Attributes:
        choice: per gate (in ``net.search.gates`` order), the index of the chosen candidate.
        widths: the chosen widths as ``small_widths`` (per stage: residual stream, inner widths per block).
        flops: counted FLOPs per image of the small network at those widths (int).
        log_prob: ``sum_l log softmax(eta_l)[choice_l]`` (float, <= 0).
        argmax_log_prob: the same sum for the argmax architecture; ``argmax_log_prob - log_prob >= 0`` is
            what the projection gave up.
    """

    choice: list[int]
    widths: list[StageWidths]
    flops: int
    log_prob: float
    argmax_log_prob: float


def _block_hws(model, hw):
    """The ``(H, W)`` input of every adjoined block (geometry only: widths do not change it)."""
    _, hw = shared_flops(model, hw)
    out = []
    for blk in model.adjoined:
        out.append(hw)
        hw = block_flops(blk, hw, 1, [1] * (len(blk.convs) - 1), 1)[1]
    return out


class _Problem:
    """The knapsack of one search network at one input size (see the module docstring)."""

    def __init__(self, model, logp: list[np.ndarray], hw):
        search = model.search
        self.model, self.logp, self.gates = model, logp, search.gates
        self.layout = search.layout  # per stage: out gate index, inner gate indices per block
        self.hws = _block_hws(model, hw)
        self.shared, _ = shared_flops(model, hw)
        self.c0 = model.layer1[-1].out
        self.first = list(itertools.accumulate([0] + [len(st.inner) for st in self.layout]))  # first block per stage
        self.classes = model.fc.out_features
        self._rest: dict = {}  # memo of rest(); per problem, so nothing outlives it

    def cands(self, g: int) -> tuple[int, ...]:
        return self.gates[g].widths

    def block_items(self, s: int, b: int, c_in: int, out: int):
        """Item FLOPs ``[I]`` int64, log-probabilities ``[I]`` float64 and inner index tuples of block ``b`` of
        stage ``s`` between a ``c_in`` input and an ``out`` stream."""
        gs = self.layout[s].inner[b]
        combos = list(itertools.product(*(range(len(self.cands(g))) for g in gs)))
        blk, hw = self.model.adjoined[self.first[s] + b], self.hws[self.first[s] + b]
        f = [block_flops(blk, hw, c_in, [self.cands(g)[k] for g, k in zip(gs, ks)], out)[0] for ks in combos]
        lp = [sum(float(self.logp[g][k]) for g, k in zip(gs, ks)) for ks in combos]
        return np.array(f, dtype=np.int64), np.array(lp, dtype=np.float64), combos

    def rest(self, s: int, b: int, out: int, pick) -> int:
        """FLOPs after block ``b`` of stage ``s`` (stream width ``out``) to the logits, with every width not
        yet chosen at its narrowest (``pick=min``) or widest (``pick=max``): the bounds of what is to come."""
        key = (s, b, out, pick)
        if key not in self._rest:
            self._rest[key] = self._count_rest(s, b, out, pick)
        return self._rest[key]

    def _count_rest(self, s: int, b: int, out: int, pick) -> int:
        total, c_in = 0, out
        for si in range(s, len(self.layout)):
            st = self.layout[si]
            o = out if si == s else pick(self.cands(st.out))
            for bi in range(b + 1 if si == s else 0, len(st.inner)):
                blk, hw = self.model.adjoined[self.first[si] + bi], self.hws[self.first[si] + bi]
                total += block_flops(blk, hw, c_in, [pick(self.cands(g)) for g in st.inner[bi]], o)[0]
                c_in = o
        return total + 2 * c_in * self.classes


def _widths(search, choice: list[int]) -> list[StageWidths]:
    """``small_widths`` of the gate choice ``choice`` (one candidate index per gate)."""
    index = {id(g): i for i, g in enumerate(search.gates)}
    return search._map(lambda g: g.widths[choice[index[id(g)]]])


def _extremes(model, hw) -> tuple[int, int]:
    """The smallest and largest FLOPs of any architecture: every width narrowest, every width widest (each
    conv's FLOPs increase with every width)."""
    return tuple(int(adjoined_flops(model, model.search._map(lambda g: pick(g.widths)), hw)) for pick in (min, max))


def _trace(trail, k: int) -> list[int]:
    """The gate choice of final state ``k``, walking the knapsack's back-pointers from the last group."""
    choice = {}
    for entry in reversed(trail):
        if entry[0] == "out":
            choice[entry[1]] = entry[2]
            continue
        _, gates, combos, parent, item = entry
        choice.update(zip(gates, combos[int(item[k])]))
        k = int(parent[k])
    return [choice[g] for g in sorted(choice)]


def _merge(f, lp, items_f, items_lp, lo: float, hi: float):
    """One knapsack group: every state times every item, kept where ``lo <= FLOPs <= hi``, then one state per
    FLOPs value (the best log-probability; ties: the first in state-major order). Returns the new
    ``(flops, log_prob, parent state, item)`` arrays."""
    nf = (f[:, None] + items_f[None, :]).ravel()
    nl = (lp[:, None] + items_lp[None, :]).ravel()
    idx = np.flatnonzero((nf >= lo) & (nf <= hi))
    nf, nl = nf[idx], nl[idx]
    order = np.lexsort((-nl, nf))  # stable: equal (FLOPs, log-prob) keep their state-major order
    nf, nl, idx = nf[order], nl[order], idx[order]
    first = np.ones(nf.shape, dtype=bool)
    first[1:] = nf[1:] != nf[:-1]
    nf, nl, idx = nf[first], nl[first], idx[first]
    return nf, nl, idx // items_f.size, idx % items_f.size


def project(model, flops_budget: float, tolerance: float = 0.05, input_size=None) -> Projection:
    """The most likely architecture of a DAN search network whose counted FLOPs per image lie in
    ``[(1 - tolerance) * flops_budget, flops_budget]`` (exact; the module docstring says how).

    Args:
        model: an :class:`~adjoined_kernels.models.AdjoinedResNet` built with ``search_alphas``.
        flops_budget: FLOPs per image (a count, as ``model.small_flops``), > 0.
        tolerance: in [0, 1): the band's width as a fraction of the budget.
        input_size: ``(H, W)``, or None for the most recent forward's.

    Returns:
        A :class:`Projection`.

    Raises:
        ValueError: a budget <= 0 or a tolerance outside [0, 1); or no architecture's FLOPs lie in the band
            (the message names the smallest and the largest reachable FLOPs).
        RuntimeError: not a search network, or no forward yet and no input_size.
    """
    search = model._need_search("searched_widths")
    if not 0 < flops_budget < math.inf or not 0 <= tolerance < 1:
        raise ValueError(f"need 0 < flops_budget < inf and 0 <= tolerance < 1, got {flops_budget} and {tolerance}")
    hw = model._hw(input_size)
    with torch.no_grad():
        logp = [torch.log_softmax(g.eta.detach().double(), 0).cpu().numpy() for g in search.gates]
    pb = _Problem(model, logp, hw)
    lo_band, hi_band = (1 - tolerance) * flops_budget, float(flops_budget)
    best = {"lp": -math.inf, "choice": None, "flops": None}

    def stage(s: int, c_in: int, f, lp, trail):
        st = pb.layout[s]
        for ko, out in enumerate(pb.cands(st.out)):
            cur_f, cur_l, tr = f, lp + logp[st.out][ko], trail + [("out", st.out, ko)]
            for b in range(len(st.inner)):
                items_f, items_l, combos = pb.block_items(s, b, c_in if b == 0 else out, out)
                lo = lo_band - pb.rest(s, b, out, max)
                hi = hi_band - pb.rest(s, b, out, min)
                cur_f, cur_l, parent, item = _merge(cur_f, cur_l, items_f, items_l, lo, hi)
                tr = tr + [("block", st.inner[b], combos, parent, item)]
                if cur_f.size == 0:
                    break
            if cur_f.size == 0:
                continue
            if s + 1 < len(pb.layout):
                stage(s + 1, out, cur_f, cur_l, tr)
                continue
            # rest() of the last block already counted the classifier: the states are complete
            k = int(np.argmax(cur_l))
            if cur_l[k] > best["lp"]:
                best.update(lp=float(cur_l[k]), flops=int(cur_f[k] + 2 * out * pb.classes), choice=_trace(tr, k))

    # The states hold FLOPs without the classifier; rest() includes it, so the last block's bounds already
    # shift the band by the classifier of that stream width.
    stage(0, pb.c0, np.array([pb.shared], dtype=np.int64), np.zeros(1), [])
    if best["choice"] is None:
        small, large = _extremes(model, hw)
        raise ValueError(f"no architecture of the search has FLOPs in [{lo_band:,.0f}, {hi_band:,.0f}] "
                         f"(budget {flops_budget:,.0f}, tolerance {tolerance}): the reachable FLOPs per image "
                         f"range from {small:,} (every width narrowest) to {large:,} (every width widest)")
    choice = best["choice"]
    widths = _widths(search, choice)
    flops = int(adjoined_flops(model, widths, hw))
    if flops != best["flops"] or not lo_band <= flops <= hi_band:  # the DP and the count must agree
        raise RuntimeError(f"projection bug: the programme reached {best['flops']} FLOPs, the count is {flops}")
    arg = sum(float(lp.max()) for lp in logp)
    return Projection(choice, widths, flops, best["lp"], arg)
