"""Channel layouts of the small branch, and the tensor helpers the adjoined graphs call.

A *layout* says which channels (dim 1) of the full-branch tensor the small-branch tensor holds, as
ordered segments ``[(offset_in_full, length), ...]``. After a convolution it is a prefix ``[(0, c_s)]``
(the paper's mask a_alpha keeps the first ``c_out / alpha`` filters); after a channel concatenation it is
a prefix of each concatenated segment. See docs/adjoin.md.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Layout:
    """``full``: channels of the full tensor; ``segs``: ``((offset, length), ...)`` held by the small one.

    Segments are sorted by offset, disjoint, non-empty and merged when adjacent, so the small tensor's
    channel ``i`` is a strictly increasing function of ``i``.
    """

    full: int
    segs: tuple

    @staticmethod
    def make(full: int, segs) -> "Layout":
        merged = []
        for off, n in segs:
            if n <= 0:
                continue
            if merged and merged[-1][0] + merged[-1][1] == off:
                merged[-1] = (merged[-1][0], merged[-1][1] + n)
            else:
                merged.append((off, n))
        return Layout(full, tuple(merged))

    @staticmethod
    def prefix(full: int, small: int | None = None) -> "Layout":
        """The first ``small`` channels of ``full`` (all of them when ``small`` is None)."""
        return Layout.make(full, [(0, full if small is None else small)])

    @property
    def small(self) -> int:
        return sum(n for _, n in self.segs)

    @property
    def is_prefix(self) -> bool:
        return len(self.segs) == 1 and self.segs[0][0] == 0

    @property
    def complete(self) -> bool:
        """The small tensor holds every channel, in order: the branches have the same shape here."""
        return self.is_prefix and self.small == self.full

    def indices(self) -> list[int]:
        return [off + i for off, n in self.segs for i in range(n)]

    def scale(self, factor: int) -> "Layout":
        """Layout after merging each channel with ``factor`` trailing elements (``flatten(1)`` of NCHW)."""
        return Layout.make(self.full * factor, [(off * factor, n * factor) for off, n in self.segs])

    def select(self, lo: int, hi: int) -> tuple[int, int, "Layout"]:
        """Full channels ``[lo, hi)``: ``(start, stop)`` positions in the small tensor and their layout
        relative to ``lo``. The positions are contiguous because segments are sorted."""
        pos, start, stop, segs = 0, None, None, []
        for off, n in self.segs:
            a, b = max(off, lo), min(off + n, hi)
            if a < b:
                start = pos + (a - off) if start is None else start
                stop = pos + (b - off)
                segs.append((a - lo, b - a))
            pos += n
        if start is None:
            return 0, 0, Layout(hi - lo, ())
        return start, stop, Layout.make(hi - lo, segs)

    def runs_of(self, other: "Layout") -> list[tuple[int, int]] | None:
        """Positions ``[(start, length), ...]`` in this small tensor of the channels ``other`` holds, in
        ``other``'s order; None when ``other`` holds a channel this one does not."""
        where = {c: i for i, c in enumerate(self.indices())}
        runs = []
        for c in other.indices():
            p = where.get(c)
            if p is None:
                return None
            if runs and runs[-1][0] + runs[-1][1] == p:
                runs[-1] = (runs[-1][0], runs[-1][1] + 1)
            else:
                runs.append((p, 1))
        return runs

    def __str__(self) -> str:
        if self.complete:
            return f"all {self.full} channels"
        if self.is_prefix:
            return f"channels [0, {self.small}) of {self.full}"
        return f"{self.small} of {self.full} channels in segments {list(self.segs)}"


def concat(layouts: list[Layout]) -> Layout:
    """Layout of ``torch.cat`` of tensors with these layouts along the channel dim."""
    segs, base = [], 0
    for lay in layouts:
        segs += [(base + off, n) for off, n in lay.segs]
        base += lay.full
    return Layout.make(base, segs)


def gather(x: torch.Tensor, dim: int, runs) -> torch.Tensor:
    """``x`` restricted to positions ``runs = [(start, length), ...]`` along ``dim`` (slices, then a cat
    when there is more than one run); differentiable, and exported to ONNX as Slice/Concat."""
    dim = dim % x.dim()
    pieces = [x.narrow(dim, a, n) for a, n in runs]
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim)


def take_channels(x: torch.Tensor, bounds) -> tuple:
    """``x[:, a:b]`` for each ``(a, b)`` in ``bounds``: the small branch of a channel split/chunk."""
    return tuple(x[:, a:b] for a, b in bounds)


def reshape_tail(x: torch.Tensor, tail) -> torch.Tensor:
    """``x.reshape(N, C, *tail)``: a view that keeps the batch and channel dims of either branch."""
    return x.reshape(x.shape[0], x.shape[1], *tail)
