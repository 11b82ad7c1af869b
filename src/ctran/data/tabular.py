"""Your own images and tags: a CSV file or JSON-lines file, one image per row.

CSV: a header with ``image`` and ``labels`` (and optionally ``extra``) columns::

    image,labels,extra
    photos/beach1.jpg,sea;sun;-dog,outdoor
    photos/kitchen.jpg,food,indoor

JSON lines: ``{"image": "photos/beach1.jpg", "labels": ["sea", "sun", "-dog"], "extra": ["outdoor"]}`` (a
``;``-separated string is accepted for ``labels`` and ``extra`` too).

``labels`` are the targets, separated by ``;``; a leading ``-`` marks a *known negative*. ``extra`` holds
input-only labels (metadata such as place or weather) with the same syntax. A label a row does not mention
is negative (``unlisted="negative"``, the default: the row lists everything present) or not annotated
(``unlisted="unknown"``: only the labels written in the row are known). Image paths are relative to the
annotation file.

``root`` is a folder holding one file per split (``train.csv``, ``val.csv``, ``test.csv``; or ``.jsonl``) or
a single file (used whatever the split). The vocabulary is ``vocabulary=FILE`` (one label per line), else
``labels.txt`` next to the files, else every label name the files use (sorted); likewise ``extra_vocabulary``
/ ``extras.txt``. With a given vocabulary an unknown name is an error that suggests the closest names.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ctran.data.annotations import check_unique, read_names, unknown_name
from ctran.data.images import DenseLabels, ImageFileDataset
from ctran.errors import CTranError

OPTIONS = ("vocabulary", "extra_vocabulary", "unlisted")
UNLISTED = {"negative": 0, "unknown": -1}
LAYOUT = {
    "csv": "a folder with train.csv and test.csv (val.csv optional), or one .csv file; "
    "header image,labels[,extra]",
    "jsonl": "a folder with train.jsonl and test.jsonl (val.jsonl optional), or one .jsonl file; "
    'lines like {"image": ..., "labels": [...], "extra": [...]}',
}


@dataclass(frozen=True)
class Mentions:
    """The label names a row says are present and absent."""

    positives: tuple[str, ...]
    negatives: tuple[str, ...]


@dataclass(frozen=True)
class Row:
    """One annotated image and where it was read (``"file line N"``, for error messages)."""

    image: str
    labels: Mentions
    extra: Mentions
    where: str


class Vocabulary(NamedTuple):
    names: tuple[str, ...]
    source: str  # the vocabulary file, or "inferred"


def split_files(root: str | Path | None, kind: str) -> dict[str, Path]:
    """Split name -> annotation file: every ``*.csv`` (or ``*.jsonl``) of a folder, or the single file."""
    if root is None or not Path(root).expanduser().exists():
        raise CTranError(f"dataset root {root} does not exist; expected {LAYOUT[kind]}")
    root = Path(root).expanduser()
    if root.is_file():
        return {root.stem: root}
    files = {path.stem: path for path in sorted(root.glob(f"*.{kind}"))}
    if not files:
        raise CTranError(f"no .{kind} file in {root}; expected {LAYOUT[kind]}")
    return files


def load(
    root: str | Path | None,
    split: str,
    *,
    kind: str = "csv",
    transform=None,
    on_bad_image: str = "skip",
    vocabulary: str | None = None,
    extra_vocabulary: str | None = None,
    unlisted: str = "negative",
) -> ImageFileDataset:
    """One split of your own annotations (``root`` a folder of split files, or a single file)."""
    if unlisted not in UNLISTED:
        raise CTranError(f"unlisted must be 'negative' or 'unknown', got {unlisted!r}")
    files = split_files(root, kind)
    if Path(root).expanduser().is_file():
        split = next(iter(files))  # a single file is the split, whatever it was asked as
    elif split not in files:
        raise CTranError(f"no {split}.{kind} in {root} (found: {', '.join(files)}); expected {LAYOUT[kind]}")
    all_rows = {name: read_rows(path, kind) for name, path in files.items()}
    rows = all_rows[split]
    folder = files[split].parent
    every = [row for split_rows in all_rows.values() for row in split_rows]
    targets = _vocabulary(vocabulary, folder / "labels.txt", [row.labels for row in every])
    extras = _vocabulary(extra_vocabulary, folder / "extras.txt", [row.extra for row in every])
    both = sorted(set(targets.names) & set(extras.names))
    if both:
        raise CTranError(
            f"{files[split]}: {both[0]!r} is both a label and an extra label "
            f"(vocabularies: {targets.source}, {extras.source}); give it in one column only"
        )
    fill = UNLISTED[unlisted]
    return ImageFileDataset(
        folder,
        [row.image for row in rows],
        DenseLabels(_states(rows, [row.labels for row in rows], targets, fill, "label")),
        targets.names,
        extras=DenseLabels(_states(rows, [row.extra for row in rows], extras, fill, "extra label")),
        extra_names=extras.names,
        transform=transform,
        on_bad_image=on_bad_image,
        notes=[f"labels not mentioned in a row are {unlisted}"],
    )


def read_rows(path: Path, kind: str) -> list[Row]:
    """Every row of a CSV or JSON-lines annotation file."""
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            return list(_csv_rows(path, handle) if kind == "csv" else _jsonl_rows(path, handle))
    except UnicodeDecodeError as err:
        raise CTranError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    except csv.Error as err:
        raise CTranError(f"{path}: malformed CSV ({err})") from err


def _csv_rows(path: Path, handle) -> Iterator[Row]:
    reader = csv.reader(handle)
    header = [name.strip().lower() for name in next(reader, [])]
    if "image" not in header or "labels" not in header:
        raise CTranError(f"{path} line 1: expected a header with columns image,labels[,extra], got {header}")
    image_at, labels_at = header.index("image"), header.index("labels")
    extra_at = header.index("extra") if "extra" in header else None
    for fields in reader:
        if not any(field.strip() for field in fields):
            continue
        where = f"{path} line {reader.line_num}"
        if len(fields) != len(header):
            raise CTranError(
                f"{where}: expected {len(header)} fields ({','.join(header)}), got {len(fields)}"
            )
        extra = fields[extra_at] if extra_at is not None else ""
        yield _row(fields[image_at], fields[labels_at], extra, where)


def _jsonl_rows(path: Path, handle) -> Iterator[Row]:
    for number, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise CTranError(f"{where}: malformed JSON ({err.msg})") from err
        except (ValueError, RecursionError) as err:  # a number too long to convert, or nesting too deep
            raise CTranError(f"{where}: unreadable JSON ({err})") from err
        if not isinstance(record, dict) or "image" not in record:
            raise CTranError(f'{where}: expected an object like {{"image": ..., "labels": [...]}}')
        yield _row(record["image"], record.get("labels", []), record.get("extra", []), where)


def _row(image: object, labels: object, extra: object, where: str) -> Row:
    if not isinstance(image, str) or not image.strip():
        raise CTranError(f"{where}: the image path is empty")
    return Row(image.strip(), _parse_labels(labels, where), _parse_labels(extra, where), where)


def _parse_labels(value: object, where: str) -> Mentions:
    """``"a;-b"`` or ``["a", "-b"]`` -> present ("a",), absent ("b",); a name marked both is an error."""
    if isinstance(value, str):
        tokens = value.split(";")
    elif isinstance(value, list) and all(isinstance(token, str) for token in value):
        tokens = value
    else:
        raise CTranError(
            f"{where}: labels must be a ';'-separated string or a list of strings, got {value!r}"
        )
    positives, negatives = [], []
    for token in (t.strip() for t in tokens):
        if not token:
            continue
        negative = token.startswith("-")
        name = token[1:].strip() if negative else token
        if not name:
            raise CTranError(f"{where}: '-' must be followed by a label name")
        (negatives if negative else positives).append(name)
    both = set(positives) & set(negatives)
    if both:
        raise CTranError(f"{where}: label {sorted(both)[0]!r} is marked both present and absent")
    return Mentions(tuple(dict.fromkeys(positives)), tuple(dict.fromkeys(negatives)))


def _vocabulary(given: str | None, default: Path, mentions: list[Mentions]) -> Vocabulary:
    """The given vocabulary file, else ``default`` if it exists, else every name mentioned (sorted)."""
    path = Path(given).expanduser() if given is not None else default
    if given is not None and not path.exists():
        raise CTranError(f"vocabulary file {path} does not exist")
    if path.exists():
        names = read_names(path)
        check_unique(names, str(path))
        return Vocabulary(tuple(names), str(path))
    used = {name for m in mentions for name in m.positives + m.negatives}
    return Vocabulary(tuple(sorted(used)), "inferred")


def _states(
    rows: list[Row], mentions: list[Mentions], vocabulary: Vocabulary, fill: int, what: str
) -> np.ndarray:
    """(N, L) int8 states: listed positives 1, listed negatives 0, everything else ``fill``."""
    column = {name: i for i, name in enumerate(vocabulary.names)}
    states = np.full((len(rows), len(column)), fill, dtype=np.int8)
    for index, (row, mention) in enumerate(zip(rows, mentions, strict=True)):
        for value, names in ((1, mention.positives), (0, mention.negatives)):
            for name in names:
                if name not in column:
                    raise unknown_name(
                        name, vocabulary.names, f"{row.where} (vocabulary {vocabulary.source})", what
                    )
                states[index, column[name]] = value
    return states
