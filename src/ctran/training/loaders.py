"""Data loaders for training (shuffled by seed and epoch) and evaluation (in order, sharded, unpadded).

Map-style datasets (image folders, the digit scenes) are read by position through samplers; a packed split
(``data.format: shards``) is streamed by ``ShardStream``, its tar shards split over processes and workers.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import random
from collections.abc import Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, get_worker_info

from ctran.data.base import LabeledImages, Sample
from ctran.data.images import collate_samples
from ctran.data.shards import Shard, read_records
from ctran.errors import CTranError
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
    A packed split is streamed instead (``ShardStream``).
    """
    if getattr(dataset, "shards", None) is not None:
        return shard_loader(dataset, batch_size, seed, ctx, workers, train=True)
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
        with augmentation_seed(self.seed, epoch, index):
            return self.dataset[index]


@contextlib.contextmanager
def augmentation_seed(seed: int, epoch: int, index: int) -> Iterator[None]:
    """The global torch CPU generator seeded by (seed, epoch, image index) alone, restored on exit."""
    entropy = np.random.SeedSequence([seed, epoch, index], spawn_key=(1,))  # not the label masks'
    with torch.random.fork_rng(devices=[]):  # the CPU generator only: CUDA's (dropout) is left alone
        torch.default_generator.manual_seed(int(entropy.generate_state(1, np.uint64)[0]))
        yield


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Draw ``epoch``'s order: the batch sampler's (map-style datasets) or the shard stream's."""
    (loader.batch_sampler or loader.dataset).set_epoch(epoch)


def dataset_size(loader: DataLoader) -> int:
    """The images a loader's dataset holds (a shard stream's own length counts its batches)."""
    dataset = loader.dataset
    return len(dataset.dataset if isinstance(dataset, ShardStream) else dataset)


def eval_loader(
    dataset: LabeledImages, batch_size: int, ctx: DistContext | None = None, workers: int = 0
) -> DataLoader:
    """In order, sharded across processes without padding (a packed split: by shard, ``ShardStream``)."""
    ctx = ctx or DistContext()
    if getattr(dataset, "shards", None) is not None:
        return shard_loader(dataset, batch_size, 0, ctx, workers, train=False)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=ShardSampler(len(dataset), ctx),
        num_workers=usable_workers(workers),
        collate_fn=collate_samples,
    )


