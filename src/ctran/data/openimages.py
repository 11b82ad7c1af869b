"""Open Images (V6 or later): human-verified image-level labels, a naturally partially annotated dataset.

Layout (file names as published; the ``oidv6-``/``oidv7-`` prefixes are optional)::

    train/<ImageID>.jpg, validation/<ImageID>.jpg, test/<ImageID>.jpg
    oidv6-train-annotations-human-imagelabels.csv     ImageID,Source,LabelName,Confidence
    validation-annotations-human-imagelabels.csv      (V7: oidv7-val-annotations-human-imagelabels.csv)
    test-annotations-human-imagelabels.csv
    oidv6-class-descriptions.csv                      LabelName,DisplayName
    oidv6-classes-trainable.txt                       optional: the vocabulary (one LabelName per line)

For each (image, class): Confidence 1 -> positive, 0 -> negative (a human verified the class is absent), no
row -> *not annotated*: never revealed to the model and never scored. Only these annotated entries are
stored (``SparseLabels``), so memory grows with the number of rows, not with images x classes.

The vocabulary is ``classes=FILE`` if given, else the trainable-classes file if present, else every class of
the descriptions file; rows of other classes are skipped (and counted), and images left with no annotated
class are dropped. Labels are named by their display name (with the MID appended when two classes share a
display name). An (image, class) pair listed twice keeps its positive verdict.

The label table of a split (train: ~60M rows, minutes of parsing) and the list of its images missing on
disk (train: a 9M-file folder to list) are cached after the first start: a ``.npz`` keyed by the CSV's path,
size and modification time and the vocabulary (the table), and by the image folder's modification time,
which changes when a file is added or removed (the listing); in ``.ctran-cache/`` beside the CSV (or, where
that folder is read-only, under ``~/.cache/ctran``; option ``cache=DIR`` or ``cache=off``). It is written
under a temporary name and renamed, so a stopped start leaves no half file; what changed is read again.
Under torchrun rank 0 reads first and the others load its cache (``training.run``).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import warnings
import zipfile
from array import array
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import numpy as np
from tqdm import tqdm

from ctran.data.annotations import read_lines, require
from ctran.data.images import ImageFileDataset, SparseLabels, find_missing
from ctran.errors import CTranError
from ctran.files import atomic_write

SPLITS = ("train", "validation", "test")
OPTIONS = ("classes", "cache")
CACHE_VERSION = 1  # bump when the cached arrays change meaning
LAYOUT = (
    "{train/, validation/, test/ (<ImageID>.jpg), [oidv6-]<split>-annotations-human-imagelabels.csv, "
    "[oidv6-]class-descriptions.csv, [oidv6-]classes-trainable.txt (optional)}"
)
PREFIXES = ("oidv7-", "oidv6-", "")


def load(
    root: str | Path,
    split: str,
    *,
    transform=None,
    on_bad_image: str = "skip",
    classes: str | None = None,
    cache: str = "auto",
) -> ImageFileDataset:
    """One Open Images split (``train``, ``validation`` or ``test``) as an ``ImageFileDataset``.

    ``cache``: where the label table is cached (``auto``: beside the CSV, ``off``, or a folder)."""
    if root is None or not Path(root).expanduser().is_dir():
        raise CTranError(f"dataset root {root} does not exist; expected layout: {LAYOUT}")
    base = Path(root).expanduser()
    descriptions = _first(base, [f"{p}class-descriptions.csv" for p in PREFIXES], "class descriptions")
    display = read_descriptions(descriptions)
    mids = _vocabulary(base, classes, display)
    short = "val" if split == "validation" else split
    labels_csv = _first(
        base,
        [f"oidv7-{short}-annotations-human-imagelabels.csv"]
        + [
            f"{p}{split}-annotations-human-imagelabels{s}.csv" for s in ("", "-boxable") for p in PREFIXES[1:]
        ],
        f"{split} human-verified image labels",
    )
    image_dir = require(base / split, LAYOUT)
    ids, table, skipped, missing, origin = cached_table(labels_csv, mids, image_dir, cache)
    notes = [
        f"{len(mids)} classes; {table.values.size} annotated (image, class) pairs, the rest not annotated",
        origin,
    ]
    if skipped:
        notes.append(f"{skipped} label rows of classes outside the vocabulary were skipped")
    return ImageFileDataset(
        image_dir,
        ids,
        table,
        display_names(mids, display),
        suffix=".jpg",
        transform=transform,
        on_bad_image=on_bad_image,
        notes=notes,
        missing=missing,
    )


def _first(base: Path, names: list[str], what: str) -> Path:
    for name in names:
        if (base / name).exists():
            return base / name
    raise CTranError(f"no {what} file ({' or '.join(names[:2])}) in {base}; expected layout: {LAYOUT}")


def read_descriptions(path: Path) -> dict[str, str]:
    """MID -> display name; the header row (V6+) is optional (V5 has none)."""
    names: dict[str, str] = {}
    with _open_csv(path) as handle:
        reader = csv.reader(handle)
        for row in reader:
            if len(row) < 2:
                raise CTranError(f"{path} line {reader.line_num}: expected 'LabelName,DisplayName'")
            if row[:2] != ["LabelName", "DisplayName"]:
                names[row[0].strip()] = row[1].strip()
    return names


def _vocabulary(base: Path, classes: str | None, display: dict[str, str]) -> list[str]:
    if classes is not None:
        path = require(Path(classes).expanduser(), LAYOUT)
    else:
        candidates = [base / f"{p}classes-trainable.txt" for p in PREFIXES]
        path = next((p for p in candidates if p.exists()), None)
    mids = [text for _, text in read_lines(path)] if path is not None else list(display)
    if not mids:
        raise CTranError(f"{path or base}: the class vocabulary is empty")
    return list(dict.fromkeys(mids))


def display_names(mids: list[str], display: dict[str, str]) -> list[str]:
    """Display names, made unique by appending the MID where two classes share one."""
    names = [display.get(mid, mid) for mid in mids]
    repeated = {name for name, count in Counter(names).items() if count > 1}
    return [f"{name} ({mid})" if name in repeated else name for name, mid in zip(names, mids, strict=True)]


def read_image_labels(path: Path, mids: list[str]) -> tuple[list[str], SparseLabels, int]:
    """(image ids, their sparse label table, number of rows skipped as outside the vocabulary)."""
    column = {mid: i for i, mid in enumerate(mids)}
    row_of: dict[str, int] = {}
    rows, columns, values = array("q"), array("i"), array("b")
    skipped = 0
    with _open_csv(path) as handle:
        reader = csv.reader(handle)
        image_at, label_at, confidence_at = _header(path, next(reader, []))
        for fields in tqdm(reader, desc=f"{path.name}", unit=" rows", leave=False, disable=None):
            try:
                image, mid, confidence = fields[image_at], fields[label_at], fields[confidence_at]
            except IndexError as err:
                got = ",".join(fields)
                raise CTranError(
                    f"{path} line {reader.line_num}: expected ImageID,...,LabelName,Confidence, got {got!r}"
                ) from err
            if mid not in column:
                skipped += 1
                continue
            if confidence not in {"0", "1", "0.0", "1.0"}:
                raise CTranError(
                    f"{path} line {reader.line_num}: Confidence must be 0 or 1, got {confidence!r}"
                )
            rows.append(row_of.setdefault(image, len(row_of)))
            columns.append(column[mid])
            values.append(int(float(confidence)))
    table = SparseLabels.from_entries(
        np.frombuffer(rows, dtype=np.int64),
        np.frombuffer(columns, dtype=np.int32),
        np.frombuffer(values, dtype=np.int8),
        len(row_of),
        len(mids),
    )
    return list(row_of), table, skipped


def cached_table(
    path: Path, mids: list[str], image_dir: Path, cache: str = "auto"
) -> tuple[np.ndarray | list[str], SparseLabels, int, np.ndarray, str]:
    """(image ids, label table, rows skipped, positions of the ids missing in ``image_dir``, where they came
    from): ``read_image_labels`` and ``find_missing``, each from the cache while its source is unchanged.
    A cache that cannot be written is said once and read around."""
    listing = {"folder": str(image_dir.resolve()), "mtime_ns": image_dir.stat().st_mtime_ns}  # before listing
    if cache == "off":
        ids, table, skipped = read_image_labels(path, mids)
        return ids, table, skipped, _missing(image_dir, ids), "label table read from the CSV (cache=off)"
    key = _cache_key(path, mids)
    target = _cache_folder(path, cache) / f"{path.stem}.{key['vocabulary'][:12]}.npz"
    cached = _read_cache(target, key, len(mids))
    if cached is not None and cached["listing"] == listing:
        origin = f"label table and image listing loaded from the cache {target}"
        return cached["ids"], cached["table"], cached["skipped"], cached["missing"], origin
    if cached is not None:
        ids, table, skipped = cached["ids"], cached["table"], cached["skipped"]
        origin = f"label table loaded from the cache {target}, images listed again"
    else:
        ids, table, skipped = read_image_labels(path, mids)
        origin = f"label table read from the CSV and cached in {target}"
    missing = _missing(image_dir, ids)
    arrays = {"ids": ids, "table": table, "skipped": skipped, "missing": missing, "listing": listing}
    try:
        atomic_write(target, lambda handle: _save_cache(handle, key, arrays))
    except OSError as err:
        warnings.warn(
            f"cannot cache the label table in {target} ({err}); it is read again next time", stacklevel=2
        )
        origin = "label table read from the CSV (not cached)"
    return ids, table, skipped, missing, origin


def _missing(image_dir: Path, ids: np.ndarray | list[str]) -> np.ndarray:
    """Positions of the ids whose ``<id>.jpg`` is not in ``image_dir`` (one listing of the folder)."""
    names = np.char.add(np.asarray(ids, dtype=str), ".jpg")
    return find_missing(image_dir, names) if len(names) else np.zeros(0, dtype=np.int64)


def _cache_key(path: Path, mids: list[str]) -> dict:
    """What the cached table depends on: the CSV (path, size, modification time) and the vocabulary."""
    stat = path.stat()
    vocabulary = hashlib.sha256("\n".join(mids).encode()).hexdigest()
    source = str(path.resolve())
    return {
        "version": CACHE_VERSION,
        "csv": source,
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "vocabulary": vocabulary,
    }


def _cache_folder(path: Path, cache: str) -> Path:
    """``cache=DIR``, else ``.ctran-cache`` beside the CSV, else (read-only dataset) the user's cache."""
    if cache != "auto":
        return Path(cache).expanduser()
    if os.access(path.parent, os.W_OK):
        return path.parent / ".ctran-cache"
    home = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return home / "ctran" / hashlib.sha256(str(path.parent.resolve()).encode()).hexdigest()[:16]


