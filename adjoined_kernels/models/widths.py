"""Per-layer small widths of an adjoined ResNet, kept in one place so a DAN search can set them."""
from __future__ import annotations

from dataclasses import dataclass, field

from .._checks import divide


@dataclass
class StageWidths:
    """Widths of one stage (layer2..4).

    ``out``: the stage's residual-stream width, shared by every block that adds into it.
    ``inner``: per block, the widths of its inner convs (basic: ``[mid]``; bottleneck: ``[mid1, mid2]``).
    """

    out: int
    inner: list[list[int]] = field(default_factory=list)


def full_widths(block: str, layers: list[int], width: int) -> list[StageWidths]:
    """Full-network widths of stages 1..4 for base width ``width`` (64 in torchvision)."""
    expansion = 4 if block == "bottleneck" else 1
    n_inner = 2 if block == "bottleneck" else 1
    return [StageWidths(width * 2 ** i * expansion, [[width * 2 ** i] * n_inner for _ in range(n)])
            for i, n in enumerate(layers)]


def scaled_widths(stages: list[StageWidths], alpha: int) -> list[StageWidths]:
    """Every width divided by ``alpha``; ValueError if one does not divide."""
    return [StageWidths(divide(f"stage {i + 2} width", s.out, alpha),
                        [[divide(f"stage {i + 2} inner width", w, alpha) for w in blk] for blk in s.inner])
            for i, s in enumerate(stages)]


def check_widths(small: list[StageWidths], full: list[StageWidths]) -> None:
    """ValueError unless ``small`` has the layout of ``full`` with every width in [1, full width]."""
    if len(small) != len(full):
        raise ValueError(f"small_widths must list {len(full)} stages (layer2..4), got {len(small)}")
    for i, (s, f) in enumerate(zip(small, full)):
        shape_ok = len(s.inner) == len(f.inner) and all(len(a) == len(b) for a, b in zip(s.inner, f.inner))
        if not shape_ok:
            raise ValueError(f"small_widths stage {i + 2} must have inner widths shaped like {f.inner}, got {s.inner}")
        pairs = [(s.out, f.out)] + [(a, b) for sa, fa in zip(s.inner, f.inner) for a, b in zip(sa, fa)]
        if any(not 1 <= a <= b for a, b in pairs):
            raise ValueError(f"small_widths stage {i + 2} widths must be in [1, full width]: {s} vs full {f}")