def shard_loader(
    dataset: LabeledImages, batch_size: int, seed: int, ctx: DistContext, workers: int, train: bool
) -> DataLoader:
    """A ``ShardStream`` of a packed split under a ``DataLoader`` (the workers read whole shards; at most as
    many workers as each process has shards; they persist across epochs, as the folders' do)."""
    count = len(dataset.shards)
    if count < ctx.world_size:
        raise CTranError(
            f"{count} shard(s) cannot be split over {ctx.world_size} processes; pack with a smaller "
            "--shard-size (each process and loader worker reads whole shards)"
        )
    workers = min(usable_workers(workers), count // ctx.world_size)
    stream = ShardStream(dataset, batch_size, seed, ctx.rank, ctx.world_size, workers, train)
    return DataLoader(
        stream,
        batch_size=None,  # the stream yields collated batches
        num_workers=workers,
        collate_fn=_as_is,
        pin_memory=ctx.device.type == "cuda",
        persistent_workers=workers > 0,
    )


def _as_is(batch: Sample | None) -> Sample | None:
    return batch


class ShardStream(IterableDataset):
    """One process's batches of a packed split: its shards, read by its loader workers.

    Shard i of an order goes to process i mod N, and a process's j-th shard to worker j mod W. Training:
    the order is drawn from (seed, epoch); each worker's samples pass a shuffle buffer of ``dataset.buffer``
    samples (WebDataset's, seeded by seed, epoch, rank and worker) and every image's augmentation is seeded
    by (seed, epoch, index) as for a folder. An epoch is a number of samples: every process yields
    ceil(size / (N * B)) full batches whatever its shards hold, so the processes stay in step; a worker whose
    shards run out first reads them again, unreadable images are skipped (``on_bad_image``) and replaced by
    the next ones. With shards of one size, as many as a multiple of N * W, each sample is read once per
    epoch. The same seed, world size and workers give the same epochs, so a resumed run (which restarts at
    the epoch boundary) reads what the stopped one would have. Evaluation: the manifest's order, every
    sample once, each worker's last batch short.
    """

    def __init__(
        self,
        dataset: LabeledImages,
        batch_size: int,
        seed: int,
        rank: int,
        world_size: int,
        workers: int,
        train: bool,
    ) -> None:
        self.dataset, self.batch_size, self.seed, self.train = dataset, batch_size, seed, train
        self.rank, self.world_size, self.workers = rank, world_size, max(1, workers)
        self._epoch = torch.zeros((), dtype=torch.long).share_memory_()  # seen by persistent workers too

    def __getattr__(self, name: str) -> object:
        """The dataset's attributes (label names, groups), as a map-style loader's ``dataset`` has them."""
        if name in {"dataset", "_epoch"}:  # not set yet (unpickling in a loader worker)
            raise AttributeError(name)
        return getattr(self.dataset, name)

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Draw ``epoch``'s order; the loader's persistent workers read it from shared memory."""
        self._epoch.fill_(epoch)

    def shards_of(self, worker: int, epoch: int) -> list[Shard]:
        """The shards ``worker`` of this process reads in ``epoch``, in reading order."""
        shards = self.dataset.shards
        if self.train:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(shards))
        else:
            order = np.arange(len(shards))
        return [shards[i] for i in order[self.rank :: self.world_size][worker :: self.workers]]

    def __len__(self) -> int:
        """Batches per epoch: the same on every process when training."""
        if self.train:
            return math.ceil(len(self.dataset) / (self.batch_size * self.world_size))
        per_worker = (sum(shard.samples for shard in self.shards_of(w, 0)) for w in range(self.workers))
        return sum(math.ceil(count / self.batch_size) for count in per_worker)

    def __iter__(self) -> Iterator[Sample | None]:
        info = get_worker_info()
        worker, epoch = info.id if info is not None else 0, self.epoch
        shards = self.shards_of(worker, epoch)
        if not self.train:
            records = (record for shard in shards for record in read_records(shard))
            yield from _batches((self.dataset[record] for record in records), self.batch_size)
            return
        steps = len(range(worker, len(self), self.workers))
        samples = self._training_samples(shards, worker, epoch)
        yield from itertools.islice(_batches(samples, self.batch_size), steps)

    def _training_samples(self, shards: list[Shard], worker: int, epoch: int) -> Iterator[Sample]:
        """Readable, augmented samples of ``shards`` through the shuffle buffer, round and round."""
        from webdataset import shuffle

        state = np.random.SeedSequence([self.seed, epoch, self.rank, worker]).generate_state(1)
        rng = random.Random(int(state[0]))
        passes = (shuffle(self.dataset.buffer, rng=rng)(_one_pass(shards)) for _ in itertools.count())
        records = itertools.chain.from_iterable(passes)  # the buffer never mixes two passes
        unreadable, limit = 0, sum(shard.samples for shard in shards)
        if not limit:  # nothing to go round (never with ctran data pack's shards)
            raise CTranError(f"no samples in the shards {', '.join(s.url for s in shards) or '(none)'}")
        for record in records:
            with augmentation_seed(self.seed, epoch, record.index):
                sample = self.dataset[record]
            if sample is not None:
                unreadable = 0
                yield sample
                continue
            unreadable += 1
            if unreadable > limit:
                raise CTranError(f"no readable image in the shards {', '.join(s.url for s in shards)}")


def _one_pass(shards: list[Shard]) -> Iterator:
    """The records of ``shards`` in turn."""
    for shard in shards:
        yield from read_records(shard)


def _batches(samples: Iterable[Sample | None], size: int) -> Iterator[Sample | None]:
    """Collated batches of ``size`` samples, the last one short (None: every image of it was unreadable)."""
    batch: list[Sample | None] = []
    for sample in samples:
        batch.append(sample)
        if len(batch) == size:
            yield collate_samples(batch)
            batch = []
    if batch:
        yield collate_samples(batch)
