"""Visual Genome 500: the 500 most frequent object categories, in the split of SSGRL / ML-GCN / C-Tran.

Layout: ``{VG_100K/, train_list_500.txt, test_list_500.txt, vg_category_500_labels_index.json}`` (optionally
``VG_100K_2/`` for the second Visual Genome image archive). The lists hold one image file name per line; the
JSON maps an image file name to the list of its positive label indices (0..499); every other label is
negative. The release has no file of category names, so labels are called ``label_000`` ... unless
``names=FILE`` gives them (500 lines, or a JSON list).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ctran.data.annotations import check_unique, find_root, read_json, read_lines, read_names, require
from ctran.data.images import DenseLabels, ImageFileDataset
from ctran.errors import CTranError

SPLITS = ("train", "test")
OPTIONS = ("names",)
NUM_LABELS = 500
LABEL_FILE = "vg_category_500_labels_index.json"
IMAGE_FOLDERS = ("VG_100K", "VG_100K_2")
LAYOUT = f"{{VG_100K/, train_list_500.txt, test_list_500.txt, {LABEL_FILE}}}"


def load(
    root: str | Path, split: str, *, transform=None, on_bad_image: str = "skip", names: str | None = None
) -> ImageFileDataset:
    """One VG-500 split (``train`` or ``test``) as an ``ImageFileDataset``."""
    base = find_root(root, LABEL_FILE, ("VG", "vg"), LAYOUT)
    list_path = require(base / f"{split}_list_500.txt", LAYOUT)
    images = [text for _, text in read_lines(list_path)]
    label_path = base / LABEL_FILE
    index = read_json(label_path)
    if not isinstance(index, dict):
        raise CTranError(f"{label_path}: expected a JSON object mapping image names to label indices")
    require(base / IMAGE_FOLDERS[0], LAYOUT)
    label_names = _label_names(names)
    labels = np.zeros((len(images), NUM_LABELS), dtype=np.int8)
    for row, image in enumerate(images):
        if image not in index:
            raise CTranError(f"{label_path}: no entry for image {image!r} of {list_path.name}")
        positives = index[image]
        if not isinstance(positives, list) or not all(
            isinstance(p, int) and not isinstance(p, bool) and 0 <= p < NUM_LABELS for p in positives
        ):
            raise CTranError(f"{label_path}: labels of {image!r} must be indices in 0..{NUM_LABELS - 1}")
        labels[row, positives] = 1
    files = _locate(base, images)
    return ImageFileDataset(
        base, files, DenseLabels(labels), label_names, transform=transform, on_bad_image=on_bad_image
    )


def _label_names(path: str | None) -> list[str]:
    if path is None:
        return [f"label_{i:03d}" for i in range(NUM_LABELS)]
    names = read_names(Path(path))
    if len(names) != NUM_LABELS:
        raise CTranError(f"{path}: expected {NUM_LABELS} label names, found {len(names)}")
    check_unique(names, str(path))
    return names


def _locate(base: Path, images: list[str]) -> list[str]:
    """Each image's path relative to ``base``: in VG_100K, else in VG_100K_2 when it is there."""
    first = set(os.listdir(base / IMAGE_FOLDERS[0]))
    second_dir = base / IMAGE_FOLDERS[1]
    second = set(os.listdir(second_dir)) if second_dir.is_dir() else set()
    folder = {False: IMAGE_FOLDERS[0], True: IMAGE_FOLDERS[1]}
    return [f"{folder[name not in first and name in second]}/{name}" for name in images]
