"""Checkpoints that survive a kill: atomic writes, the previous one kept, and a checked resume.

``save`` writes ``path.tmp``, moves the current ``path`` to ``checkpoint.prev.pt`` and the new file into
place (each move atomic). ``load`` falls back to the previous checkpoint, with a warning, when the latest is
missing, truncated or unreadable; a readable checkpoint trained with other arguments is refused.
"""
from __future__ import annotations

import os
import random
import sys
import warnings

import torch

# Arguments that must match between a checkpoint and the run that resumes it.
RESUME_KEYS = ("method", "dataset", "arch", "width", "alpha", "stem", "epochs", "batch_size", "lr", "optimizer",
               "weight_decay", "schedule", "milestones", "lam_schedule", "lam_scale", "temperature", "seed",
               "subset", "image_size", "arch_json", "adjoin_start", "search_alphas", "flops_weight", "flops_target",
               "tau0", "tau_decay", "arch_lr", "tau_end", "tau_schedule", "flops_tolerance", "teacher", "kd_alpha",
               "kddp_student", "kddp_fc1", "kddp_l1", "pwh_iters", "hints_weight", "pwh_samples", "sync_bn")


class ResumeError(Exception):
    """A checkpoint is missing or does not fit the current arguments."""


def prev_path(path: str) -> str:
    """Where the checkpoint before ``path`` is kept: ``checkpoint.pt`` -> ``checkpoint.prev.pt``."""
    root, ext = os.path.splitext(path)
    return root + ".prev" + ext


def save(path: str, state: dict) -> None:
    """Write ``state`` to ``path`` atomically, keeping the file it replaces as :func:`prev_path`."""
    tmp = path + ".tmp"
    torch.save(state, tmp)
    if os.path.exists(path):
        os.replace(path, prev_path(path))
    os.replace(tmp, path)


def _read(path: str) -> dict:
    ck = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ck, dict) or "model" not in ck:
        raise ValueError("not a checkpoint of adjoined-train (no 'model' entry)")
    return ck


def load(path: str, args) -> dict:
    """The checkpoint at ``path`` (or, with a warning, the one before it), checked against ``args``.

    Raises ResumeError when neither file can be read or the arguments in ``RESUME_KEYS`` differ.
    """
    try:
        ck = _read(path)
    except Exception as e:  # noqa: BLE001 - missing, truncated or foreign file
        why = "is missing" if not os.path.exists(path) else f"cannot be read ({type(e).__name__}: {e})"
        prev = prev_path(path)
        if not os.path.isfile(prev):
            if not os.path.exists(path):
                raise ResumeError(f"--resume: no checkpoint at {path}; train first with --out "
                                  f"{os.path.dirname(path) or '.'}") from None
            raise ResumeError(f"--resume: checkpoint {path} {why}, and there is no {prev} to fall back to") from None
        try:
            ck = _read(prev)
        except Exception as e2:  # noqa: BLE001
            raise ResumeError(f"--resume: checkpoint {path} {why}, and {prev} cannot be read either "
                              f"({type(e2).__name__}: {e2})") from None
        warnings.warn(f"checkpoint {path} {why}; resuming from the previous one, {prev} (epoch "
                      f"{ck.get('epoch')}, step {ck.get('global_step')})", stacklevel=2)
    old = ck.get("args", {})
    diff = [f"--{k.replace('_', '-')} {old.get(k)!r} (checkpoint) vs {getattr(args, k, None)!r} (now)"
            for k in RESUME_KEYS if k in old and old.get(k) != getattr(args, k, None)]
    if diff:
        raise ResumeError("--resume: the checkpoint was trained with other arguments: " + "; ".join(diff))
    return ck


def rng_state() -> dict:
    """The process's random states (torch, CUDA, Python, NumPy), for an exact resume."""
    st = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    if "numpy" in sys.modules:
        st["numpy"] = sys.modules["numpy"].random.get_state()
    return st


def set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])
    if "numpy" in st:
        import numpy as np
        np.random.set_state(st["numpy"])
