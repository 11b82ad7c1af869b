"""NUS-WIDE with its 81 ground-truth concepts, in the image-list + per-concept label-file format.

Layout (as unpacked from the NUS-WIDE release)::

    Flickr/<folder>/<image>.jpg          (or Images/ or images/, nested like this or flat)
    ImageList/TrainImagelist.txt         one image per line, e.g. ``actor\\0001_2124494179.jpg``
    ImageList/TestImagelist.txt
    Concepts81.txt                       the 81 concept names (else taken from the label file names)
    Groundtruth/TrainTestLabels/Labels_<concept>_{Train,Test}.txt   one 0/1 per line, in image-list order

Many NUS-WIDE images are no longer downloadable, so images missing on disk are listed and skipped rather
than fatal. The release has known corrupt values (``Labels_lake_Train.txt`` holds ``-1130179``): a value that
is an integer but neither 0 nor 1 makes that label *not annotated* for that image, and the summary lists it.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ctran.data.annotations import check_unique, find_root, read_lines, require
from ctran.data.images import DenseLabels, ImageFileDataset
from ctran.errors import CTranError

SPLITS = ("train", "test")
OPTIONS = ()
IMAGE_FOLDERS = ("Flickr", "Images", "images")
LAYOUT = (
    "{Flickr/<folder>/<image>.jpg, ImageList/{Train,Test}Imagelist.txt, Concepts81.txt, "
    "Groundtruth/TrainTestLabels/Labels_<concept>_{Train,Test}.txt}"
)
MAX_LISTED = 5


def load(root: str | Path, split: str, *, transform=None, on_bad_image: str = "skip") -> ImageFileDataset:
    """One NUS-WIDE split (``train`` or ``test``) as an ``ImageFileDataset``; missing images are dropped."""
    base = find_root(root, "ImageList", ("NUS-WIDE", "NUS_WIDE", "nus-wide", "nuswide"), LAYOUT)
    tag = split.capitalize()
    list_path = require(base / "ImageList" / f"{tag}Imagelist.txt", LAYOUT)
    entries = [_relative(text) for _, text in read_lines(list_path)]
    label_dir = require(base / "Groundtruth" / "TrainTestLabels", LAYOUT)
    concepts = _concepts(base, label_dir)
    labels = np.zeros((len(entries), len(concepts)), dtype=np.int8)
    notes: list[str] = []
    for column, concept in enumerate(concepts):
        path = require(label_dir / f"Labels_{concept}_{tag}.txt", LAYOUT)
        labels[:, column] = _label_column(path, len(entries), list_path.name, notes)
    image_dir = _image_dir(base)
    nested = any(child.is_dir() for child in image_dir.iterdir())
    files = entries if nested else [entry.rsplit("/", 1)[-1] for entry in entries]
    return ImageFileDataset(
        image_dir,
        files,
        DenseLabels(labels),
        concepts,
        transform=transform,
        on_bad_image=on_bad_image,
        drop_missing=True,
        notes=notes,
    )


def _relative(text: str) -> str:
    """``C:\\ImageData\\Flickr\\actor\\0001_2.jpg`` or ``actor\\0001_2.jpg`` -> ``actor/0001_2.jpg``."""
    parts = re.split(r"[\\/]+", text)
    return "/".join(parts[-2:])


def _concepts(base: Path, label_dir: Path) -> list[str]:
    listed = base / "Concepts81.txt"
    if listed.exists():
        names = [text for _, text in read_lines(listed)]
        check_unique(names, str(listed))
        return names
    found = sorted(p.name[len("Labels_") : -len("_Train.txt")] for p in label_dir.glob("Labels_*_Train.txt"))
    if not found:
        raise CTranError(f"no Labels_<concept>_Train.txt files in {label_dir}; expected layout: {LAYOUT}")
    return found


def _label_column(path: Path, count: int, list_name: str, notes: list[str]) -> np.ndarray:
    """(N,) int8 states from one per-concept file; corrupt values become not annotated (-1)."""
    lines = list(read_lines(path))
    if len(lines) != count:
        raise CTranError(f"{path}: {len(lines)} values, expected {count} (one per line of {list_name})")
    try:
        values = np.array([text for _, text in lines]).astype(np.int64)
    except (ValueError, OverflowError) as err:
        number, text = next(((n, t) for n, t in lines if not _is_int64(t)), lines[0])
        raise CTranError(f"{path} line {number}: expected 0 or 1, got {text!r}") from err
    corrupt = np.flatnonzero((values != 0) & (values != 1))
    for row in corrupt[:MAX_LISTED]:
        notes.append(
            f"{path.name} line {lines[row][0]}: value {values[row]} is neither 0 nor 1; not annotated"
        )
    if len(corrupt) > MAX_LISTED:
        notes.append(f"{path.name}: {len(corrupt) - MAX_LISTED} more corrupt values, not annotated")
    values[corrupt] = -1
    return values.astype(np.int8)


def _is_int64(text: str) -> bool:
    """Whether numpy can read ``text`` as an int64: finds the line that made a whole column fail."""
    try:
        return -(2**63) <= int(text) < 2**63
    except ValueError:
        return False


def _image_dir(base: Path) -> Path:
    for name in IMAGE_FOLDERS:
        if (base / name).is_dir():
            return base / name
    raise CTranError(f"no image folder ({', '.join(IMAGE_FOLDERS)}) under {base}; expected layout: {LAYOUT}")
