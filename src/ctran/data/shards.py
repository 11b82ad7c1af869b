"""WebDataset tar shards: the layout ``ctran data pack`` writes and the reader of ``data.format: shards``.

Layout of a shard folder (``--data-root DIR``)::

    vocabulary.json        {"target_names": [...], "extra_names": [...], "extra_groups": [...]}, once
    train.json             the manifest of a split: {"urls": "train-{000000..000041}.tar",
                           "shard_samples": [n0, n1, ...], "samples": N, "source": {...}}
    train-000000.tar ...   WebDataset shards: per sample <key>.<jpg|png|...> (the image's bytes) and
                           <key>.json {"index", "id", "source", "targets", "extras"}

``urls`` is a brace pattern relative to DIR, or any URL WebDataset opens: edit it to read the same shards from
object storage, e.g. ``"pipe:aws s3 cp s3://bucket/ds/train-{000000..000041}.tar -"``; the manifest and
the vocabulary stay local. States are stored per sample as the labels that differ from the sample's most
common state (``{"rest": 0, "1": [3, 17]}``: labels 3 and 17 positive, every other one negative), so a
sparsely annotated Open Images row costs a few bytes, not 9,605 entries. ``index`` is the sample's position in
the split it was packed from: label masks and augmentations are seeded by it as they are for the folder.

``ShardedImages`` is indexed by ``Record`` (a sample read from a shard), not by position: the loaders of
``ctran.training.loaders`` read each process's and worker's shards and call ``dataset[record]``. A shard that
ends before the count its manifest gives, or cannot be read as a tar file, is an error naming the shard.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ctran.data.base import LabeledImages, Sample
from ctran.data.images import DECODE_ERRORS, ON_BAD_IMAGE, BadImagePolicy
from ctran.data.transforms import eval_transform, load_image
from ctran.errors import CTranError
from ctran.states import UNKNOWN

VOCABULARY = "vocabulary.json"
OPTIONS = ("buffer",)
LAYOUT = (
    "a folder written by `ctran data pack`: vocabulary.json, <split>.json manifests and their .tar shards"
)
DEFAULT_BUFFER = 1000  # samples in each loader worker's shuffle buffer
# a cut tar file (tarfile.ReadError), a missing file or a failed ``pipe:`` command (OSError), a bad member
SHARD_ERRORS = (tarfile.TarError, OSError, EOFError, ValueError)


@dataclass(frozen=True)
class Shard:
    """One tar file: where it is (a path, a URL or a ``pipe:`` command) and how many samples it holds."""

    url: str
    samples: int


@dataclass(frozen=True)
class Record:
    """One sample as read from a shard: the image's bytes and its JSON fields."""

    shard: str
    key: str
    image: bytes
    meta: dict

    @property
    def index(self) -> int:
        return int(self.meta["index"])


def encode_states(row: np.ndarray) -> dict[str, object]:
    """A (L,) state row as the labels that differ from its most common state: ``{"rest": 0, "1": [3]}``."""
    values, counts = np.unique(row, return_counts=True)
    rest = int(values[np.argmax(counts)]) if len(values) else UNKNOWN
    encoded: dict[str, object] = {"rest": rest}
    for value in values:
        if value != rest:
            encoded[str(int(value))] = np.flatnonzero(row == value).tolist()
    return encoded


def decode_states(encoded: dict, size: int) -> torch.Tensor:
    """(L,) long states from ``encode_states``' form."""
    row = torch.full((size,), int(encoded["rest"]), dtype=torch.long)
    for value, labels in encoded.items():
        if value != "rest":
            row[torch.as_tensor(labels, dtype=torch.long)] = int(value)
    return row


def shard_urls(pattern: str, root: Path) -> list[str]:
    """The brace pattern of a manifest expanded; plain paths made relative to ``root``."""
    import braceexpand

    return [url if _is_url(url) else str(root / url) for url in braceexpand.braceexpand(pattern)]


def _is_url(url: str) -> bool:
    """A ``pipe:`` command, a ``scheme://`` URL or an absolute path: not relative to the shard folder."""
    return url.startswith("/") or bool(re.match(r"^[a-zA-Z][\w+.-]*:", url))


