"""Data loaders for training (shuffled by seed and epoch) and evaluation (in order, sharded, unpadded)."""

from __future__ import annotations

import os

from torch.utils.data import DataLoader, DistributedSampler

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


def train_loader(
    dataset: LabeledImages, batch_size: int, seed: int, ctx: DistContext, workers: int
) -> DataLoader:
    """Shuffled by (seed, epoch) through ``DistributedSampler`` (also in one process: the same order)."""
    sampler = DistributedSampler(dataset, ctx.world_size, ctx.rank, shuffle=True, seed=seed, drop_last=False)
    workers = usable_workers(workers)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
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
