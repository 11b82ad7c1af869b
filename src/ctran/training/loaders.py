"""Data loaders for training (shuffled by seed and epoch) and evaluation (in order, sharded, unpadded)."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, DistributedSampler

from ctran.data.base import LabeledImages
from ctran.training.distributed import DistContext, ShardSampler


def collate(batch: list) -> object:
    """Default collation minus the samples a reader dropped (``None``: a bad image skipped by policy)."""
    kept = [sample for sample in batch if sample is not None]
    if not kept:
        return None
    return torch.utils.data.default_collate(kept)


def train_loader(
    dataset: LabeledImages, batch_size: int, seed: int, ctx: DistContext, workers: int
) -> DataLoader:
    """Shuffled by (seed, epoch) through ``DistributedSampler`` (also in one process: the same order)."""
    sampler = DistributedSampler(dataset, ctx.world_size, ctx.rank, shuffle=True, seed=seed, drop_last=False)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
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
        num_workers=workers,
        collate_fn=collate,
    )
