"""MS-COCO 2014 with its 80 object categories, read from the instances annotation files as distributed.

Layout: ``{train2014/, val2014/, annotations/instances_{train,val}2014.json}``. Category ids run 1..90 with
gaps; they are mapped to 0..79 in id order and keep their names. An image is positive for a category when
at least one of its instance annotations (crowd regions included) has that category. Images without any
annotation are kept, with every label negative (the summary says how many); many papers drop them, which
is why they report 40,137 val2014 images rather than 40,504.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ctran.data.annotations import check_unique, find_root, read_json, require
from ctran.data.images import DenseLabels, ImageFileDataset
from ctran.errors import CTranError

SPLITS = ("train", "val")
OPTIONS = ("year",)
LAYOUT = "{train2014/, val2014/, annotations/instances_{train,val}2014.json}"


def load(
    root: str | Path, split: str, *, transform=None, on_bad_image: str = "skip", year: str = "2014"
) -> ImageFileDataset:
    """One COCO split (``train`` or ``val``) as an ``ImageFileDataset``."""
    layout = LAYOUT.replace("2014", str(year))
    base = find_root(root, "annotations", ("coco", f"coco{year}"), layout)
    path = require(base / "annotations" / f"instances_{split}{year}.json", layout)
    image_dir = base / f"{split}{year}"
    if not image_dir.is_dir() and (base / "images" / f"{split}{year}").is_dir():
        image_dir = base / "images" / f"{split}{year}"
    require(image_dir, layout)
    files, names, labels = parse_instances(path)
    empty = int((labels.sum(axis=1) == 0).sum())
    notes = [f"{empty} images have no annotated object: kept, with every label negative"] if empty else []
    return ImageFileDataset(
        image_dir,
        files,
        DenseLabels(labels),
        names,
        transform=transform,
        on_bad_image=on_bad_image,
        notes=notes,
    )


def parse_instances(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """(image file names, category names in id order, (N, C) int8 labels) from an instances file."""
    data = read_json(path)
    keys = ("images", "annotations", "categories")
    if not isinstance(data, dict) or not all(isinstance(data.get(key), list) for key in keys):
        raise CTranError(
            f"{path}: expected a COCO instances file with 'images', 'annotations' and 'categories'"
        )
    try:
        categories = sorted(data["categories"], key=lambda c: c["id"])
        column = {c["id"]: i for i, c in enumerate(categories)}
        names = [str(c["name"]) for c in categories]
        row = {image["id"]: i for i, image in enumerate(data["images"])}
        files = [str(image["file_name"]) for image in data["images"]]
    except (KeyError, TypeError) as err:
        raise CTranError(f"{path}: an image or category entry lacks its {err} field") from err
    if len(column) != len(categories) or len(row) != len(files):
        what = "category" if len(column) != len(categories) else "image"
        raise CTranError(f"{path}: two {what} entries share one id")
    check_unique(names, str(path))
    labels = np.zeros((len(files), len(names)), dtype=np.int8)
    for number, annotation in enumerate(data["annotations"]):
        try:
            image, category = row[annotation["image_id"]], column[annotation["category_id"]]
        except (KeyError, TypeError) as err:
            raise CTranError(
                f"{path}: annotation #{number} (id {_field(annotation, 'id')}) refers to no known image or "
                f"category ({err})"
            ) from err
        labels[image, category] = 1
    return files, names, labels


def _field(entry: object, key: str) -> object:
    return entry.get(key) if isinstance(entry, dict) else None
