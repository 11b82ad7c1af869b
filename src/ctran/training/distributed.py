"""Distributed data parallel plumbing for ``torchrun`` (NCCL on GPUs, gloo on CPU), a no-op in one process.

torchrun sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; ``init_distributed`` reads them. Evaluation shards
the dataset without padding (``ShardSampler``) and gathers every prediction with its image index to rank 0
only (``gather_to_main``: the others would hold the whole evaluation for nothing), so uneven shards neither
drop nor duplicate images; what the other ranks need of it (a validation mAP) is broadcast back.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from ctran.devices import resolve_device


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: rank, world size and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """Only the main process writes files and prints."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistContext:
    """Join the process group torchrun set up (if any) and pick this rank's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    resolved = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if resolved.type == "cuda":
            torch.cuda.set_device(resolved)
        dist.init_process_group(backend="nccl" if resolved.type == "cuda" else "gloo")
    return DistContext(rank, world_size, local_rank, resolved)


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


@contextlib.contextmanager
def main_first(ctx: DistContext) -> Iterator[None]:
    """Rank 0 runs the block, then the other ranks do: what it built once (the Open Images label table's
    cache) they load instead of each building it again at the same time."""
    if not ctx.is_main:
        barrier(ctx)
    yield
    if ctx.is_main:
        barrier(ctx)


def all_reduce_sum(value: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum a tensor over ranks (returns it unchanged in one process)."""
    if ctx.enabled:
        value = value.clone()
        dist.all_reduce(value)
    return value


def gather_objects(obj: object, ctx: DistContext) -> list:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not ctx.enabled:
        return [obj]
    gathered: list = [None] * ctx.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def gather_to_main(obj: object, ctx: DistContext) -> list | None:
    """Every rank's ``obj``, in rank order, on rank 0; None on the other ranks."""
    if not ctx.enabled:
        return [obj]
    gathered: list | None = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered


def broadcast_from_main(obj: object, ctx: DistContext) -> object:
    """Rank 0's ``obj`` on every rank (what the others pass is ignored)."""
    if not ctx.enabled:
        return obj
    box = [obj if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class ShardSampler(Sampler[int]):
    """Rank r takes indices r, r + W, r + 2W, ...: every image exactly once over all ranks, no padding."""

    def __init__(self, length: int, ctx: DistContext) -> None:
        self.length, self.rank, self.world_size = length, ctx.rank, ctx.world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.length, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.world_size))