def _save_cache(handle, key: dict, arrays: dict) -> None:
    """The table's arrays, the listing and the keys; ids as ASCII bytes where they are (a quarter of the
    size)."""
    ids, table = arrays["ids"], arrays["table"]
    try:
        id_array = np.array(ids, dtype=np.bytes_)
    except UnicodeEncodeError:
        id_array = np.array(ids, dtype=str)
    np.savez(
        handle,
        key=np.array(json.dumps(key, sort_keys=True)),
        listing=np.array(json.dumps(arrays["listing"], sort_keys=True)),
        ids=id_array,
        indptr=table.indptr,
        columns=table.columns,
        values=table.values,
        skipped=np.array(arrays["skipped"]),
        missing=np.asarray(arrays["missing"], dtype=np.int64),
    )


def _read_cache(path: Path, key: dict, num_labels: int) -> dict | None:
    """What ``path`` caches (ids, table, skipped, missing, listing) if it was made for exactly ``key``."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            if str(arrays["key"]) != json.dumps(key, sort_keys=True):
                return None
            return {
                "ids": arrays["ids"].astype(str),
                "table": SparseLabels(arrays["indptr"], arrays["columns"], arrays["values"], num_labels),
                "skipped": int(arrays["skipped"]),
                "missing": arrays["missing"],
                "listing": json.loads(str(arrays["listing"])),
            }
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):  # absent, foreign or cut short: rebuild
        return None


def _header(path: Path, header: list[str]) -> tuple[int, int, int]:
    """Column positions of ImageID, LabelName and Confidence."""
    try:
        return header.index("ImageID"), header.index("LabelName"), header.index("Confidence")
    except ValueError as err:
        raise CTranError(
            f"{path} line 1: expected a header with ImageID,LabelName,Confidence, got {','.join(header)!r}"
        ) from err


@contextlib.contextmanager
def _open_csv(path: Path) -> Iterator[TextIO]:
    """A CSV file whose encoding or quoting errors name the file instead of surfacing as tracebacks."""
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            yield handle
    except (UnicodeDecodeError, csv.Error) as err:
        raise CTranError(f"{path}: unreadable CSV ({err})") from err
