"""``ctran data pack``: any reader's split written as WebDataset tar shards (layout: ``ctran.data.shards``).

Each sample is the image's bytes as stored (or, with ``max_side``, re-encoded with its longest side capped)
and a JSON record of its target and extra states, id and source path; the vocabulary is written once, beside
the shards. Shards close at ``shard_size`` samples or ``shard_bytes`` bytes. Every file is written to a
temporary name and renamed when complete (``ctran.files.atomic_write``), and after each shard the progress
so far is saved (``.<split>.pack.json``): a stopped pack re-run with the same arguments goes on from its
last complete shard, and never leaves a half-written shard, manifest or vocabulary behind.
"""

from __future__ import annotations

import functools
import io
import json
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ctran.data.base import LabeledImages
from ctran.data.images import DECODE_ERRORS
from ctran.data.shards import VOCABULARY, encode_states
from ctran.data.transforms import load_image
from ctran.errors import CTranError
from ctran.files import atomic_write, atomic_write_bytes

SHARD_BYTES = 1_000_000_000
PARALLEL_READERS = 64  # the default shard size leaves this many shards: 8 processes x 8 workers


@dataclass(frozen=True)
class Encoded:
    """One sample ready for the tar file."""

    key: str
    extension: str
    image: bytes
    record: bytes

    @property
    def size(self) -> int:
        return len(self.image) + len(self.record)

    def sample(self) -> dict[str, object]:
        return {"__key__": self.key, self.extension: self.image, "json": self.record}


def default_shard_size(samples: int) -> int:
    """Samples per shard that leave ``PARALLEL_READERS`` shards (``shard_bytes`` caps large images)."""
    return max(1, math.ceil(samples / PARALLEL_READERS))


def write_vocabulary(out: Path, dataset: LabeledImages) -> None:
    """``vocabulary.json``, once per folder: every split packed there must have the same labels."""
    vocabulary = {
        "target_names": list(dataset.target_names),
        "extra_names": list(dataset.extra_names),
        "extra_groups": [list(map(int, group)) for group in getattr(dataset, "extra_groups", [])],
    }
    path = out / VOCABULARY
    if path.is_file():
        if json.loads(path.read_text()) != vocabulary:
            raise CTranError(
                f"{out} holds shards of another vocabulary ({path}); pack this dataset into another folder"
            )
        return
    atomic_write_bytes(path, json.dumps(vocabulary, indent=1).encode())


