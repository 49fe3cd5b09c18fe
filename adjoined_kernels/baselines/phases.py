"""Methods trained in several phases (``kddp``, ``pwh``): each phase is one run of the training loop with its
own checkpoint, so ``--resume`` continues inside the phase that was interrupted and skips finished ones.

Earlier phases write OUT/phase<i>-<name>/ (metrics.jsonl, checkpoint.pt); the last phase writes OUT itself,
and OUT/metrics.jsonl then holds every phase's epochs, numbered on, with a ``phase`` field.
"""
from __future__ import annotations

import copy
import json
import os

import torch


def split_epochs(epochs: int, phases: int, method: str) -> list[int]:
    """``epochs`` shared by ``phases`` phases, as evenly as possible, the remainder going to the last ones.

    Raises:
        ValueError: fewer epochs than phases.
    """
    if epochs < phases:
        raise ValueError(f"--method {method} trains in {phases} phases: --epochs must be >= {phases}, got {epochs}")
    base, rest = divmod(epochs, phases)
    return [base + (1 if i >= phases - rest else 0) for i in range(phases)]


def phase_dir(args, index: int, name: str | None) -> str:
    return args.out if name is None else os.path.join(args.out, f"phase{index}-{name}")


class Phases:
    """Runs the phases of one method in order, tracking the ``--stop-after`` budget and the merged history."""

    def __init__(self, args, ds, device, log):
        self.args, self.ds, self.device, self.log = args, ds, device, log
        self.history: list[dict] = []
        self.budget = args.stop_after

    def resuming(self, index: int, name: str | None) -> bool:
        """Whether the phase has a checkpoint to continue from (only under ``--resume``)."""
        return bool(self.args.resume) and os.path.isfile(os.path.join(phase_dir(self.args, index, name),
                                                                      "checkpoint.pt"))

    def done_epochs(self, index: int, name: str | None) -> int:
        """Epochs of the phase that its checkpoint holds (0 without ``--resume`` or a checkpoint)."""
        if not self.resuming(index, name):
            return 0
        ck = os.path.join(phase_dir(self.args, index, name), "checkpoint.pt")
        return torch.load(ck, map_location="cpu", weights_only=False)["epoch"]

    def stopped(self, index: int, name: str | None, epochs: int) -> bool:
        """Whether ``--stop-after`` is used up before this unfinished phase (then nothing of it is prepared)."""
        return self.budget is not None and self.budget <= 0 and self.done_epochs(index, name) < epochs

    def run(self, net, index: int, name: str | None, epochs: int):
        """Train ``net`` for phase ``index`` (``name`` None: the last phase, in OUT). Returns
        ``(net, finished)``; ``finished`` is False when ``--stop-after`` ended the run."""
        from ..train.loop import train
        if self.stopped(index, name, epochs):
            return net, False
        sub = copy.copy(self.args)
        sub.epochs, sub.out = epochs, phase_dir(self.args, index, name)
        os.makedirs(sub.out, exist_ok=True)
        sub.resume = "auto" if self.resuming(index, name) else None
        done = self.done_epochs(index, name)
        sub.stop_after = self.budget
        self.log(f"{self.args.method} phase {index} ({name or 'final'}): {epochs} epoch(s) in {sub.out}")
        net, hist, finished = train(sub, self.ds, self.device, self.log, net=net)
        if self.budget is not None:
            self.budget -= len(hist) - done
        n = len(self.history)
        self.history += [{**r, "epoch": n + i + 1, "phase": index} for i, r in enumerate(hist)]
        return net, finished

    def write_metrics(self) -> None:
        """OUT/metrics.jsonl: every phase's epochs."""
        with open(os.path.join(self.args.out, "metrics.jsonl"), "w") as f:
            for rec in self.history:
                f.write(json.dumps(rec) + "\n")


def read_json(path: str):
    with open(path) as f:
        return json.load(f)


def write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)