def read_json(path: Path, what: str) -> dict:
    """A JSON file of the shard folder, or a ``CTranError`` saying what is missing."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as err:
        raise CTranError(f"no {what} {path.name} in {path.parent}; expected {LAYOUT}") from err
    except (OSError, ValueError) as err:
        raise CTranError(f"{path}: unreadable {what} ({err})") from err


def manifest_shards(root: Path, split: str) -> list[Shard]:
    """The shards of ``split`` from its manifest, their URL pattern expanded."""
    path = root / f"{split}.json"
    if not path.is_file():
        packed = sorted(p.stem for p in root.glob("*.json") if p.name != VOCABULARY)
        raise CTranError(
            f"{root} has no split {split!r} (packed: {', '.join(packed) or 'none'}); pack it with "
            f"`ctran data pack --out {root}` (train, val and test as training reads them)"
        )
    manifest = read_json(path, "manifest")
    try:
        urls, counts = shard_urls(manifest["urls"], root), [int(n) for n in manifest["shard_samples"]]
    except (KeyError, TypeError, ValueError) as err:
        raise CTranError(f"{path}: a manifest needs 'urls' and 'shard_samples' ({err})") from err
    if len(urls) != len(counts):
        raise CTranError(
            f"{path}: 'urls' expands to {len(urls)} shards but 'shard_samples' counts {len(counts)}"
        )
    return [Shard(url, count) for url, count in zip(urls, counts, strict=True)]


def read_records(shard: Shard) -> Iterator[Record]:
    """The samples of one shard in order; a shard cut short or unreadable is a ``CTranError`` naming it."""
    from webdataset import tarfile_samples

    count = 0
    try:
        for sample in tarfile_samples([{"url": shard.url}]):
            yield _record(shard, sample)
            count += 1
    except SHARD_ERRORS as err:
        reason = str(err.args[0] if err.args else err).split(" @ ")[0]  # WebDataset appends the stream
        raise CTranError(
            f"shard {shard.url} is truncated or corrupt after {count} of {shard.samples} samples "
            f"({type(err).__name__}: {reason}); copy it again or re-run `ctran data pack`"
        ) from err
    if count != shard.samples:
        raise CTranError(
            f"shard {shard.url} holds {count} samples but its manifest says {shard.samples}: truncated? "
            "Copy it again or re-run `ctran data pack`"
        )


def _record(shard: Shard, sample: dict) -> Record:
    """A ``Record`` from WebDataset's ``{"__key__", "json", "<ext>"}`` dict."""
    images = [key for key in sample if key != "json" and not key.startswith("__")]
    if "json" not in sample or len(images) != 1:
        raise CTranError(
            f"shard {shard.url}: sample {sample.get('__key__')} should hold one image and one .json, "
            f"holds {', '.join(sorted(k for k in sample if not k.startswith('__')))}"
        )
    try:
        meta = json.loads(sample["json"])
    except ValueError as err:
        raise CTranError(f"shard {shard.url}: sample {sample['__key__']}: unreadable JSON ({err})") from err
    return Record(shard.url, sample["__key__"], sample[images[0]], meta)


class ShardedImages(BadImagePolicy, LabeledImages):
    """A packed split: its shards, its vocabulary, and ``dataset[record]`` -> ``Sample`` (or None when the
    image cannot be decoded, per ``on_bad_image``). ``len`` is the manifest's sample count."""

    decode_side: int | None = None  # set by registry.build_dataset (see ImageFileDataset)

    def __init__(
        self,
        shards: Sequence[Shard],
        vocabulary: dict,
        *,
        transform=None,
        on_bad_image: str = "skip",
        buffer: int = DEFAULT_BUFFER,
        notes: Sequence[str] = (),
    ) -> None:
        if on_bad_image not in ON_BAD_IMAGE:
            raise CTranError(f"on_bad_image must be 'skip' or 'fail', got {on_bad_image!r}")
        self.shards = list(shards)
        self.target_names = tuple(vocabulary["target_names"])
        self.extra_names = tuple(vocabulary.get("extra_names", ()))
        self.extra_groups = [list(group) for group in vocabulary.get("extra_groups", ())]
        self.extra_certainty = None
        self.transform = transform or eval_transform()
        self.on_bad_image, self.buffer = on_bad_image, buffer
        self.bad_images: list[tuple[str, str]] = []
        self.missing_files: list[str] = []
        self.notes = list(notes)

    def __len__(self) -> int:
        return sum(shard.samples for shard in self.shards)

    def __getitem__(self, record: Record) -> Sample | None:
        try:
            image = load_image(io.BytesIO(record.image), self.decode_side)
        except DECODE_ERRORS as err:
            return self._bad_image(f"{record.meta.get('source', record.key)} (in {record.shard})", err)
        targets = decode_states(record.meta["targets"], len(self.target_names))  # (T,)
        extras = decode_states(record.meta.get("extras", {"rest": UNKNOWN}), len(self.extra_names))  # (E,)
        return Sample(self.transform(image), targets, extras, record.index)


def load(
    root: str | Path | None,
    split: str,
    *,
    transform=None,
    on_bad_image: str = "skip",
    buffer: int | str = DEFAULT_BUFFER,
) -> ShardedImages:
    """One packed split of the shard folder ``root`` (see the module's docstring)."""
    if root is None or not Path(root).expanduser().is_dir():
        raise CTranError(f"shard folder {root} does not exist; expected {LAYOUT}")
    base = Path(root).expanduser()
    vocabulary = read_json(base / VOCABULARY, "vocabulary")
    shards = manifest_shards(base, split)
    try:
        buffer = int(buffer)
    except ValueError:
        buffer = 0
    if buffer < 1:
        raise CTranError(f"shards option buffer must be a positive number of samples, got {buffer!r}")
    notes = [f"{len(shards)} shards of {split}, {sum(s.samples for s in shards)} samples"]
    return ShardedImages(
        shards, vocabulary, transform=transform, on_bad_image=on_bad_image, buffer=buffer, notes=notes
    )
