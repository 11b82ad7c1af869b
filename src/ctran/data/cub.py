"""CUB-200-2011 as CUB-312: the 200 bird classes are targets, the 112 CBM concepts are extra labels.

Two sources, same result (``source=auto`` takes the pickles when they are there):

* ``cbm``: the Concept Bottleneck Models pickles ``class_attr_data_10/{train,val,test}.pkl`` (Koh et al.,
  ICML 2020): lists of dicts with ``img_path``, ``class_label`` (0..199), ``attribute_label`` (112 concepts)
  and ``attribute_certainty``. Their train/val/test split is used as is.
* ``raw``: the ``CUB_200_2011`` release files, with the 112 concepts derived by the CBM rule: for each
  (class, attribute) take the majority vote of the training images' labels, ignoring "not present" votes
  whose certainty is "not visible" and resolving ties as present; keep the attributes present in at least 10
  classes. CBM computed the vote on its own 80% of the official training split; here it runs on the whole
  official training split, so a few class-level labels can differ. The published 112 concept indices are
  used either way (so the 28 groups below hold), and the summary says whether the rule, run here, selects
  exactly them. ``attributes="instance"`` keeps each image's own (noisy) labels instead of the class vote.

Images come from ``CUB_200_2011/images/<class folder>/<file>.jpg`` in both cases. Each image also carries
the annotators' certainty per concept (1 not visible, 2 guessing, 3 probably, 4 definitely): test-time
intervention leaves "not visible" concepts unknown. ``extra_groups`` lists the 28 concept groups (one per
CUB attribute type: bill shape, wing colour, ...) that intervention reveals together.
"""

from __future__ import annotations

import functools
import pickle
import re
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ctran.data.annotations import find_root, read_lines, require
from ctran.data.images import DenseLabels, ImageFileDataset
from ctran.errors import CTranError

_COLOURS = ("blue", "brown", "iridescent", "purple", "rufous", "grey", "yellow", "olive", "green", "pink",
            "orange", "black", "white", "red", "buff")  # fmt: skip
_PATTERNS = ("solid", "spotted", "striped", "multi-colored")
ATTRIBUTE_TYPES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("has_bill_shape", ("curved_(up_or_down)", "dagger", "hooked", "needle", "hooked_seabird", "spatulate",
                        "all-purpose", "cone", "specialized")),
    ("has_wing_color", _COLOURS),
    ("has_upperparts_color", _COLOURS),
    ("has_underparts_color", _COLOURS),
    ("has_breast_pattern", _PATTERNS),
    ("has_back_color", _COLOURS),
    ("has_tail_shape", ("forked_tail", "rounded_tail", "notched_tail", "fan-shaped_tail", "pointed_tail",
                        "squared_tail")),
    ("has_upper_tail_color", _COLOURS),
    ("has_head_pattern", ("spotted", "malar", "crested", "masked", "unique_pattern", "eyebrow", "eyering",
                          "plain", "eyeline", "striped", "capped")),
    ("has_breast_color", _COLOURS),
    ("has_throat_color", _COLOURS),
    ("has_eye_color", tuple(c for c in _COLOURS if c != "iridescent")),
    ("has_bill_length", ("about_the_same_as_head", "longer_than_head", "shorter_than_head")),
    ("has_forehead_color", _COLOURS),
    ("has_under_tail_color", _COLOURS),
    ("has_nape_color", _COLOURS),
    ("has_belly_color", _COLOURS),
    ("has_wing_shape", ("rounded-wings", "pointed-wings", "broad-wings", "tapered-wings", "long-wings")),
    ("has_size", ("large_(16_-_32_in)", "small_(5_-_9_in)", "very_large_(32_-_72_in)", "medium_(9_-_16_in)",
                  "very_small_(3_-_5_in)")),
    ("has_shape", ("upright-perching_water-like", "chicken-like-marsh", "long-legged-like", "duck-like",
                   "owl-like", "gull-like", "hummingbird-like", "pigeon-like", "tree-clinging-like",
                   "hawk-like", "sandpiper-like", "upland-ground-like", "swallow-like", "perching-like")),
    ("has_back_pattern", _PATTERNS),
    ("has_tail_pattern", _PATTERNS),
    ("has_belly_pattern", _PATTERNS),
    ("has_primary_color", _COLOURS),
    ("has_leg_color", _COLOURS),
    ("has_bill_color", _COLOURS),
    ("has_crown_color", _COLOURS),
    ("has_wing_pattern", _PATTERNS),
)  # fmt: skip
"""CUB's 28 attribute types and their values, in the order of ``attributes.txt`` (ids 1..312)."""