def pack_split(
    dataset: LabeledImages,
    out: str | Path,
    name: str,
    source: dict,
    *,
    max_side: int | None = None,
    shard_size: int | None = None,
    shard_bytes: int = SHARD_BYTES,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Write ``dataset`` as ``out/<name>-NNNNNN.tar`` shards and the manifest ``out/<name>.json``; return it.

    ``source`` (format, root, split, options) is recorded in the manifest. ``progress(done, total)`` is
    called after every sample. A complete manifest of the same source and settings is returned as it is.
    """
    if not hasattr(dataset, "encoded_image"):
        raise CTranError("this dataset has no image files to pack (the digit scenes are generated)")
    total = len(dataset)
    if not total:
        raise CTranError(f"{source.get('split', name)}: no images to pack")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_vocabulary(out, dataset)
    shard_size = shard_size or default_shard_size(total)
    settings = {"source": source, "samples": total, "max_side": max_side, "shard_size": shard_size}
    settings["shard_bytes"] = shard_bytes
    manifest_path, state_path = out / f"{name}.json", out / f".{name}.pack.json"
    if manifest_path.is_file() and _read(manifest_path).get("settings") == settings:
        return _read(manifest_path)
    state = _read(state_path) if state_path.is_file() else {}
    if state.get("settings") != settings:  # another pack, or none: start over
        state = {"settings": settings, "shard_samples": [], "shard_bytes": [], "next": 0, "unreadable": []}
    if progress:
        progress(state["next"], total)
    queue = _Queue(_encoded(dataset, state["next"], max_side, state["unreadable"], progress))
    while queue.next is not None:
        shard, before = out / f"{name}-{len(state['shard_samples']):06d}.tar", queue.popped
        atomic_write(shard, functools.partial(_write_shard, queue=queue, limits=(shard_size, shard_bytes)))
        state["shard_samples"].append(queue.popped - before)
        state["shard_bytes"].append(shard.stat().st_size)
        state["next"] = total if queue.next is None else int(queue.next.key)
        atomic_write_bytes(state_path, json.dumps(state).encode())
    manifest = _manifest(name, state)
    _remove_stale(out, name, len(state["shard_samples"]))
    atomic_write_bytes(manifest_path, json.dumps(manifest, indent=1).encode())
    state_path.unlink(missing_ok=True)
    return manifest


class _Queue:
    """The samples still to write, the next one visible: a shard closes before a sample that would make it
    pass its size in bytes."""

    def __init__(self, samples: Iterator[Encoded]) -> None:
        self._samples = samples
        self.next = next(samples, None)
        self.popped = 0

    def pop(self) -> Encoded:
        sample, self.next = self.next, next(self._samples, None)
        self.popped += 1
        return sample


def _write_shard(handle, queue: _Queue, limits: tuple[int, int]) -> None:
    """One tar file of the queue's next samples, up to ``limits`` (samples, bytes; a sample larger than the
    bytes gets a shard of its own)."""
    from webdataset import TarWriter

    shard_size, shard_bytes = limits
    count = size = 0
    with TarWriter(handle, encoder=False, mtime=0) as tar:  # mtime 0: the same bytes every time
        while (
            queue.next is not None
            and count < shard_size
            and (not count or size + queue.next.size <= shard_bytes)
        ):
            size += queue.next.size
            tar.write(queue.pop().sample())
            count += 1


def _manifest(name: str, state: dict) -> dict:
    """The manifest of a finished split: shard URL pattern, counts, and what was left unreadable."""
    last = len(state["shard_samples"]) - 1
    return {
        "split": name,
        "urls": f"{name}-{{{0:06d}..{max(last, 0):06d}}}.tar",
        "samples": sum(state["shard_samples"]),
        "shard_samples": state["shard_samples"],
        "shard_bytes": state["shard_bytes"],
        "unreadable": list({entry["path"]: entry for entry in state["unreadable"]}.values()),
        "settings": state["settings"],
    }


def _encoded(
    dataset: LabeledImages,
    start: int,
    max_side: int | None,
    unreadable: list,
    progress: Callable[[int, int], None] | None,
) -> Iterator[Encoded]:
    """Samples ``start`` ... of ``dataset``, encoded; files gone since the listing are skipped and noted."""
    total = len(dataset)
    for index in range(start, total):
        try:
            image, extension = dataset.encoded_image(index)
        except OSError as err:
            path = str(dataset.path(index))
            unreadable.append({"path": path, "reason": f"{type(err).__name__}: {err}", "packed": False})
            warnings.warn(f"not packed: {path} ({err})", stacklevel=2)
        else:
            if max_side is not None:
                image, extension = _capped(image, extension, max_side, unreadable, dataset, index)
            yield Encoded(f"{index:09d}", extension or "img", image, _record(dataset, index))
        if progress:
            progress(index + 1, total)


def _record(dataset: LabeledImages, index: int) -> bytes:
    """The JSON beside one image: its position, id, source file and states."""
    record = {
        "index": index,
        "id": dataset.image_id(index),
        "source": str(dataset.path(index)),
        "targets": encode_states(dataset.target_table.row(index)),
        "extras": encode_states(dataset.extra_table.row(index)),
    }
    return json.dumps(record, separators=(",", ":")).encode()


def _capped(
    image: bytes, extension: str, max_side: int, unreadable: list, dataset: LabeledImages, index: int
) -> tuple[bytes, str]:
    """The image re-encoded (JPEG, quality 90) with its longest side at most ``max_side``; smaller ones and
    unreadable ones as they are (training then skips the latter per ``on_bad_image``, as from the folder)."""
    try:
        with Image.open(io.BytesIO(image)) as opened:
            if max(opened.size) <= max_side:
                return image, extension
            decoded = load_image(opened, max_side)  # a draft decode: at least max_side on each side
            decoded.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    except DECODE_ERRORS as err:
        path = str(dataset.path(index))
        unreadable.append({"path": path, "reason": f"{type(err).__name__}: {err}", "packed": True})
        return image, extension
    buffer = io.BytesIO()
    decoded.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue(), "jpg"


def _remove_stale(out: Path, name: str, count: int) -> None:
    """Shards of an earlier, longer pack of ``name`` that the new manifest does not list."""
    for path in out.glob(f"{name}-*.tar"):
        number = path.stem.rpartition("-")[2]
        if number.isdigit() and len(number) == 6 and int(number) >= count:
            path.unlink()


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
