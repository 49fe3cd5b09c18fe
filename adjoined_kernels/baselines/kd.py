"""Knowledge distillation (Hinton et al., "Distilling the Knowledge in a Neural Network"; Eq. 4 of
"Improved Knowledge Distillation with Dynamic Network Pruning") and the student/teacher wrapper that
``kd``, ``kddp`` and ``pwh`` train. See docs/baselines.md.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops.loss import adjoined_loss

IGNORE = -100


def kd_loss(logits_student, logits_teacher, target, a: float, temperature: float, backend: str = "auto"):
    """``(1 - a) * CE(y, q_s) + a * T^2 * KL(p_t^T || q_s^T)``, averaged over the batch (0-dim tensor).

    ``logits_student``, ``logits_teacher``: ``[B, C]`` float32, float16 or bfloat16 tensors of one dtype (those
    of the fused loss); ``target``: ``[B]`` int64 class indices. The result is float32. ``p_t^T = softmax(z_t / T)``,
    ``q_s^T = softmax(z_s / T)``; no gradient reaches ``logits_teacher``.

    The KL term is the fused :func:`adjoined_kernels.adjoined_loss` with the teacher logits as
    ``logits_full``, ``detach_full=True``, ``lam=a``, ``eps=0`` (the exact KL, from log-softmax) and every
    target set to ``ignore_index``, so that it adds no cross-entropy of the teacher; the student's
    cross-entropy ``(1 - a) CE`` is added here.

    Raises:
        ValueError/TypeError: from :func:`adjoined_kernels.adjoined_loss` (shapes, dtypes such as float64,
            T <= 0).
    """
    ignored = torch.full_like(target, IGNORE)
    kl = adjoined_loss(logits_teacher, logits_student, ignored, a, eps=0.0, temperature=temperature,
                       ignore_index=IGNORE, detach_full=True, backend=backend)
    ce = F.cross_entropy(logits_student.float(), target)
    return (1.0 - a) * ce + kl.float()


class Distilled(nn.Module):
    """A trainable ``student`` with a frozen ``teacher`` beside it.

    Only the student is a submodule: ``parameters()``, ``state_dict()``, ``train()`` and ``to()`` see the
    student alone, and the teacher stays frozen in eval mode. ``forward(x)`` is the student's forward
    (``[N, C, H, W] -> [N, classes]``), so evaluation and export see the student.

    ``l1``: weight of KDDP's L1 penalty on the activations of ``student``'s ``fc1`` (0: none).
    ``hints``: PWH's ``(student hint conv, teacher hint conv, teacher channel indices)``, and ``hints_weight``
    the weight of the L2 hints loss; None for KD and KDDP. ``report``: extra summary.json fields.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, l1: float = 0.0, hints=None,
                 hints_weight: float = 0.0):
        super().__init__()
        self.student = student
        object.__setattr__(self, "teacher", teacher.eval().requires_grad_(False))
        self.l1, self.hints, self.hints_weight = float(l1), hints, float(hints_weight)
        self.report: dict = {}

    def forward(self, x):
        return self.student(x)


@contextlib.contextmanager
def capture(module: nn.Module, what: str = "output"):
    """Record ``module``'s forward ``output`` (or first ``input``) into the yielded list while active."""
    got: list = []

    def hook(mod, inputs, output):
        got.append(output if what == "output" else inputs[0])

    handle = module.register_forward_hook(hook)
    try:
        yield got
    finally:
        handle.remove()


def distill_loss(net: Distilled, x, y, args):
    """(loss, None, student logits) of ``kd``, ``kddp`` (plus L1 on fc1) or ``pwh`` (task CE plus L2 hints)."""
    teacher = net.teacher
    if net.hints is not None:
        s_conv, t_conv, t_idx = net.hints
        with torch.no_grad(), capture(t_conv) as ft:
            teacher(x)
        with capture(s_conv) as fs:
            ls = net(x)
        hint = F.mse_loss(fs[0].float(), ft[0][:, t_idx].float())
        return F.cross_entropy(ls.float(), y) + net.hints_weight * hint, None, ls
    with torch.no_grad():
        lt = teacher(x)
    if net.l1 > 0:
        with capture(net.student.fc.fc1) as act:
            ls = net(x)
        penalty = F.relu(act[0]).float().abs().sum(1).mean()
        return kd_loss(ls, lt, y, args.kd_alpha, args.temperature, args.backend) + net.l1 * penalty, None, ls
    ls = net(x)
    return kd_loss(ls, lt, y, args.kd_alpha, args.temperature, args.backend), None, ls