ATTRIBUTE_NAMES = tuple(f"{kind}::{value}" for kind, values in ATTRIBUTE_TYPES for value in values)
CBM_CONCEPTS = (
    1, 4, 6, 7, 10, 14, 15, 20, 21, 23, 25, 29, 30, 35, 36, 38, 40, 44, 45, 50, 51, 53, 54, 56, 57, 59, 63,
    64, 69, 70, 72, 75, 80, 84, 90, 91, 93, 99, 101, 106, 110, 111, 116, 117, 119, 125, 126, 131, 132, 134,
    145, 149, 151, 152, 153, 157, 158, 163, 164, 168, 172, 178, 179, 181, 183, 187, 188, 193, 194, 196, 198,
    202, 203, 208, 209, 211, 212, 213, 218, 220, 221, 225, 235, 236, 238, 239, 240, 242, 243, 244, 249, 253,
    254, 259, 260, 262, 268, 274, 277, 283, 289, 292, 293, 294, 298, 299, 304, 305, 308, 309, 310, 311,
)  # fmt: skip
"""The 112 attributes kept by CBM (0-based indices into ``ATTRIBUTE_NAMES``), as published with its code."""

CONCEPT_NAMES = tuple(ATTRIBUTE_NAMES[i] for i in CBM_CONCEPTS)
NUM_CLASSES, NOT_VISIBLE, MIN_CLASSES = 200, 1, 10
SPLITS = ("train", "val", "test")
OPTIONS = ("source", "attributes")
PICKLES = "class_attr_data_10"
LAYOUT = (
    "{CUB_200_2011/{images/<class>/<file>.jpg, images.txt, classes.txt, image_class_labels.txt, "
    f"train_test_split.txt, attributes/image_attribute_labels.txt}}, {PICKLES}/{{train,val,test}}.pkl (CBM)}}"
)


def has_pickles(root: str | Path | None) -> bool:
    """Whether ``root`` holds the CBM pickles (then ``source=auto`` reads them)."""
    if root is None:
        return False
    root = Path(root).expanduser()
    return (root / PICKLES).is_dir() or (root.name == "CUB_200_2011" and (root.parent / PICKLES).is_dir())


def concept_groups(names: tuple[str, ...] = CONCEPT_NAMES) -> list[list[int]]:
    """Concept indices grouped by attribute type (the text before ``::``), in order of appearance."""
    groups: dict[str, list[int]] = {}
    for index, name in enumerate(names):
        groups.setdefault(name.split("::")[0], []).append(index)
    return list(groups.values())


