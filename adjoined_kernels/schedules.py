"""lambda(t) schedules for the KL weight of the adjoined loss (docs/maths.md, section 4).

From "Adjoined Networks: A Training Paradigm with Applications to Network Compression":
Def. 1 / Eq. 3 weights the KL term by lambda(t); Sec. 4 uses min(4t^2, 1), App. E (Table 9) compares the others.

``t = step / total_steps`` in [0, 1]; ``c`` is the final scale.
"""
from __future__ import annotations

import math

SCHEDULES = {
    "quadratic": lambda t: min(4.0 * t * t, 1.0),
    "linear": lambda t: t,
    "cosine": lambda t: 1.0 - math.cos(t),
    "exp": lambda t: math.exp(t) - 1.0,
    "constant": lambda t: 1.0,
}


def lambda_schedule(t: float, kind: str = "quadratic", c: float = 1.0) -> float:
    """Value of lambda(t) = c * f(t) for the schedule ``kind`` (the paper's Sec. 4 and App. E).

    Args:
        t: training progress in [0, 1] (step / total_steps).
        kind: "quadratic" (c*min(4t^2, 1), default), "linear", "cosine" (c*(1-cos t)), "exp" (c*(e^t-1)),
            or "constant".
        c: scale.

    Raises:
        ValueError: unknown ``kind`` or ``t`` outside [0, 1].
    """
    if kind not in SCHEDULES:
        raise ValueError(f"kind must be one of {sorted(SCHEDULES)}, got {kind!r}")
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"t must be in [0, 1], got {t}")
    return c * SCHEDULES[kind](t)
