"""KDDP: knowledge distillation with dynamic pruning of the student's ``fc1`` ("Improved Knowledge
Distillation with Dynamic Network Pruning", Sec. 3.1 and Table 1). See docs/baselines.md.

Phase 1 trains the student with the KD loss plus ``--kddp-l1`` times the L1 norm of its ``fc1`` activations
(after the ReLU, summed over neurons, averaged over the batch). Then every ``fc1`` neuron whose mean
activation over the training set is below 1e-6 is removed, with its column of ``fc2``. Phase 2 retrains the
pruned student with the KD loss alone. ``--epochs`` is shared by the two phases.
"""
from __future__ import annotations

import copy
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..export import export_small
from ..train.data import normalize
from .kd import Distilled, capture
from .phases import Phases, read_json, split_epochs, write_json
from .teacher import load_teacher

DEAD = 1e-6  # the paper's threshold on a neuron's mean activation


class FC1Head(nn.Module):
    """``fc2(relu(fc1(x)))``: ``[N, features] -> [N, classes]``, the head whose ``fc1`` KDDP prunes."""

    def __init__(self, features: int, neurons: int, classes: int):
        super().__init__()
        self.fc1 = nn.Linear(features, neurons)
        self.fc2 = nn.Linear(neurons, classes)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))


class IdentityBlock(nn.Module):
    """The paper's ResNet identity block: 1x1, 3x3, 1x1 convs of ``width`` filters, each with BN; ReLU after
    the first two, and after the skip addition."""

    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(width, width, 1), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                                  nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width),
                                  nn.ReLU(inplace=True), nn.Conv2d(width, width, 1), nn.BatchNorm2d(width))

    def forward(self, x):
        return F.relu(self.body(x) + x)


class PaperStudent(nn.Module):
    """The KDDP paper's student (Table 1): 7x7 conv of 64 filters (stride 1), BN, ReLU, 3x3 stride-2 max-pool,
    one identity block of 64, average pool to 3x3, ``fc1`` of ``neurons`` with ReLU, ``fc2`` to the classes.

    Input ``[N, in_channels, H, W]`` (H, W >= 5), output ``[N, classes]``. Xavier-uniform weights and zero
    biases, as the paper's Keras models. On 32x32x3 inputs with 10 classes it has the parameters of Table 1
    when, like Keras, the 4 values per BN channel count (85k, 114k, 349k for 50, 100, 500 neurons).
    """

    def __init__(self, in_channels: int, classes: int, neurons: int, width: int = 64):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 7, padding=3), nn.BatchNorm2d(width),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, 2))
        self.block = IdentityBlock(width)
        self.pool = nn.AdaptiveAvgPool2d(3)
        self.fc = FC1Head(width * 9, neurons, classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.block(self.stem(x))), 1))


def build_student(args, ds, adjoined=None) -> nn.Module:
    """The KDDP student: ``--kddp-student paper`` (:class:`PaperStudent`) or ``resnet``, the AN small network
    (``export_small`` of ``adjoined``, a freshly built adjoined ResNet) with its classifier replaced by an
    :class:`FC1Head` of ``--kddp-fc1`` neurons."""
    if args.kddp_student == "paper":
        return PaperStudent(ds.in_channels, ds.num_classes, args.kddp_fc1)
    net = export_small(adjoined)
    net.fc = FC1Head(net.fc.in_features, args.kddp_fc1, ds.num_classes)
    return net


@torch.no_grad()
def mean_fc1_activations(student: nn.Module, ds, device, batch_size: int = 500) -> torch.Tensor:
    """Mean over the training images of each ``fc1`` neuron's activation after the ReLU (eval mode):
    float64 ``[fc1.out_features]``."""
    was = student.training
    student.eval()
    fc1 = student.fc.fc1
    total = torch.zeros(fc1.out_features, dtype=torch.float64, device=device)
    n = ds.size("train")
    for i in range(0, n, batch_size):
        x = normalize(ds.take(torch.arange(i, min(i + batch_size, n)))[0].to(device), ds.mean, ds.std)
        with capture(fc1) as act:
            student(x)
        total += F.relu(act[0]).double().sum(0)
    student.train(was)
    return total / n


def alive_neurons(mean_act: torch.Tensor, threshold: float = DEAD) -> torch.Tensor:
    """Indices (int64, ascending) of the neurons with mean activation >= ``threshold``; the single most active
    one when none is, so that the network keeps a path to its output."""
    keep = torch.nonzero(mean_act >= threshold).flatten()
    return keep if keep.numel() else mean_act.argmax().reshape(1)


def prune_fc1(student: nn.Module, keep: torch.Tensor) -> nn.Module:
    """A copy of ``student`` whose ``fc1`` has only the neurons ``keep`` (rows of its weight and bias) and whose
    ``fc2`` has only their columns. Dead neurons (activation 0 on every input) leave the outputs unchanged."""
    net = copy.deepcopy(student)
    fc1, fc2 = net.fc.fc1, net.fc.fc2
    keep = keep.to(fc1.weight.device)
    new1 = nn.Linear(fc1.in_features, keep.numel()).to(fc1.weight)
    new2 = nn.Linear(keep.numel(), fc2.out_features).to(fc2.weight)
    with torch.no_grad():
        new1.weight.copy_(fc1.weight[keep])
        new1.bias.copy_(fc1.bias[keep])
        new2.weight.copy_(fc2.weight[:, keep])
        new2.bias.copy_(fc2.bias)
    net.fc.fc1, net.fc.fc2 = new1, new2
    return net


def count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def run_kddp(args, ds, device, log=print):
    """Train ``--method kddp``; returns ``(Distilled net, history, finished)`` like the training loop."""
    from ..train.loop import build_adjoined
    e1, e2 = split_epochs(args.epochs, 2, "kddp")
    teacher = load_teacher(args, ds, device)
    torch.manual_seed(args.seed)
    student = build_student(args, ds, build_adjoined(args, ds) if args.kddp_student == "resnet" else None)
    phases = Phases(args, ds, device, log)
    net, finished = phases.run(Distilled(student, teacher, l1=args.kddp_l1), 1, "l1", e1)
    if not finished or phases.stopped(2, None, e2):
        phases.write_metrics()
        return net, phases.history, False
    info = os.path.join(args.out, "kddp_pruning.json")
    if phases.resuming(2, None) and os.path.isfile(info):
        keep = torch.tensor(read_json(info)["kept"], dtype=torch.int64)
    else:
        mean = mean_fc1_activations(net.student, ds, device, args.eval_batch_size)
        keep = alive_neurons(mean)
        write_json(info, {"kept": keep.tolist(), "mean_activation": mean.tolist(), "threshold": DEAD})
    pruned = prune_fc1(net.student, keep)
    report = {"kddp_student": args.kddp_student, "kddp_fc1_neurons": args.kddp_fc1,
              "kddp_fc1_kept": int(keep.numel()), "params_before_pruning": count(net.student),
              "params_after_pruning": count(pruned)}
    log(f"kddp: kept {keep.numel()} of {args.kddp_fc1} fc1 neurons; params {report['params_before_pruning']:,} -> "
        f"{report['params_after_pruning']:,}")
    torch.manual_seed(args.seed + 1)
    net = Distilled(pruned, teacher)
    net, finished = phases.run(net, 2, None, e2)
    net.report = report
    phases.write_metrics()
    return net, phases.history, finished
