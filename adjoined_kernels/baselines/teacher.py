"""The frozen teacher of ``kd``, ``kddp`` and ``pwh``: a checkpoint of ``adjoined-train --method standard``.

See docs/baselines.md. The teacher is the plain full ResNet (``export_full`` of an adjoined ResNet) that the
``standard`` run trained; it must have the architecture of the run that distils from it.
"""
from __future__ import annotations

import argparse
import os

import torch

from .. import models as ak_models
from ..export import export_full
from ..train.validate import ADJOIN_PREFIXES

# Arguments that define the teacher's network and must equal the student run's.
MATCH_KEYS = ("arch", "width", "stem")


class TeacherError(ValueError):
    """``--teacher`` is missing, unreadable, not a ``standard`` checkpoint, or does not fit the run."""


def read_teacher_checkpoint(path: str | None) -> dict:
    """The checkpoint dict at ``path``; TeacherError when it is missing, unreadable or not a standard run."""
    if not path:
        raise TeacherError("--teacher CKPT is required: the checkpoint.pt of an `adjoined-train --method standard` "
                           "run of the same architecture")
    if not os.path.isfile(path):
        raise TeacherError(f"--teacher {path}: no such file; train a teacher first with "
                           "`adjoined-train --method standard --out DIR` and pass DIR/checkpoint.pt")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file
        raise TeacherError(f"--teacher {path}: cannot read it as a checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ck, dict) or "model" not in ck or not isinstance(ck.get("args"), dict):
        raise TeacherError(f"--teacher {path}: not a checkpoint of adjoined-train (no 'model' and 'args')")
    method = ck["args"].get("method")
    if method != "standard":
        raise TeacherError(f"--teacher {path}: a checkpoint of --method {method}; the teacher must be a "
                           "--method standard run")
    return ck


def check_teacher_args(ck: dict, args, ds, path: str) -> None:
    """TeacherError naming both values when the teacher's arch/width/stem, input channels or number of
    classes differ from this run's (``args``, dataset ``ds``)."""
    targs = ck["args"]
    for k in MATCH_KEYS:
        if targs.get(k) != getattr(args, k):
            raise TeacherError(f"--teacher {path}: the teacher has --{k} {targs.get(k)!r} but this run has "
                               f"--{k} {getattr(args, k)!r}")
    if str(targs.get("arch", "")).startswith(ADJOIN_PREFIXES):
        raise TeacherError(f"--teacher {path}: kd, kddp and pwh distil the built-in ResNets only, not {targs['arch']}")
    state = ck["model"]
    got = {"input channels": state["stem.0.weight"].shape[1], "classes": state["fc.weight"].shape[0]}
    want = {"input channels": ds.in_channels, "classes": ds.num_classes}
    for k in got:
        if got[k] != want[k]:
            raise TeacherError(f"--teacher {path}: the teacher has {got[k]} {k} but the dataset {ds.name} has "
                               f"{want[k]}")


def build_full(args, ds) -> torch.nn.Module:
    """A freshly initialised plain full network of ``args`` (unseeded): the teacher's architecture."""
    ctor = getattr(ak_models, f"adjoined_{args.arch}")
    model = ctor(num_classes=ds.num_classes, alpha=1, in_channels=ds.in_channels, stem=args.stem,
                 width=args.width, backend="reference")
    return export_full(model)


def load_teacher(args, ds, device=None) -> torch.nn.Module:
    """The frozen teacher of ``args.teacher`` for dataset ``ds``: a
    :class:`~adjoined_kernels.models.PlainResNet` in eval mode, fp32, ``requires_grad=False``, on ``device``.
    Its forward maps ``[N, in_channels, H, W]`` to logits ``[N, classes]``.

    Raises:
        TeacherError: a missing or unreadable file, a checkpoint of another method, or a teacher whose
            arch/width/stem, input channels or number of classes differ from this run's (naming both values).
    """
    ck = read_teacher_checkpoint(args.teacher)
    check_teacher_args(ck, args, ds, args.teacher)
    net = build_full(argparse.Namespace(**{**vars(args), **{k: ck["args"][k] for k in MATCH_KEYS}}), ds)
    try:
        net.load_state_dict(ck["model"])
    except RuntimeError as e:
        raise TeacherError(f"--teacher {args.teacher}: its weights do not fit the network ({e})") from None
    net.eval().requires_grad_(False)
    return net.to(device) if device is not None else net


def freeze(net: torch.nn.Module) -> torch.nn.Module:
    """``net`` in eval mode with every parameter frozen (in place)."""
    return net.eval().requires_grad_(False)
