"""Loads the compiled CUDA extension ``adjoined_kernels._C`` once, for the conv and the loss CUDA backends."""
from __future__ import annotations

import functools
import importlib

from .._backend import _cuda_status


@functools.lru_cache(maxsize=None)
def load() -> None:
    """Import ``adjoined_kernels._C`` (its static registrars add the ``adjoined::cuda_*`` ops).

    Raises:
        RuntimeError: the extension is not built, saying how to build it.
    """
    reason = _cuda_status()
    if reason is not None:
        raise RuntimeError(f"backend='cuda' is unavailable: {reason}")
    importlib.import_module("adjoined_kernels._C")
