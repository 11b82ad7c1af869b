"""Pascal VOC 2007 (20 labels), read from the devkit as distributed.

Layout: ``VOCdevkit/VOC2007/{JPEGImages/<id>.jpg, Annotations/<id>.xml, ImageSets/Main/<split>.txt}``; the
test images and annotations come in a separate tarball that unpacks into the same folder. An image is
positive for a class when one of its ``<object>`` elements names it.

Objects marked ``<difficult>1</difficult>`` (``difficult=``):

* ``"ignore"`` (default, as in VOC's own evaluation): a class present *only* as difficult objects is
  *not annotated* (-1) for that image: never revealed to the model and never scored;
* ``"negative"``: difficult objects are dropped, so such a class is negative (the official C-Tran code);
* ``"positive"``: difficult objects count like the others.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ctran.data.annotations import find_root, read_lines, require, unknown_name
from ctran.data.images import DenseLabels, ImageFileDataset
from ctran.errors import CTranError

VOC_CLASSES = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
SPLITS = ("trainval", "test", "train", "val")
OPTIONS = ("difficult", "year")
DIFFICULT_MODES = ("ignore", "negative", "positive")
LAYOUT = "VOCdevkit/VOC2007/{JPEGImages/<id>.jpg, Annotations/<id>.xml, ImageSets/Main/{trainval,test}.txt}"


def load(
    root: str | Path,
    split: str,
    *,
    transform=None,
    on_bad_image: str = "skip",
    difficult: str = "ignore",
    year: str = "2007",
) -> ImageFileDataset:
    """One VOC split (``trainval``, ``test``, ``train`` or ``val``) as an ``ImageFileDataset``."""
    if difficult not in DIFFICULT_MODES:
        raise CTranError(f"difficult must be one of {', '.join(DIFFICULT_MODES)}, got {difficult!r}")
    layout = LAYOUT.replace("2007", str(year))
    base = find_root(root, "Annotations", (f"VOC{year}", f"VOCdevkit/VOC{year}"), layout)
    hint = (
        " (the VOC2007 test set is a separate download: VOCtest_06-Nov-2007.tar)" if split == "test" else ""
    )
    ids = [
        text.split()[0]
        for _, text in read_lines(require(base / "ImageSets/Main" / f"{split}.txt", layout, hint))
    ]
    require(base / "JPEGImages", layout)
    labels = np.zeros((len(ids), len(VOC_CLASSES)), dtype=np.int8)
    for row, image_id in enumerate(tqdm(ids, desc=f"VOC {split} annotations", leave=False, disable=None)):
        labels[row] = image_labels(require(base / "Annotations" / f"{image_id}.xml", layout, hint), difficult)
    notes = [f"difficult objects: {difficult}"]
    unannotated = int((labels == -1).sum())
    if unannotated:
        notes.append(f"{unannotated} (image, class) pairs seen only as difficult objects are not annotated")
    return ImageFileDataset(
        base / "JPEGImages",
        [f"{image_id}.jpg" for image_id in ids],
        DenseLabels(labels),
        VOC_CLASSES,
        transform=transform,
        on_bad_image=on_bad_image,
        notes=notes,
    )


def image_labels(path: Path, difficult: str = "ignore") -> np.ndarray:
    """(20,) int8 states of one annotation file."""
    try:
        tree = ET.parse(path)
    except ET.ParseError as err:
        reason = str(err).split(":")[0]
        raise CTranError(f"{path} line {err.position[0]}: malformed XML ({reason})") from err
    except LookupError as err:  # the XML declaration names an encoding Python does not know
        raise CTranError(f"{path} line 1: malformed XML ({err})") from err
    states = np.zeros(len(VOC_CLASSES), dtype=np.int8)
    difficult_only = np.zeros(len(VOC_CLASSES), dtype=bool)
    for obj in tree.getroot().iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in VOC_CLASSES:
            raise unknown_name(name, VOC_CLASSES, str(path), "VOC class")
        index = VOC_CLASSES.index(name)
        flag = (obj.findtext("difficult") or "0").strip()
        if flag not in {"0", "1"}:
            raise CTranError(f"{path}: <difficult> of a {name} object must be 0 or 1, got {flag!r}")
        if flag == "1" and difficult != "positive":
            difficult_only[index] = difficult == "ignore"
            continue
        states[index] = 1
    states[difficult_only & (states == 0)] = -1
    return states