def load(
    root: str | Path,
    split: str,
    *,
    transform=None,
    on_bad_image: str = "skip",
    source: str = "auto",
    attributes: str = "class",
) -> ImageFileDataset:
    """One CUB-312 split: train/val/test from the CBM pickles, train/test from the raw release."""
    root = Path(root).expanduser() if root is not None else None
    if root is not None and root.name == "CUB_200_2011":
        root = root.parent
    base = find_root(root, "CUB_200_2011", (), LAYOUT)
    cub = base / "CUB_200_2011"
    if source == "auto":
        source = "cbm" if (base / PICKLES).is_dir() else "raw"
    if source not in {"cbm", "raw"} or attributes not in {"class", "instance"}:
        raise CTranError(
            "CUB options: source is auto, cbm or raw and attributes is class or instance, "
            f"got source={source!r} attributes={attributes!r}"
        )
    classes_file = require(cub / "classes.txt", LAYOUT)
    class_names = [re.sub(r"^\d+\.", "", text.split(maxsplit=1)[-1]) for _, text in read_lines(classes_file)]
    if len(class_names) != NUM_CLASSES:
        raise CTranError(f"{classes_file}: expected {NUM_CLASSES} classes, found {len(class_names)}")
    if source == "cbm":
        if attributes != "class":
            raise CTranError(
                "the CBM pickles hold class-level concepts only; attributes=instance needs source=raw"
            )
        files, classes, concepts, certainty = read_pickle(require(base / PICKLES / f"{split}.pkl", LAYOUT))
        notes = [f"CBM pickles ({PICKLES}/{split}.pkl)"]
    else:
        if split not in {"train", "test"}:
            raise CTranError(f"the raw CUB release has splits train and test, not {split!r}")
        files, classes, concepts, certainty, notes = _raw_split(cub, split, attributes)
    targets = np.zeros((len(files), NUM_CLASSES), dtype=np.int8)
    targets[np.arange(len(files)), classes] = 1
    return ImageFileDataset(
        require(cub / "images", LAYOUT),
        files,
        DenseLabels(targets),
        class_names,
        extras=DenseLabels(concepts),
        extra_names=CONCEPT_NAMES,
        transform=transform,
        on_bad_image=on_bad_image,
        notes=notes,
        extra_groups=concept_groups(),
        extra_certainty=certainty,
    )


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles lists, dicts, numbers and numpy scalars only: a dataset file must not run code."""

    ALLOWED = frozenset(
        {("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"), ("numpy", "dtype")}
    )

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def read_pickle(path: Path) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """(image paths under images/, class ids (N,), concepts (N, 112) int8, certainty (N, 112) int8)."""
    try:
        with open(path, "rb") as handle:
            entries = _PlainUnpickler(handle).load()
    except Exception as err:  # a corrupt pickle can fail in many ways; all mean "not a CBM pickle"
        raise CTranError(f"{path}: not a CBM pickle ({err})") from err
    if not isinstance(entries, list):
        raise CTranError(f"{path}: expected a list of image entries, got {type(entries).__name__}")
    files, classes = [], np.zeros(len(entries), dtype=np.int64)
    concepts = np.zeros((len(entries), len(CBM_CONCEPTS)), dtype=np.int8)
    certainty = np.full((len(entries), len(CBM_CONCEPTS)), 4, dtype=np.int8)
    for number, entry in enumerate(entries):
        try:
            files.append("/".join(str(entry["img_path"]).replace("\\", "/").split("/")[-2:]))
            classes[number] = int(entry["class_label"])
            concepts[number] = _concepts(entry["attribute_label"], {0, 1})
            if "attribute_certainty" in entry:
                certainty[number] = _concepts(entry["attribute_certainty"], {1, 2, 3, 4})
            if not 0 <= classes[number] < NUM_CLASSES:
                raise ValueError(f"class_label {classes[number]} is outside 0..{NUM_CLASSES - 1}")
        except (KeyError, TypeError, ValueError, OverflowError) as err:
            raise CTranError(f"{path}: entry {number} is malformed ({type(err).__name__}: {err})") from err
    return files, classes, concepts, certainty


def _concepts(values: object, allowed: set[int]) -> np.ndarray:
    """112 concept values from a 112-long list, or the CBM selection of a 312-long (all-attribute) list."""
    array = np.asarray(values, dtype=np.int64)
    if array.shape == (len(ATTRIBUTE_NAMES),):
        array = array[list(CBM_CONCEPTS)]
    if array.shape != (len(CBM_CONCEPTS),):
        raise ValueError(
            f"expected {len(CBM_CONCEPTS)} or {len(ATTRIBUTE_NAMES)} values, got shape {array.shape}"
        )
    if not set(np.unique(array).tolist()) <= allowed:
        raise ValueError(f"values must be in {sorted(allowed)}")
    return array.astype(np.int8)


def _raw_split(
    cub: Path, split: str, attributes: str
) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, list]:
    """One split of the raw release: files, class ids, (N, 112) concepts, (N, 112) certainty, notes."""
    release = read_release(str(cub))
    rows = np.flatnonzero(release["is_train"] == (split == "train"))
    train = release["is_train"]
    majority = class_attributes(
        release["classes"][train], release["labels"][train], release["certainty"][train]
    )
    selected = cbm_selection(majority)
    if attributes == "class":
        concepts = majority[release["classes"][rows]][:, list(CBM_CONCEPTS)]
    else:
        concepts = release["labels"][rows][:, list(CBM_CONCEPTS)]
    if np.array_equal(selected, CBM_CONCEPTS):
        rule = "exactly the published 112 concepts"
    else:
        rule = f"{len(selected)} attributes, not the published 112 (which are used)"
    notes = [
        f"raw CUB_200_2011 release, {attributes}-level concept labels",
        f"the CBM rule on the official training split selects {rule}",
    ]
    certainty = release["certainty"][rows][:, list(CBM_CONCEPTS)]
    files = [release["files"][i] for i in rows]
    return files, release["classes"][rows], concepts.astype(np.int8), certainty, notes


def class_attributes(classes: np.ndarray, labels: np.ndarray, certainty: np.ndarray) -> np.ndarray:
    """CBM's class-level vote, (200, A) int8: 1 where present votes >= absent votes.

    An "absent" vote whose certainty is "not visible" is not counted: the annotator could not see the part.
    """
    counted = ~((labels == 0) & (certainty == NOT_VISIBLE))  # (N, A)
    present = np.zeros((NUM_CLASSES, labels.shape[1]), dtype=np.int64)
    absent = np.zeros_like(present)
    np.add.at(present, classes, (counted & (labels == 1)).astype(np.int64))
    np.add.at(absent, classes, (counted & (labels == 0)).astype(np.int64))
    return (present >= absent).astype(np.int8)


def cbm_selection(majority: np.ndarray, min_classes: int = MIN_CLASSES) -> np.ndarray:
    """Attributes present (by class vote) in at least ``min_classes`` classes: CBM's 112 on its split."""
    return np.flatnonzero(majority.sum(axis=0) >= min_classes)


