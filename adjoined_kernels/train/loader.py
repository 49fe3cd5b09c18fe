"""Training and evaluation batches through ``torch.utils.data.DataLoader``, seeded so that resume is exact.

The order and the augmentation of every sample come from ``(seed, epoch)`` alone: an epoch draws one
permutation and one 62-bit seed per position (:func:`adjoined_kernels.train.data.epoch_generator`). The
sampler cuts the permutation into global batches of ``--batch-size`` and gives rank ``r`` of ``K`` the
``r``-th of ``K`` equal slices of each (``DistributedSampler``'s contract: disjoint shards of one seeded
order, equal counts, the last partial batch dropped). The batch at step ``s`` is therefore the same set of
images, augmented the same way, whatever the number of ranks or loader workers, and a run that stops at
step ``s`` resumes at step ``s + 1`` (``set_epoch(epoch, start_step)``).

Each split is a map-style dataset with a batched ``__getitems__`` that takes ``[(index, seed), ...]`` and
returns ``(uint8 [B, C, H, W], int64 [B])``; normalisation happens on the training device.
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Sampler

from .data import epoch_generator, steps_per_epoch


class EpochBatches(Sampler):
    """Batches of ``(index, seed)`` for one rank, one epoch at a time (call :meth:`set_epoch` first).

    Args:
        n: images in the split. batch_size: the global batch (all ranks together); ``world`` must divide it.
        seed: the run's seed. rank, world: this process and the number of processes.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        if batch_size % world:
            raise ValueError(f"batch_size {batch_size} must be a multiple of the world size {world}")
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.epoch = self.start_step = 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """The next iteration yields epoch ``epoch`` from its step ``start_step`` (mid-epoch resume)."""
        self.epoch, self.start_step = epoch, start_step

    def steps(self) -> int:
        return steps_per_epoch(self.n, self.batch_size)

    def __len__(self) -> int:
        return self.steps() - self.start_step

    def __iter__(self):
        g = epoch_generator(self.seed, self.epoch)
        perm = torch.randperm(self.n, generator=g)
        seeds = torch.randint(0, 2 ** 62, (self.n,), generator=g)
        for s in range(self.start_step, self.steps()):
            lo, hi = s * self.batch_size, min((s + 1) * self.batch_size, self.n)
            per = (hi - lo) // self.world
            a = lo + self.rank * per
            yield list(zip(perm[a:a + per].tolist(), seeds[a:a + per].tolist()))


class ShardBatches(Sampler):
    """Evaluation batches ``[(index, 0), ...]`` in file order; rank ``r`` of ``K`` reads the ``r``-th
    contiguous shard (the shards cover the split exactly once)."""

    def __init__(self, n: int, batch_size: int, rank: int = 0, world: int = 1):
        lo, hi = n * rank // world, n * (rank + 1) // world
        self.batches = [list(range(i, min(i + batch_size, hi))) for i in range(lo, hi, batch_size)]

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for b in self.batches:
            yield [(i, 0) for i in b]


def _as_is(batch):
    """collate_fn: ``__getitems__`` already returns the stacked batch."""
    return batch


def make_loader(split, sampler: Sampler, workers: int, pin_memory: bool) -> DataLoader:
    """A DataLoader over ``split`` (a dataset with ``__getitems__``) driven by ``sampler``'s batches.

    ``workers > 0`` decodes and augments in that many processes (persistent across epochs, two batches
    prefetched each); ``pin_memory`` for asynchronous host-to-GPU copies.
    """
    kw = {"persistent_workers": True, "prefetch_factor": 2} if workers > 0 else {}
    return DataLoader(split, batch_sampler=sampler, num_workers=workers, collate_fn=_as_is,
                      pin_memory=pin_memory, **kw)
