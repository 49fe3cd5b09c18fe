"""Output allocation for kernel launchers.

With ADJOINED_POISON_OUTPUTS=1 (set by the test suite) every buffer is filled with NaN before a kernel
writes it, so an element the kernel skips fails the comparison instead of passing by luck.
"""
from __future__ import annotations

import os

import torch


def poisoning() -> bool:
    return os.environ.get("ADJOINED_POISON_OUTPUTS", "0") == "1"


def empty(shape, *, dtype, device, memory_format=torch.contiguous_format) -> torch.Tensor:
    """torch.empty, NaN-poisoned when ADJOINED_POISON_OUTPUTS=1."""
    t = torch.empty(shape, dtype=dtype, device=device, memory_format=memory_format)
    if poisoning():
        t.fill_(float("nan"))
    return t
