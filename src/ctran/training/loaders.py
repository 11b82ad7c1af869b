"""Data loaders for training (shuffled by seed and epoch) and evaluation (in order, sharded, unpadded)."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

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
    """Batches of ``batch_size`` images per process, shuffled by (seed, epoch) (``StepBatches``), each
    image's random augmentation drawn from (seed, epoch, index): a resumed run sees the same crops.

    A batch whose images are all unreadable (or a process's empty share of the last step) arrives as None.
    """
    workers = usable_workers(workers)
    return DataLoader(
        SeededAugmentation(dataset, seed),
        batch_sampler=EpochKeys(StepBatches(len(dataset), batch_size, seed, ctx)),
        num_workers=workers,
        collate_fn=collate_samples,
        persistent_workers=workers > 0,
        pin_memory=ctx.device.type == "cuda",
        generator=_worker_seeds(seed, workers),
    )


def _worker_seeds(seed: int, workers: int) -> torch.Generator | None:
    """Where the loader draws its per-iterator seed: persistent workers draw it once, at the first epoch a
    process runs, so from the global RNG it would shift every later draw (dropout) of a resumed run; in the
    main process (no workers) it is drawn every epoch from the restored global RNG, as it always was."""
    return torch.Generator().manual_seed(seed) if workers > 0 else None


class EpochKeys(Sampler):
    """A sampler (of indices, or of batches of indices) whose every index comes as ``(epoch, index)``.

    The key reaches ``SeededAugmentation`` in persistent workers, which a ``set_epoch`` on the main process's
    copy of the dataset would not. ``set_epoch`` and the length are the wrapped sampler's.
    """

    def __init__(self, sampler: Sampler) -> None:
        self.sampler = sampler

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator:
        epoch = self.sampler.epoch
        for item in self.sampler:
            yield [(epoch, index) for index in item] if isinstance(item, list) else (epoch, item)


class SeededAugmentation(Dataset):
    """``dataset[index]`` with the global torch RNG (what torchvision's random transforms draw from) seeded
    by (seed, epoch, index) alone, and restored after.

    Without it a worker's RNG runs on from its start, so a resumed run (whose workers start afresh) drew
    other crops than a run that never stopped, and the crops also changed with the number of workers.
    """

    def __init__(self, dataset: LabeledImages, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        entropy = np.random.SeedSequence([self.seed, epoch, index], spawn_key=(1,))  # not the label masks'
        with torch.random.fork_rng(devices=[]):  # the CPU generator only: CUDA's (dropout) is left alone
            torch.default_generator.manual_seed(int(entropy.generate_state(1, np.uint64)[0]))
            return self.dataset[index]


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