@functools.lru_cache(maxsize=2)
def read_release(cub_dir: str) -> dict:
    """All images of the raw release: files, 0-based classes, is_train, (N, 312) labels and certainty.

    Cached, because every split needs the training split's votes and the attribute file has 3.7M lines.
    """
    cub = Path(cub_dir)
    ids, files = _id_table(require(cub / "images.txt", LAYOUT), str)
    if not ids:
        raise CTranError(f"{cub / 'images.txt'}: lists no images; expected layout: {LAYOUT}")
    classes = _lookup(require(cub / "image_class_labels.txt", LAYOUT), ids) - 1
    is_train = _lookup(require(cub / "train_test_split.txt", LAYOUT), ids) == 1
    position = {image_id: row for row, image_id in enumerate(ids)}
    labels = np.zeros((len(ids), len(ATTRIBUTE_NAMES)), dtype=np.int8)
    certainty = np.full((len(ids), len(ATTRIBUTE_NAMES)), NOT_VISIBLE, dtype=np.int8)
    path = require(cub / "attributes" / "image_attribute_labels.txt", LAYOUT)
    for number, text in tqdm(read_lines(path), desc="CUB attributes", leave=False, disable=None):
        fields = (
            text.split()
        )  # <image id> <attribute id> <is present> <certainty id> <time> (a few lines: more)
        try:
            row, column = position[int(fields[0])], int(fields[1]) - 1
            present, certain = int(fields[2]), int(fields[3])
            if not (0 <= column < len(ATTRIBUTE_NAMES) and present in (0, 1) and 1 <= certain <= 4):
                raise ValueError(text)  # a negative column would silently wrap around to the last ones
            labels[row, column], certainty[row, column] = present, certain
        except (KeyError, IndexError, ValueError) as err:
            raise CTranError(
                f"{path} line {number}: expected '<image id> <attribute id> <0|1> <1-4> ...'"
            ) from err
    if classes.min() < 0 or classes.max() >= NUM_CLASSES:
        raise CTranError(f"{cub / 'image_class_labels.txt'}: class ids must be 1..{NUM_CLASSES}")
    return {
        "files": files,
        "classes": classes,
        "is_train": is_train,
        "labels": labels,
        "certainty": certainty,
    }


def _id_table(path: Path, kind: type) -> tuple[list[int], list]:
    """``<image id> <value>`` lines -> (ids, values)."""
    ids, values = [], []
    for number, text in read_lines(path):
        fields = text.split(maxsplit=1)
        try:
            ids.append(int(fields[0]))
            values.append(kind(fields[1]))
        except (IndexError, ValueError) as err:
            raise CTranError(f"{path} line {number}: expected '<image id> <value>', got {text!r}") from err
    if len(set(ids)) != len(ids):
        raise CTranError(f"{path}: an image id is listed twice")
    return ids, values


def _lookup(path: Path, ids: list[int]) -> np.ndarray:
    """Integer values of an ``<image id> <int>`` file, in the order of ``ids``."""
    table = dict(zip(*_id_table(path, int), strict=True))
    missing = [i for i in ids if i not in table]
    if missing:
        raise CTranError(f"{path}: no line for image id {missing[0]} (of images.txt)")
    return np.array([table[i] for i in ids], dtype=np.int64)
