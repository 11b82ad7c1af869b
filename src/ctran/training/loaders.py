"""Data loaders for training (shuffled by seed and epoch) and evaluation (in order, sharded, unpadded)."""

from __future__ import annotations

from torch.utils.data import DataLoader, DistributedSampler

from ctran.data.base import LabeledImages
from ctran.data.images import collate_samples
from ctran.training.distributed import DistContext, ShardSampler


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
        num_workers=workers,
        collate_fn=collate_samples,
    )
