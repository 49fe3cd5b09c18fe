"""Data-parallel training under ``torchrun``: process group, DDP wrapping, SyncBatchNorm, reductions.

``torchrun --nproc-per-node K -m adjoined_kernels.train ARGS`` starts K processes; each reads ``RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE`` from the environment, joins a process group (NCCL on GPUs, gloo on the
CPU) and trains a ``DistributedDataParallel`` replica on its slice of every global batch
(:class:`adjoined_kernels.train.loader.EpochBatches`). Rank 0 alone logs, draws progress bars, writes
metrics, checkpoints and exports. Multi-node runs use torchrun's rendezvous (``--nnodes``,
``--rdzv-backend c10d``, ``--rdzv-endpoint HOST:PORT``); nothing here depends on the number of nodes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn


@dataclass(frozen=True)
class World:
    """This process's place: ``rank`` of ``size`` processes, ``local_rank`` on its node."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def launched() -> bool:
    """True in a process started by torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device_name: str) -> tuple[World, torch.device]:
    """Join the process group torchrun set up; returns ``(world, device)``.

    ``device_name`` is ``--device``: with ``auto`` or ``cuda`` each process takes GPU ``LOCAL_RANK`` (NCCL);
    with ``cpu`` the processes use gloo.
    """
    world = World(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    cuda = device_name != "cpu" and torch.cuda.is_available()
    if cuda:
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None)
    return world, device


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor, world: World) -> torch.Tensor:
    """``t`` summed over the processes, in place (a no-op in a single process)."""
    if world.distributed:
        dist.all_reduce(t)
    return t


class _SumOverProcesses(torch.autograd.Function):
    """``all_reduce(SUM)`` with its adjoint: the gradient of a sum over processes is the sum of the
    processes' gradients (what SyncBatchNorm's backward all-reduces)."""

    @staticmethod
    def forward(ctx, t):
        t = t.clone()
        dist.all_reduce(t)
        return t

    @staticmethod
    def backward(ctx, g):
        g = g.clone()
        dist.all_reduce(g)
        return g


class CPUSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d with batch statistics over every process, for CPU tensors and gloo.

    ``torch.nn.SyncBatchNorm`` runs on GPUs only. This one all-reduces the per-channel count, sum and sum
    of squares, and in the backward the gradients of those statistics, as SyncBatchNorm does.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        c = x.shape[1]
        xf = x.float()
        count = torch.full((1,), x.numel() // c, dtype=torch.float32, device=x.device)
        stats = _SumOverProcesses.apply(torch.cat([count, xf.sum((0, 2, 3)), (xf * xf).sum((0, 2, 3))]))
        n, mean = stats[0], stats[1:1 + c] / stats[0]
        var = (stats[1 + c:] / n - mean * mean).clamp_min(0)
        with torch.no_grad():
            if self.track_running_stats:
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), m)
                unbiased = var.detach() * (n / (n - 1)).clamp_min(0)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), m)
        y = (xf - mean.view(1, c, 1, 1)) * torch.rsqrt(var.view(1, c, 1, 1) + self.eps)
        if self.affine:
            y = y * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
        return y.to(x.dtype)


def convert_sync_bn(model: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm2d of ``model`` (both branches' of every adjoined norm) made synchronous:
    ``torch.nn.SyncBatchNorm`` on CUDA, :class:`CPUSyncBatchNorm` on the CPU. Parameters and buffers are
    kept (the same state-dict keys)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            new = CPUSyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                   child.track_running_stats, device=device, dtype=child.weight.dtype
                                   if child.affine else None)
            new.load_state_dict(child.state_dict())
            new.train(child.training)
            setattr(model, name, new)
        else:
            convert_sync_bn(child, device)
    return model


def prepare(model: nn.Module, world: World, device: torch.device, sync_bn: bool) -> tuple[nn.Module, nn.Module]:
    """``(model, replica)``: ``model`` with synchronous batch-norms when ``sync_bn``, and what the training
    step calls: its ``DistributedDataParallel`` wrapper under torchrun, else ``model`` itself. Checkpoints,
    evaluation and exports use ``model``."""
    if sync_bn:
        model = convert_sync_bn(model, device)
    if not world.distributed:
        return model, model
    from torch.nn.parallel import DistributedDataParallel
    return model, DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
