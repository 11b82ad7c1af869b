"""Data loaders for training (shuffled by seed and epoch) and evaluation (in order, sharded, unpadded)."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Sampler

from ctran.data.base import LabeledImages
from ctran.data.images import collate_samples
from ctran.training.distributed import DistContext, ShardSampler


def cpu_count() -> int:
    """CPUs this process may run on (a container's or ``taskset``'s limit, not the machine's total)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def usable_workers(requested: int) -> int:
    """At most one loading process per CPU, the CPUs shared among torchrun's processes on this machine.

    More workers than CPUs only compete with each other and with the model (and each holds memory).
    """
    processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(0, min(requested, max(1, cpu_count() // processes)))


class StepBatches(Sampler[list[int]]):
    """Each process's share of the global batches: N processes with batch B see one process's batches of N*B.

    Step k's global batch is positions k*N*B .. (k+1)*N*B of a (seed, epoch) permutation of the dataset (the
    permutation ``DistributedSampler`` draws); process r takes every N-th of them from position r. Their union
    is exactly one process's batch at N*B, the last step included: it is short, not padded with repeated
    images, and a process's share of it may be empty. Every process runs the same number of steps.
    """

    def __init__(self, size: int, batch_size: int, seed: int, ctx: DistContext) -> None:
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world_size, self.epoch = ctx.rank, ctx.world_size, 0

    def set_epoch(self, epoch: int) -> None:
        """Draw the order of ``epoch`` (the same on every process, whatever their number)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        step = self.batch_size * self.world_size
        for start in range(0, self.size, step):
            yield order[start : start + step][self.rank :: self.world_size]

    def __len__(self) -> int:
        return math.ceil(self.size / (self.batch_size * self.world_size))


def train_loader(
    dataset: LabeledImages, batch_size: int, seed: int, ctx: DistContext, workers: int
) -> DataLoader:
    """Batches of ``batch_size`` images per process, shuffled by (seed, epoch) (``StepBatches``).

    A batch whose images are all unreadable (or a process's empty share of the last step) arrives as None.
    """
    workers = usable_workers(workers)
    return DataLoader(
        dataset,
        batch_sampler=StepBatches(len(dataset), batch_size, seed, ctx),
        num_workers=workers,
        collate_fn=collate_samples,
        persistent_workers=workers > 0,
        pin_memory=ctx.device.type == "cuda",
    )


def eval_loader(
    dataset: LabeledImages, batch_size: int, ctx: DistContext | None = None, workers: int = 0
) -> DataLoader:
    """In order, sharded across processes without padding."""
    ctx = ctx or DistContext()
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=ShardSampler(len(dataset), ctx),
        num_workers=usable_workers(workers),
        collate_fn=collate_samples,
    )
