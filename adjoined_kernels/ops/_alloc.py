"""Output allocation for kernel launchers.

With ADJOINED_POISON_OUTPUTS=1 (set by the test suite) every buffer is filled with NaN before a kernel
writes it, so an element the kernel skips fails the comparison instead of passing by luck.
"""
from __future__ import annotations

import os

import torch


# Read once at import (as the test suite and the sanitizer script set it): on every launch it cost a few µs.
_POISON = os.environ.get("ADJOINED_POISON_OUTPUTS", "0") == "1"


def poisoning() -> bool:
    return _POISON


def empty(shape, *, dtype, device, memory_format=torch.contiguous_format) -> torch.Tensor:
    """torch.empty, NaN-poisoned when ADJOINED_POISON_OUTPUTS=1."""
    t = torch.empty(shape, dtype=dtype, device=device, memory_format=memory_format)
    if poisoning():
        t.fill_(float("nan"))
    return t
