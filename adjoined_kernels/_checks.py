"""Input validation shared by the public ops: clear errors naming the argument."""
from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_tensor(name: str, t, ndim: int | None = None, floating: bool = True) -> None:
    """Raise TypeError/ValueError unless ``t`` is a tensor of rank ``ndim`` with a supported dtype."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if floating and t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {t.dtype}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dims, got shape {tuple(t.shape)}")


def check_same(names_tensors: dict, dtype: bool = True) -> None:
    """Raise ValueError if the given tensors disagree in device (and dtype when ``dtype``)."""
    items = [(n, t) for n, t in names_tensors.items() if t is not None]
    n0, t0 = items[0]
    for n, t in items[1:]:
        if t.device != t0.device:
            raise ValueError(f"{n} is on {t.device} but {n0} is on {t0.device}; put them on one device")
        if dtype and t.dtype != t0.dtype:
            raise ValueError(f"{n} has dtype {t.dtype} but {n0} has {t0.dtype}; cast them to one dtype")


def pair(name: str, v) -> tuple[int, int]:
    """Normalise an int or 2-sequence conv argument to a tuple of two ints >= 0."""
    if isinstance(v, int):
        v = (v, v)
    v = tuple(int(a) for a in v)
    if len(v) != 2 or min(v) < 0:
        raise ValueError(f"{name} must be an int or a pair of non-negative ints, got {v}")
    return v


def divide(name: str, width: int, alpha: int) -> int:
    """width // alpha, raising ValueError when alpha does not divide width."""
    if alpha < 1 or width % alpha:
        raise ValueError(f"{name}={width} is not divisible by alpha={alpha}; "
                         "pick an alpha that divides every adjoined width, or give the small widths explicitly")
    return width // alpha
