"""Property-based tests of every annotation parser, the ``--known``/``--option`` parsers and config overrides.

Two properties per parser. (a) A file written in the publisher's exact format from random ground truth parses
back to exactly that truth. (b) Broken input (garbage bytes, truncation, bad numbers, unknown names, NUL
bytes, odd unicode, conflicting duplicates) raises ``CTranError`` naming the file: never a bare KeyError,
ValueError, ... that would reach the user as a traceback instead of one line.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import pickle
import tempfile
import typing
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctran.cli.args import dataset_options
from ctran.config import CHOICES, Config, field_marks, load_config
from ctran.data import coco, cub, nuswide, openimages, tabular, vg500, voc
from ctran.errors import CTranError
from ctran.inference.known import FALSE_WORDS, TRUE_WORDS, label_states, parse_spec

pytestmark = pytest.mark.filterwarnings("ignore:.*listed images are missing on disk")  # corrupted names

SETTINGS = settings(
    max_examples=75,
    deadline=None,
    database=None,  # no .hypothesis/ folder in the shared checkout
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
NAME = st.text(st.characters(categories=("L", "N")), min_size=1, max_size=8)  # any script, no separators
WORD = st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8)
DEEP_JSON = "[" * 100_000 + "]" * 100_000  # nesting deeper than the recursion limit
DEEP_YAML = "[" * 1000
LONG_NUMBER = "7" * 5000  # more digits than Python converts to int by default


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    """A fresh folder per example: hypothesis runs many examples inside one test call."""
    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder)


def parses_or_fails_cleanly(read: Callable[[], object]) -> None:
    """Random bytes may happen to be valid; what they must never do is escape as another exception type."""
    with contextlib.suppress(CTranError):
        read()


def fails_cleanly(read: Callable[[], object], path: Path | None = None) -> None:
    """``read`` raises ``CTranError``, naming ``path`` (the file at fault) when one is given."""
    with pytest.raises(CTranError) as info:
        read()
    if path is not None:
        assert path.name in str(info.value)


def corrupt(data: st.DataObject, content: bytes) -> bytes:
    """Random bytes, or ``content`` truncated, with a slice deleted or replaced, or with bytes inserted."""
    how = data.draw(st.sampled_from(["garbage", "truncate", "delete", "replace", "insert"]), label="how")
    if how == "garbage":
        return data.draw(st.binary(max_size=200), label="garbage")
    start = data.draw(st.integers(0, len(content)), label="start")
    if how == "truncate":
        return content[:start]
    stop = data.draw(st.integers(start, len(content)), label="stop")
    noise = b"" if how == "delete" else data.draw(st.binary(min_size=1, max_size=8), label="noise")
    return content[:start] + noise + content[start if how == "insert" else stop :]


def touch(folder: Path, files: list[str]) -> None:
    """``folder`` with placeholder image files: parsing only checks that they exist."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in files:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).touch()


# ----------------------------------------------------------------------------------------------- VOC

VOC_OBJECTS = st.lists(
    st.tuples(
        st.sampled_from(voc.VOC_CLASSES),
        st.sampled_from([None, "0", "1", " 1\n"]),
        st.sampled_from(["", "\n\t\t"]),
    ),
    max_size=6,
)


def voc_xml(objects: list[tuple[str, str | None, str]]) -> str:
    """An annotation file as the devkit writes it: one <object> per box, <difficult> optional."""
    body = "".join(
        f"<object><name>{pad}{escape(name)}{pad}</name><pose>Unspecified</pose><truncated>0</truncated>"
        + ("" if flag is None else f"<difficult>{escape(flag)}</difficult>")
        + "<bndbox><xmin>1</xmin><ymin>2</ymin><xmax>30</xmax><ymax>40</ymax></bndbox></object>"
        for name, flag, pad in objects
    )
    return (
        "<annotation><folder>VOC2007</folder><filename>x.jpg</filename>"
        f"<size><width>50</width><height>50</height><depth>3</depth></size>{body}</annotation>"
    )


def voc_truth(objects: list[tuple[str, str | None, str]], mode: str) -> list[int]:
    """States by the documented rule: difficult-only classes are -1 (ignore), 0 (negative) or 1 (positive)."""
    states: dict[str, int] = {}
    for name, flag, _ in objects:
        if flag is not None and flag.strip() == "1" and mode != "positive":
            if mode == "ignore":
                states.setdefault(name, -1)
            continue
        states[name] = 1
    return [states.get(name, 0) for name in voc.VOC_CLASSES]


@SETTINGS
@given(
    images=st.lists(VOC_OBJECTS, min_size=1, max_size=5),
    mode=st.sampled_from(voc.DIFFICULT_MODES),
    level=st.sampled_from([".", "VOCdevkit", "VOCdevkit/VOC2007"]),
)
def test_voc_round_trip(images: list, mode: str, level: str) -> None:
    with scratch() as root:
        base = root / "VOCdevkit" / "VOC2007"
        ids = [f"{i:06d}" for i in range(len(images))]
        touch(base, [f"JPEGImages/{i}.jpg" for i in ids])
        (base / "Annotations").mkdir()
        for image_id, objects in zip(ids, images, strict=True):
            (base / "Annotations" / f"{image_id}.xml").write_text(voc_xml(objects))
        (base / "ImageSets/Main").mkdir(parents=True)
        (base / "ImageSets/Main/trainval.txt").write_text("".join(f"{i}\n" for i in ids))
        dataset = voc.load(root / level, "trainval", difficult=mode)
        assert dataset.files.tolist() == [f"{i}.jpg" for i in ids]
        np.testing.assert_array_equal(dataset.targets_matrix(), [voc_truth(o, mode) for o in images])


@SETTINGS
@given(
    objects=VOC_OBJECTS,
    how=st.sampled_from(["unknown class", "bad difficult", "truncated", "encoding", "nul", "not utf-8"]),
    data=st.data(),
)
def test_voc_broken_annotation_raises(objects: list, how: str, data: st.DataObject) -> None:
    if how == "unknown class":
        objects = [*objects, (data.draw(NAME.filter(lambda n: n not in voc.VOC_CLASSES)), None, "")]
    if how == "bad difficult":
        flag = data.draw(
            st.text("012 -x.", min_size=1, max_size=4).filter(lambda f: f.strip() not in {"0", "1"})
        )
        objects = [*objects, ("cat", flag, "")]
    text = voc_xml(objects).encode()
    position = data.draw(st.integers(0, len(text) - 1))
    if how == "truncated":
        text = text[:position]
    if how == "encoding":
        codec = data.draw(WORD)
        text = f'<?xml version="1.0" encoding="x-no-{codec}"?>'.encode() + text
    if how in ("nul", "not utf-8"):
        text = text[:position] + (b"\x00" if how == "nul" else b"\xff") + text[position:]
    with scratch() as root:
        path = root / "000001.xml"
        path.write_bytes(text)
        fails_cleanly(lambda: voc.image_labels(path), path)


@SETTINGS
@given(objects=VOC_OBJECTS, mode=st.sampled_from(voc.DIFFICULT_MODES), data=st.data())
def test_voc_garbage_never_escapes(objects: list, mode: str, data: st.DataObject) -> None:
    text = corrupt(data, voc_xml(objects).encode())
    with scratch() as root:
        path = root / "000001.xml"
        path.write_bytes(text)
        parses_or_fails_cleanly(lambda: voc.image_labels(path, mode))


# ---------------------------------------------------------------------------------------------- COCO


@st.composite
def coco_instances(draw: st.DrawFn) -> tuple[dict, list[str], list[str], np.ndarray]:
    """(instances JSON, expected file names, category names in id order, (N, C) labels)."""
    category_ids = draw(st.lists(st.integers(1, 500), min_size=1, max_size=6, unique=True))
    names = draw(st.lists(NAME, min_size=len(category_ids), max_size=len(category_ids), unique=True))
    image_ids = draw(st.lists(st.integers(0, 10**12), max_size=6, unique=True))
    pairs = (
        draw(st.lists(st.tuples(st.sampled_from(image_ids), st.sampled_from(category_ids)), max_size=12))
        if image_ids
        else []
    )
    order = draw(st.permutations(range(len(category_ids))))
    files = [f"COCO_val2014_{i:012d}.jpg" for i in image_ids]
    instances = {
        "info": {"year": 2014, "version": "1.0"},
        "licenses": [],
        "images": [
            {"license": 1, "file_name": f, "height": 480, "width": 640, "id": i}
            for f, i in zip(files, image_ids, strict=True)
        ],
        "annotations": [
            {
                "segmentation": [[1.0, 2.0, 5.0, 6.0]],
                "area": 4.5,
                "iscrowd": n % 2,
                "image_id": i,
                "bbox": [1.0, 2.0, 4.0, 4.0],
                "category_id": c,
                "id": 1000 + n,
            }
            for n, (i, c) in enumerate(pairs)
        ],
        "categories": [{"supercategory": "thing", "id": category_ids[k], "name": names[k]} for k in order],
    }
    ranked = sorted(range(len(category_ids)), key=lambda k: category_ids[k])
    column = {category_ids[k]: j for j, k in enumerate(ranked)}
    labels = np.zeros((len(image_ids), len(category_ids)), dtype=np.int8)
    for image, category in pairs:
        labels[image_ids.index(image), column[category]] = 1
    return instances, files, [names[k] for k in ranked], labels


@SETTINGS
@given(instances=coco_instances())
def test_coco_round_trip(instances: tuple) -> None:
    data, files, names, labels = instances
    with scratch() as root:
        touch(root / "val2014", files)
        (root / "annotations").mkdir()
        (root / "annotations" / "instances_val2014.json").write_text(json.dumps(data))
        dataset = coco.load(root, "val")
        assert dataset.files.tolist() == files
        assert list(dataset.target_names) == names
        np.testing.assert_array_equal(dataset.targets_matrix(), labels)


COCO_BREAKAGE = (
    "unknown image",
    "unknown category",
    "missing field",
    "duplicate image id",
    "duplicate category id",
    "duplicate category name",
    "not a list",
    "entry type",
    "truncated",
    "deep nesting",
    "long number",
)


@SETTINGS
@given(instances=coco_instances(), how=st.sampled_from(COCO_BREAKAGE), data=st.data())
def test_coco_broken_instances_raise(instances: tuple, how: str, data: st.DataObject) -> None:
    instances, *_ = instances
    images, categories = instances["images"], instances["categories"]
    first = categories[0]
    some_image = {"id": 5, "file_name": "a.jpg"}
    if how == "unknown image":
        unknown = max([i["id"] for i in images], default=0) + 1
        instances["annotations"].append({"id": 1, "image_id": unknown, "category_id": first["id"]})
    if how == "unknown category":
        images.append(some_image)
        unknown = max(c["id"] for c in categories) + 1
        instances["annotations"].append({"id": 1, "image_id": 5, "category_id": unknown})
    if how == "missing field":
        del first[data.draw(st.sampled_from(["id", "name"]))]
    if how == "duplicate image id":
        images.extend([some_image, {**some_image, "file_name": "b.jpg"}])
    if how == "duplicate category id":
        categories.append({"id": first["id"], "name": first["name"] + "_again"})
    if how == "duplicate category name":
        categories.append({"id": max(c["id"] for c in categories) + 1, "name": first["name"]})
    if how == "not a list":
        instances[data.draw(st.sampled_from(["images", "annotations", "categories"]))] = {"0": {}}
    if how == "entry type":
        instances[data.draw(st.sampled_from(["images", "categories"]))].append(
            data.draw(NAME | st.integers())
        )
    text = json.dumps(instances)
    if how == "truncated":
        text = text[: data.draw(st.integers(0, len(text) - 1))]
    if how == "deep nesting":
        text = text.replace('"licenses": []', f'"licenses": {DEEP_JSON}')
    if how == "long number":
        text = text.replace('"year": 2014', f'"year": {LONG_NUMBER}')
    with scratch() as root:
        path = root / "instances_val2014.json"
        path.write_text(text)
        fails_cleanly(lambda: coco.parse_instances(path), path)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.floats() | NAME,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["id", "name", "image_id", "category_id", "file_name"]), inner, max_size=4
        )
    ),
    max_leaves=12,
)


@SETTINGS
@given(
    top=st.one_of(
        JSON_VALUES,
        st.fixed_dictionaries(
            {}, optional=dict.fromkeys(["images", "annotations", "categories"], JSON_VALUES)
        ),
    ),
    garbage=st.binary(max_size=100),
    use_garbage=st.booleans(),
)
def test_coco_garbage_never_escapes(top: object, garbage: bytes, use_garbage: bool) -> None:
    with scratch() as root:
        path = root / "instances_val2014.json"
        path.write_bytes(garbage if use_garbage else json.dumps(top).encode())
        parses_or_fails_cleanly(lambda: coco.parse_instances(path))


# -------------------------------------------------------------------------------------------- VG-500


@st.composite
def vg500_release(draw: st.DrawFn) -> dict:
    """The split's image list, every image's positive indices (the label file also holds images of the other
    split) and which image archive holds each."""
    names = [f"{n}.jpg" for n in draw(st.lists(st.integers(1, 10**7), max_size=10, unique=True))]
    return {
        "listed": names[: draw(st.integers(0, len(names)))],
        "positives": {n: draw(st.lists(st.integers(0, vg500.NUM_LABELS - 1), max_size=6)) for n in names},
        "second": {n: draw(st.booleans()) for n in names},
    }


def write_vg500(root: Path, release: dict) -> None:
    touch(root / vg500.IMAGE_FOLDERS[0], [])
    for name, second in release["second"].items():
        touch(root / vg500.IMAGE_FOLDERS[int(second)], [name])
    (root / "test_list_500.txt").write_text("".join(f"{n}\n" for n in release["listed"]))
    (root / vg500.LABEL_FILE).write_text(json.dumps(release["positives"]))


@SETTINGS
@given(release=vg500_release(), names=st.sampled_from([None, "names.txt", "names.json"]), prefix=NAME)
def test_vg500_round_trip(release: dict, names: str | None, prefix: str) -> None:
    label_names = [f"{prefix}_{i}" for i in range(vg500.NUM_LABELS)]
    with scratch() as root:
        write_vg500(root, release)
        if names is not None:
            text = json.dumps(label_names) if names.endswith(".json") else "\n".join(label_names)
            (root / names).write_text(text)
        dataset = vg500.load(root, "test", names=None if names is None else str(root / names))
        listed = release["listed"]
        folder = vg500.IMAGE_FOLDERS
        assert dataset.files.tolist() == [f"{folder[int(release['second'][n])]}/{n}" for n in listed]
        expected = np.zeros((len(listed), vg500.NUM_LABELS), dtype=np.int8)
        for row, name in enumerate(listed):
            expected[row, release["positives"][name]] = 1
        np.testing.assert_array_equal(dataset.targets_matrix(), expected)
        if names is not None:
            assert list(dataset.target_names) == label_names


VG500_BREAKAGE = (
    "not indexed",
    "not a list",
    "out of range",
    "not an int",
    "names count",
    "names twice",
    "truncated",
)


@SETTINGS
@given(
    release=vg500_release().filter(lambda r: r["listed"]), how=st.sampled_from(VG500_BREAKAGE), data=st.data()
)
def test_vg500_broken_release_raises(release: dict, how: str, data: st.DataObject) -> None:
    image = data.draw(st.sampled_from(release["listed"]))
    positives = release["positives"]
    if how == "not indexed":
        del positives[image]
    if how == "not a list":
        positives[image] = data.draw(st.integers() | NAME | st.none())
    if how == "out of range":
        positives[image].append(
            data.draw(st.integers(max_value=-1) | st.integers(min_value=vg500.NUM_LABELS))
        )
    if how == "not an int":
        positives[image].append(data.draw(st.sampled_from([True, 1.0, "3", None, [2]])))
    label_names = [f"label {i}" for i in range(vg500.NUM_LABELS)]
    if how == "names count":
        label_names = label_names[: data.draw(st.integers(0, vg500.NUM_LABELS - 1))]
    if how == "names twice":
        label_names[-1] = label_names[data.draw(st.integers(0, vg500.NUM_LABELS - 2))]
    with scratch() as root:
        write_vg500(root, release)
        (root / "names.txt").write_text("\n".join(label_names))
        label_file = root / vg500.LABEL_FILE
        if how == "truncated":
            text = label_file.read_bytes()
            label_file.write_bytes(text[: data.draw(st.integers(0, len(text) - 1))])
        at_fault = root / "names.txt" if how.startswith("names") else label_file
        fails_cleanly(lambda: vg500.load(root, "test", names=str(root / "names.txt")), at_fault)


# ------------------------------------------------------------------------------------------ NUS-WIDE

NUS_VALUES = st.sampled_from(["0", "1", "0", "1", " 1 ", "-1130179", "2", "-1"])


@st.composite
def nuswide_release(draw: st.DrawFn) -> dict:
    """Concepts, images (folder, file, on disk?), one value string per (image, concept), list style."""
    concepts = draw(st.lists(WORD, min_size=1, max_size=4, unique=True))
    count = draw(st.integers(0, 6))
    images = [
        (
            draw(st.sampled_from(["actor", "beach", "zebra"])),
            f"{i:04d}_{draw(st.integers(1, 10**9))}.jpg",
            draw(st.booleans()),
        )
        for i in range(count)
    ]
    return {
        "concepts": concepts,
        "images": images,
        "values": [[draw(NUS_VALUES) for _ in concepts] for _ in images],
        "style": draw(st.sampled_from(["C:\\ImageData\\Flickr\\{}\\{}", "{}\\{}", "{}/{}"])),
        "listed": draw(st.booleans()),
    }


def write_nuswide(root: Path, release: dict) -> None:
    touch(root / "Flickr", [f"{folder}/{file}" for folder, file, on_disk in release["images"] if on_disk])
    (root / "ImageList").mkdir()
    lines = [release["style"].format(folder, file) for folder, file, _ in release["images"]]
    (root / "ImageList" / "TrainImagelist.txt").write_text("".join(f"{line}\r\n" for line in lines))
    if release["listed"]:
        (root / "Concepts81.txt").write_text("\n".join(release["concepts"]) + "\n")
    labels = root / "Groundtruth" / "TrainTestLabels"
    labels.mkdir(parents=True)
    for column, concept in enumerate(release["concepts"]):
        text = "".join(f"{row[column]}\n" for row in release["values"])
        (labels / f"Labels_{concept}_Train.txt").write_text(text)


@SETTINGS
@given(release=nuswide_release())
def test_nuswide_round_trip(release: dict) -> None:
    with scratch() as root:
        write_nuswide(root, release)
        dataset = nuswide.load(root, "train")
        kept = [i for i, (_, _, on_disk) in enumerate(release["images"]) if on_disk]
        assert dataset.files.tolist() == [
            f"{release['images'][i][0]}/{release['images'][i][1]}" for i in kept
        ]
        concepts = release["concepts"] if release["listed"] else sorted(release["concepts"])
        assert list(dataset.target_names) == concepts
        order = [release["concepts"].index(c) for c in concepts]
        states = {"0": 0, "1": 1}
        expected = [[states.get(release["values"][i][c].strip(), -1) for c in order] for i in kept]
        np.testing.assert_array_equal(
            dataset.targets_matrix(), np.reshape(expected, (len(kept), len(concepts)))
        )


NUS_BREAKAGE = ("line count", "not an integer", "huge value", "missing file", "concept twice", "not utf-8")
NUS_BAD_VALUES = {
    "not an integer": st.sampled_from(["1.5", "yes", "0x1", "²", "1e3", "--1", ""]),
    "huge value": st.just("9" * 25),
}


@SETTINGS
@given(
    release=nuswide_release().filter(lambda r: r["images"]), how=st.sampled_from(NUS_BREAKAGE), data=st.data()
)
def test_nuswide_broken_release_raises(release: dict, how: str, data: st.DataObject) -> None:
    concepts, values = release["concepts"], release["values"]
    column = data.draw(st.integers(0, len(concepts) - 1))
    if how in NUS_BAD_VALUES:
        values[data.draw(st.integers(0, len(values) - 1))][column] = data.draw(NUS_BAD_VALUES[how])
    release["listed"] |= how in ("missing file", "concept twice")  # else a missing file is a missing concept
    with scratch() as root:
        write_nuswide(root, release)
        at_fault = root / "Groundtruth" / "TrainTestLabels" / f"Labels_{concepts[column]}_Train.txt"
        if how == "line count":
            lines = at_fault.read_text().splitlines()
            at_fault.write_text("\n".join(lines[1:] if data.draw(st.booleans()) else [*lines, "0"]) + "\n")
        if how == "missing file":
            at_fault.unlink()
        if how == "concept twice":
            at_fault = root / "Concepts81.txt"
            at_fault.write_text("\n".join([*concepts, concepts[column]]))
        if how == "not utf-8":
            at_fault.write_bytes(at_fault.read_bytes() + b"\xff\xfe\n")
        fails_cleanly(lambda: nuswide.load(root, "train"), at_fault)


@SETTINGS
@given(release=nuswide_release(), data=st.data())
def test_nuswide_garbage_never_escapes(release: dict, data: st.DataObject) -> None:
    with scratch() as root:
        write_nuswide(root, release)
        targets = [
            root / "ImageList" / "TrainImagelist.txt",
            *(root / "Groundtruth" / "TrainTestLabels").iterdir(),
        ]
        target = data.draw(st.sampled_from(sorted(targets)))
        target.write_bytes(corrupt(data, target.read_bytes()))
        parses_or_fails_cleanly(lambda: nuswide.load(root, "train"))


# ------------------------------------------------------------------------------------- CUB (CBM pickles)


@st.composite
def cbm_entries(draw: st.DrawFn) -> tuple[list[dict], list[str], list[int], np.ndarray, np.ndarray]:
    """CBM pickle entries (112 or all 312 attributes, certainty optional) and what they must parse to."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    entries, files, classes, concepts, certainty = [], [], [], [], []
    for number in range(draw(st.integers(0, 4))):
        label = draw(st.integers(0, cub.NUM_CLASSES - 1))
        folder, file = f"{label + 1:03d}.Bird_{label}", f"Bird_{number}_{draw(st.integers(0, 9999))}.jpg"
        size = draw(st.sampled_from([len(cub.CBM_CONCEPTS), len(cub.ATTRIBUTE_NAMES)]))
        values, certain = rng.integers(0, 2, size), rng.integers(1, 5, size)
        prefix = draw(
            st.sampled_from(["/juice/scr/CUB_200_2011/images/", "C:\\data\\CUB_200_2011\\images\\", ""])
        )
        separator = "\\" if "\\" in prefix else "/"
        as_numpy = draw(st.booleans())  # CBM wrote numpy ints; the restricted unpickler must accept them
        entry = {
            "id": number,
            "img_path": f"{prefix}{folder}{separator}{file}",
            "class_label": np.int64(label) if as_numpy else label,
            "attribute_label": [np.int64(v) if as_numpy else int(v) for v in values],
        }
        keep = list(cub.CBM_CONCEPTS) if size == len(cub.ATTRIBUTE_NAMES) else slice(None)
        if draw(st.booleans()):
            entry["attribute_certainty"] = [int(c) for c in certain]
            certainty.append(certain[keep])
        else:
            certainty.append(np.full(len(cub.CBM_CONCEPTS), 4))
        entries.append(entry)
        files.append(f"{folder}/{file}")
        classes.append(label)
        concepts.append(values[keep])
    shape = (len(entries), len(cub.CBM_CONCEPTS))
    return entries, files, classes, np.reshape(concepts, shape), np.reshape(certainty, shape)


@SETTINGS
@given(entries=cbm_entries(), protocol=st.integers(3, pickle.HIGHEST_PROTOCOL))  # CBM: Python 3's default
def test_cub_pickle_round_trip(entries: tuple, protocol: int) -> None:
    items, files, classes, concepts, certainty = entries
    with scratch() as root:
        path = root / "test.pkl"
        path.write_bytes(pickle.dumps(items, protocol=protocol))
        got_files, got_classes, got_concepts, got_certainty = cub.read_pickle(path)
        assert got_files == files
        assert got_classes.tolist() == classes
        np.testing.assert_array_equal(got_concepts, concepts)
        np.testing.assert_array_equal(got_certainty, certainty)


CBM_BREAKAGE = (
    "truncated",
    "not a list",
    "missing key",
    "class out of range",
    "huge class",
    "nan class",
    "wrong length",
    "bad value",
    "bad certainty",
    "huge attribute",
    "forbidden class",
    "nested",
)


@SETTINGS
@given(entries=cbm_entries().filter(lambda e: e[0]), how=st.sampled_from(CBM_BREAKAGE), data=st.data())
def test_cub_broken_pickle_raises(entries: tuple, how: str, data: st.DataObject) -> None:
    items = entries[0]
    entry = data.draw(st.sampled_from(items))
    replace = {
        "class out of range": ("class_label", data.draw(st.sampled_from([-1, cub.NUM_CLASSES, 10**6]))),
        "huge class": ("class_label", 2**70),
        "nan class": ("class_label", float("nan")),
        "wrong length": ("attribute_label", entry["attribute_label"][:-1]),
        "bad value": ("attribute_label", [2] * len(entry["attribute_label"])),
        "bad certainty": (
            "attribute_certainty",
            [data.draw(st.sampled_from([0, 5]))] * len(cub.CBM_CONCEPTS),
        ),
        "huge attribute": ("attribute_label", [2**70] * len(entry["attribute_label"])),
        "forbidden class": ("class_label", OrderedDict(a=1)),
        "nested": ("attribute_label", {"a": [1, 0]}),
    }
    if how in replace:
        key, value = replace[how]
        entry[key] = value
    if how == "missing key":
        del entry[data.draw(st.sampled_from(["img_path", "class_label", "attribute_label"]))]
    content = pickle.dumps({"entries": items} if how == "not a list" else items)
    if how == "truncated":
        content = content[: data.draw(st.integers(0, len(content) - 1))]
    with scratch() as root:
        path = root / "train.pkl"
        path.write_bytes(content)
        fails_cleanly(lambda: cub.read_pickle(path), path)


@SETTINGS
@given(entries=cbm_entries(), data=st.data())
def test_cub_pickle_garbage_never_escapes(entries: tuple, data: st.DataObject) -> None:
    content = corrupt(data, pickle.dumps(entries[0]))
    with scratch() as root:
        path = root / "train.pkl"
        path.write_bytes(content)
        parses_or_fails_cleanly(lambda: cub.read_pickle(path))


# ---------------------------------------------------------------------------------------- CUB (raw)


@st.composite
def cub_release(draw: st.DrawFn) -> dict:
    """Images (id, class 1..200, is_train); sparse votes (image, attribute) -> (present, certainty, ...)."""
    ids = draw(st.lists(st.integers(1, 10**6), min_size=1, max_size=5, unique=True))
    votes = draw(
        st.dictionaries(
            st.tuples(st.sampled_from(ids), st.integers(1, len(cub.ATTRIBUTE_NAMES))),
            st.tuples(st.integers(0, 1), st.integers(1, 4), st.floats(0, 100), st.booleans()),
            max_size=25,
        )
    )
    return {
        "images": [(i, draw(st.integers(1, cub.NUM_CLASSES)), draw(st.booleans())) for i in ids],
        "votes": votes,
        "shuffle": draw(st.randoms(use_true_random=False)),
    }


def write_cub_release(cub_dir: Path, release: dict) -> None:
    """The release's text files; the id tables in shuffled order (they are joined on the image id)."""
    (cub_dir / "attributes").mkdir(parents=True)
    images = release["images"]
    tables = {
        "images.txt": [f"{i} {c:03d}.Bird_{c}/Bird_{i}.jpg" for i, c, _ in images],
        "image_class_labels.txt": [f"{i} {c}" for i, c, _ in images],
        "train_test_split.txt": [f"{i} {int(t)}" for i, _, t in images],
    }
    for name, lines in tables.items():
        if name != "images.txt":
            release["shuffle"].shuffle(lines)
        (cub_dir / name).write_text("\n".join(lines) + "\n")
    votes = [
        f"{i} {a} {p} {c} {t:.3f}{' 0' if extra else ''}"  # a few lines of the release have an extra field
        for (i, a), (p, c, t, extra) in release["votes"].items()
    ]
    (cub_dir / "attributes" / "image_attribute_labels.txt").write_text("\n".join(votes) + "\n")


@SETTINGS
@given(release=cub_release())
def test_cub_raw_round_trip(release: dict) -> None:
    images = release["images"]
    labels = np.zeros((len(images), len(cub.ATTRIBUTE_NAMES)), dtype=np.int8)
    certainty = np.full_like(labels, cub.NOT_VISIBLE)
    row = {image_id: r for r, (image_id, _, _) in enumerate(images)}
    for (image_id, attribute), (present, certain, _, _) in release["votes"].items():
        labels[row[image_id], attribute - 1], certainty[row[image_id], attribute - 1] = present, certain
    with scratch() as root:
        write_cub_release(root / "CUB_200_2011", release)
        cub.read_release.cache_clear()  # cached by folder name, which a later example may reuse
        got = cub.read_release(str(root / "CUB_200_2011"))
    assert got["files"] == [f"{c:03d}.Bird_{c}/Bird_{i}.jpg" for i, c, _ in images]
    assert got["classes"].tolist() == [c - 1 for _, c, _ in images]
    assert got["is_train"].tolist() == [t for _, _, t in images]
    np.testing.assert_array_equal(got["labels"], labels)
    np.testing.assert_array_equal(got["certainty"], certainty)


CUB_RAW_BREAKAGE = {
    "attribute id": "{i} {bad} 1 3 1.5",
    "present": "{i} 5 {bad} 3 1.5",
    "certainty": "{i} 5 1 {bad} 1.5",
    "few fields": "{i} 5 1",
    "unknown image": "{unknown} 5 1 3 1.5",
}
BAD_NUMBERS = {
    "attribute id": st.sampled_from(["0", "-3", "313", "1.5", "x"]),
    "present": st.sampled_from(["2", "-1", "300", "1.0", "yes"]),
    "certainty": st.sampled_from(["0", "5", "300", "-1", "2.5"]),
}


@SETTINGS
@given(
    release=cub_release(),
    how=st.sampled_from(
        [*CUB_RAW_BREAKAGE, "no images", "class id", "missing id", "conflicting id", "not utf-8"]
    ),
    data=st.data(),
)
def test_cub_raw_broken_release_raises(release: dict, how: str, data: st.DataObject) -> None:
    images = release["images"]
    with scratch() as root:
        cub_dir = root / "CUB_200_2011"
        write_cub_release(cub_dir, release)
        at_fault = cub_dir / "attributes" / "image_attribute_labels.txt"
        if how in CUB_RAW_BREAKAGE:
            bad = data.draw(BAD_NUMBERS.get(how, st.just("")))
            unknown = max(i for i, _, _ in images) + 1
            line = CUB_RAW_BREAKAGE[how].format(i=images[0][0], bad=bad, unknown=unknown)
            at_fault.write_text(at_fault.read_text() + line + "\n")
        if how == "no images":
            for name in ("images.txt", "image_class_labels.txt", "train_test_split.txt"):
                (cub_dir / name).write_text("")
            at_fault.write_text("")
            at_fault = cub_dir / "images.txt"
        if how in ("class id", "missing id", "conflicting id"):
            at_fault = cub_dir / "image_class_labels.txt"
            lines = [f"{i} {c}" for i, c, _ in images]
            if how == "class id":
                lines[0] = f"{images[0][0]} {data.draw(st.sampled_from([0, cub.NUM_CLASSES + 1]))}"
            if how == "conflicting id":
                lines.append(f"{images[0][0]} {images[0][1] % cub.NUM_CLASSES + 1}")
            at_fault.write_text("\n".join(lines[1:] if how == "missing id" else lines) + "\n")
        if how == "not utf-8":
            at_fault = cub_dir / data.draw(st.sampled_from(["images.txt", "train_test_split.txt"]))
            at_fault.write_bytes(b"\xff" + at_fault.read_bytes())
        cub.read_release.cache_clear()
        fails_cleanly(lambda: cub.read_release(str(cub_dir)), at_fault)


# --------------------------------------------------------------------------------------- Open Images

OI_CONFIDENCE = st.sampled_from(["0", "1", "0.0", "1.0"])
OI_SOURCES = st.sampled_from(["verification", "crowdsource-verification", "machine"])


@st.composite
def openimages_release(draw: st.DrawFn) -> dict:
    """MIDs with display names, the trainable subset, label rows, and the CSV column order."""
    mids = draw(
        st.lists(st.from_regex(r"/m/0[0-9a-z]{1,5}", fullmatch=True), min_size=1, max_size=6, unique=True)
    )
    display = draw(
        st.lists(
            st.text(
                st.characters(exclude_categories=("C", "Z")) | st.sampled_from(' ,"'), min_size=1, max_size=10
            )
            .map(str.strip)
            .filter(bool),
            min_size=len(mids),
            max_size=len(mids),
            unique=True,
        )
    )
    images = draw(st.lists(st.text("0123456789abcdef", min_size=4, max_size=16), max_size=6, unique=True))
    rows = (
        draw(
            st.lists(
                st.tuples(st.sampled_from(images), st.sampled_from(mids), OI_CONFIDENCE, OI_SOURCES),
                max_size=20,
            )
        )
        if images
        else []
    )
    return {
        "mids": mids,
        "display": dict(zip(mids, display, strict=True)),
        "vocabulary": draw(st.lists(st.sampled_from(mids), min_size=1, unique=True)),
        "rows": rows,
        "columns": draw(st.permutations(["ImageID", "Source", "LabelName", "Confidence"])),
        "header": draw(st.booleans()),  # the descriptions file has a header from V6 on
    }


def csv_text(rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def write_openimages(root: Path, release: dict) -> Path:
    touch(root / "validation", [f"{image}.jpg" for image, *_ in release["rows"]])
    header = [["LabelName", "DisplayName"]] if release["header"] else []
    (root / "oidv6-class-descriptions.csv").write_text(
        csv_text(header + [list(p) for p in release["display"].items()])
    )
    (root / "oidv6-classes-trainable.txt").write_text("\n".join(release["vocabulary"]) + "\n")
    columns = release["columns"]
    fields = [{"ImageID": i, "LabelName": m, "Confidence": c, "Source": s} for i, m, c, s in release["rows"]]
    path = root / "validation-annotations-human-imagelabels.csv"
    path.write_text(csv_text([columns] + [[row[c] for c in columns] for row in fields]))
    return path


@SETTINGS
@given(release=openimages_release())
def test_openimages_round_trip(release: dict) -> None:
    vocabulary = release["vocabulary"]
    states: dict[str, dict[str, int]] = {}
    for image, mid, confidence, _ in release["rows"]:
        if mid in vocabulary:  # a pair listed twice keeps its positive verdict
            verdict = states.setdefault(image, {})
            verdict[mid] = max(verdict.get(mid, 0), int(float(confidence)))
    expected = [[states[i].get(m, -1) for m in vocabulary] for i in states]
    with scratch() as root:
        write_openimages(root, release)
        dataset = openimages.load(root, "validation")
    assert dataset.files.tolist() == list(states)
    assert list(dataset.target_names) == [release["display"][m] for m in vocabulary]
    np.testing.assert_array_equal(
        dataset.targets_matrix(), np.reshape(expected, (len(states), len(vocabulary)))
    )


@SETTINGS
@given(
    release=openimages_release().filter(lambda r: r["rows"]),
    how=st.sampled_from(["confidence", "short row", "header", "empty", "not utf-8", "description row"]),
    data=st.data(),
)
def test_openimages_broken_release_raises(release: dict, how: str, data: st.DataObject) -> None:
    with scratch() as root:
        path = write_openimages(root, release)
        lines = path.read_text().splitlines()
        if how == "confidence":
            bad = data.draw(st.text(max_size=4).filter(lambda c: c not in {"0", "1", "0.0", "1.0"}))
            row = {
                "ImageID": "abc1",
                "Source": "machine",
                "LabelName": release["vocabulary"][0],
                "Confidence": bad,
            }
            lines.append(csv_text([[row[c] for c in release["columns"]]]).rstrip("\n"))
        if how == "short row":
            lines.append(",".join(data.draw(st.lists(WORD, max_size=2))))
        if how == "header":
            dropped = data.draw(st.sampled_from(["ImageID", "LabelName", "Confidence"]))
            lines[0] = ",".join(c for c in release["columns"] if c != dropped)
        path.write_text("" if how == "empty" else "\n".join(lines) + "\n")
        if how == "not utf-8":
            path.write_bytes(path.read_bytes() + "é,x\n".encode("latin-1"))
        if how == "description row":
            path = root / "oidv6-class-descriptions.csv"
            path.write_text(path.read_text() + data.draw(WORD) + "\n")
        fails_cleanly(lambda: openimages.load(root, "validation"), path)


@SETTINGS
@given(release=openimages_release(), data=st.data())
def test_openimages_garbage_never_escapes(release: dict, data: st.DataObject) -> None:
    with scratch() as root:
        path = write_openimages(root, release)
        if data.draw(st.booleans()):
            path = root / "oidv6-class-descriptions.csv"
        path.write_bytes(corrupt(data, path.read_bytes()))
        parses_or_fails_cleanly(lambda: openimages.load(root, "validation"))


# ------------------------------------------------------------------------------- own data (CSV / JSONL)

OWN_NAME = (
    st.text(st.characters(categories=("L", "N")) | st.sampled_from("_./ "), min_size=1, max_size=8)
    .map(str.strip)
    .filter(bool)
)


@st.composite
def own_annotations(draw: st.DrawFn) -> dict:
    """Rows (image, {target: present?}, {extra: present?}), the file kind and how the vocabulary is given."""
    targets = draw(st.lists(OWN_NAME, min_size=1, max_size=5, unique=True))
    extras = draw(st.lists(OWN_NAME.filter(lambda n: n not in targets), max_size=3, unique=True))
    rows = [
        (
            f"photos/{number}.jpg",
            draw(st.dictionaries(st.sampled_from(targets), st.booleans())),
            draw(st.dictionaries(st.sampled_from(extras), st.booleans())) if extras else {},
        )
        for number in range(draw(st.integers(1, 5)))
    ]
    return {
        "targets": targets,
        "extras": extras,
        "rows": rows,
        "kind": draw(st.sampled_from(["csv", "jsonl"])),
        "vocabulary_file": draw(st.booleans()),
        "unlisted": draw(st.sampled_from(sorted(tabular.UNLISTED))),
        "columns": draw(st.permutations(["image", "labels", "extra"])),
        "as_list": draw(st.booleans()),
        "spelling": draw(st.randoms(use_true_random=False)),
    }


def mention(spec: dict[str, bool], spelling) -> list[str]:
    """Tokens as people write them: ``name`` / ``-name`` with stray spaces, sometimes repeated."""
    tokens = [
        name if present else spelling.choice(["-{}", "- {}", " -{} "]).format(name)
        for name, present in spec.items()
    ]
    return tokens + spelling.sample(tokens, k=min(len(tokens), spelling.randint(0, 1)))


def own_line(annotations: dict, record: dict) -> str:
    """One row in the file's own format: a JSON line, or CSV cells in the header's column order."""
    if annotations["kind"] == "jsonl":
        return json.dumps(record, ensure_ascii=annotations["spelling"].random() < 0.5)
    return csv_text([[record.get(column, "") for column in annotations["columns"]]]).rstrip("\n")


def write_own(folder: Path, annotations: dict) -> Path:
    """``train.csv`` or ``train.jsonl`` (and ``labels.txt``/``extras.txt`` when the vocabulary is given)."""
    touch(folder, [image for image, _, _ in annotations["rows"]])
    spelling, as_list, kind = annotations["spelling"], annotations["as_list"], annotations["kind"]
    lines = [" , ".join(c.capitalize() for c in annotations["columns"])] if kind == "csv" else []
    for image, labels, extra in annotations["rows"]:
        tokens = {"labels": mention(labels, spelling), "extra": mention(extra, spelling)}
        cells = {k: v if kind == "jsonl" and as_list else ";".join(v) for k, v in tokens.items()}
        lines += [own_line(annotations, {"image": image, **cells}), ""]  # blank lines are skipped
    path = folder / f"train.{kind}"
    path.write_text("\n".join(lines) + "\n")
    if annotations["vocabulary_file"]:
        (folder / "labels.txt").write_text("\n".join(annotations["targets"]) + "\n")
        (folder / "extras.txt").write_text("".join(f"{name}\n" for name in annotations["extras"]))
    return path


@SETTINGS
@given(annotations=own_annotations())
def test_own_data_round_trip(annotations: dict) -> None:
    rows = annotations["rows"]
    if annotations["vocabulary_file"]:
        targets, extras = annotations["targets"], annotations["extras"]
    else:
        targets = sorted({name for _, labels, _ in rows for name in labels})
        extras = sorted({name for _, _, extra in rows for name in extra})
    fill = tabular.UNLISTED[annotations["unlisted"]]
    with scratch() as root:
        path = write_own(root, annotations)
        dataset = tabular.load(path, "test", kind=annotations["kind"], unlisted=annotations["unlisted"])
    assert dataset.files.tolist() == [image for image, _, _ in rows]
    assert (list(dataset.target_names), list(dataset.extra_names)) == (targets, extras)
    for names, matrix, at in ((targets, dataset.targets_matrix(), 1), (extras, dataset.extras_matrix(), 2)):
        expected = [[int(row[at][n]) if n in row[at] else fill for n in names] for row in rows]
        np.testing.assert_array_equal(matrix, np.reshape(expected, (len(rows), len(names))))


OWN_BREAKAGE = (
    "field count",
    "header",
    "both signs",
    "lone minus",
    "unknown label",
    "empty image",
    "malformed json",
    "not an object",
    "labels type",
    "deep nesting",
    "long number",
    "not utf-8",
    "vocabulary twice",
    "target and extra",
)
CSV_ONLY = {"field count", "header"}
JSONL_ONLY = {"malformed json", "not an object", "labels type", "deep nesting", "long number"}


@SETTINGS
@given(annotations=own_annotations(), how=st.sampled_from(OWN_BREAKAGE), data=st.data())
def test_own_data_broken_file_raises(annotations: dict, how: str, data: st.DataObject) -> None:
    kind = "csv" if how in CSV_ONLY else "jsonl" if how in JSONL_ONLY else annotations["kind"]
    annotations = {**annotations, "kind": kind}
    annotations["vocabulary_file"] = how in ("unknown label", "vocabulary twice") or (
        annotations["vocabulary_file"] and how != "target and extra"
    )
    name = annotations["targets"][0]
    if how == "target and extra":  # one name in both columns: the label tokens would be ambiguous
        image, labels, extra = annotations["rows"][0]
        annotations["rows"][0] = (image, {**labels, name: True}, {**extra, name: False})
    unknown = data.draw(OWN_NAME.filter(lambda n: n not in annotations["targets"]))
    appended = {
        "both signs": {"image": "x.jpg", "labels": f"{name};-{name}"},
        "lone minus": {"image": "x.jpg", "labels": f"{name};-"},
        "unknown label": {"image": "x.jpg", "labels": f"{name};{unknown}"},
        "empty image": {"image": " ", "labels": name},
        "not an object": data.draw(st.sampled_from([[1, 2], "x.jpg", 3, None, {"labels": ["a"]}])),
        "labels type": {
            "image": "x.jpg",
            "labels": data.draw(st.sampled_from([3, None, {"a": 1}, ["a", 2]])),
        },
    }
    with scratch() as root:
        path = write_own(root, annotations)
        lines = path.read_text().splitlines()
        if how in appended:
            record = appended[how]
            lines.append(own_line(annotations, record) if isinstance(record, dict) else json.dumps(record))
        if how == "field count":
            lines.append(data.draw(st.sampled_from(["only.jpg", "a.jpg,b,c,d", "a.jpg,b,c,d,e"])))
        if how == "header":
            lines[0] = data.draw(st.sampled_from(["img,labels", "image,tags,extra", "labels", ""]))
        if how == "malformed json":
            lines[0] = lines[0][: data.draw(st.integers(1, len(lines[0]) - 1))]
        if how == "deep nesting":
            lines.append('{"image": "x.jpg", "labels": ' + DEEP_JSON + "}")
        if how == "long number":
            lines.append('{"image": "x.jpg", "labels": [], "size": ' + LONG_NUMBER + "}")
        path.write_text("\n".join(lines) + "\n")
        if how == "not utf-8":
            path.write_bytes(path.read_bytes() + b"x\xff.jpg\n")
        at_fault = path
        if how == "vocabulary twice":
            at_fault = root / "labels.txt"
            at_fault.write_text("\n".join([*annotations["targets"], name]))
        fails_cleanly(
            lambda: tabular.load(path, "train", kind=kind, unlisted=annotations["unlisted"]), at_fault
        )


@SETTINGS
@given(annotations=own_annotations(), data=st.data())
def test_own_data_garbage_never_escapes(annotations: dict, data: st.DataObject) -> None:
    with scratch() as root:
        path = write_own(root, annotations)
        path.write_bytes(corrupt(data, path.read_bytes()))
        kind, unlisted = annotations["kind"], annotations["unlisted"]
        parses_or_fails_cleanly(lambda: tabular.load(path, "train", kind=kind, unlisted=unlisted))


# ----------------------------------------------------------------------------------- --known and --option

KNOWN_NAME = (
    st.text(st.characters(categories=("L", "N")) | st.sampled_from("_-./ "), min_size=1, max_size=10)
    .map(str.strip)
    .filter(bool)
)
TRUTH_WORD = st.tuples(
    st.sampled_from(sorted(TRUE_WORDS | FALSE_WORDS)), st.sampled_from([str.lower, str.upper, str.title])
)
PAD = st.sampled_from(["", " ", "  \t"])


@SETTINGS
@given(
    spec=st.dictionaries(KNOWN_NAME, TRUTH_WORD, max_size=6),
    layout=st.lists(st.tuples(PAD, PAD, st.booleans(), st.booleans()), min_size=6, max_size=6),
    chunks=st.integers(1, 3),
    as_list=st.booleans(),
)
def test_known_spec_round_trip(spec: dict, layout: list, chunks: int, as_list: bool) -> None:
    items = []
    for (name, (word, case)), (left, right, repeat, empty) in zip(spec.items(), layout, strict=False):
        items += [f"{left}{name}{right}={left}{case(word)}{right}"] * (1 + repeat) + [" "] * empty
    texts = [",".join(items[i::chunks]) for i in range(chunks)]
    expected = {name: word in TRUE_WORDS for name, (word, _) in spec.items()}
    assert parse_spec(texts if as_list or chunks > 1 else texts[0]) == expected


@SETTINGS
@given(
    spec=st.dictionaries(KNOWN_NAME, st.sampled_from(["1", "0"]), max_size=3),
    how=st.sampled_from(["no equals", "no name", "bad value", "conflict"]),
    data=st.data(),
)
def test_known_spec_broken_raises(spec: dict, how: str, data: st.DataObject) -> None:
    items = [f"{name}={value}" for name, value in spec.items()]
    name = data.draw(KNOWN_NAME)
    bad_word = data.draw(
        st.text(max_size=6).filter(
            lambda w: not {",", "="} & set(w) and w.strip().lower() not in TRUE_WORDS | FALSE_WORDS
        )
    )
    broken = {
        "no equals": name,
        "no name": f" ={data.draw(TRUTH_WORD)[0]}",
        "bad value": f"{name}={bad_word}",
    }
    items += [f"{name}=1", f"{name}=no"] if how == "conflict" else [broken[how]]
    position = data.draw(st.integers(0, len(items)))
    with pytest.raises(CTranError, match="--known"):
        parse_spec(",".join(items[position:] + items[:position]))


@SETTINGS
@given(text=st.lists(st.text(max_size=30), max_size=3))
def test_known_spec_garbage_never_escapes(text: list[str]) -> None:
    parses_or_fails_cleanly(lambda: parse_spec(text))


BOOLISH = st.sampled_from(
    [
        (True, 1),
        (False, 0),
        (1, 1),
        (0, 0),
        (1.0, 1),
        (np.True_, 1),
        (np.int64(0), 0),
        (torch.tensor(True), 1),
    ]
)


@st.composite
def label_vocabulary(draw: st.DrawFn) -> tuple[list[str], list[str]]:
    names = draw(st.lists(KNOWN_NAME, min_size=1, max_size=8, unique=True))
    cut = draw(st.integers(0, len(names)))
    return names[:cut], names[cut:]


@SETTINGS
@given(vocabulary=label_vocabulary(), data=st.data())
def test_label_states_round_trip(vocabulary: tuple, data: st.DataObject) -> None:
    targets, extras = vocabulary
    known = data.draw(st.dictionaries(st.sampled_from(targets), BOOLISH)) if targets else {}
    extra = data.draw(st.dictionaries(st.sampled_from(extras), BOOLISH)) if extras else {}
    expected = [known[n][1] if n in known else -1 for n in targets]
    expected += [extra[n][1] if n in extra else -1 for n in extras]
    got = label_states(
        targets, extras, {n: v for n, (v, _) in known.items()}, {n: v for n, (v, _) in extra.items()}
    )
    assert got.tolist() == expected


@SETTINGS
@given(
    vocabulary=label_vocabulary().filter(lambda v: v[0] and v[1]),
    how=st.sampled_from(["unknown", "target as extra", "extra as known", "given twice", "bad value"]),
    data=st.data(),
)
def test_label_states_broken_raises(vocabulary: tuple, how: str, data: st.DataObject) -> None:
    targets, extras = vocabulary
    target, extra = data.draw(st.sampled_from(targets)), data.draw(st.sampled_from(extras))
    bad_value = data.draw(
        st.sampled_from(
            [2, -1, 0.5, float("nan"), "yes", "1", None, [1], np.array([1, 0]), torch.tensor([1, 0])]
        )
    )
    unknown = data.draw(KNOWN_NAME.filter(lambda n: n not in targets + extras))
    known, given_extra = {
        "unknown": ({unknown: True}, {}),
        "target as extra": ({}, {target: True}),
        "extra as known": ({extra: False}, {}),
        "given twice": ({target: True}, {target: True}),
        "bad value": ({target: bad_value}, {}),
    }[how]
    with pytest.raises(CTranError):
        label_states(targets, extras, known, given_extra)


@SETTINGS
@given(
    options=st.dictionaries(
        KNOWN_NAME.filter(lambda k: "=" not in k), st.text(max_size=12).map(str.strip), max_size=5
    ),
    pads=st.tuples(PAD, PAD),
)
def test_dataset_options_round_trip(options: dict, pads: tuple) -> None:
    left, right = pads
    assert dataset_options([f"{left}{k}{right}={left}{v}{right}" for k, v in options.items()]) == options


@SETTINGS
@given(pair=st.one_of(st.text().filter(lambda p: "=" not in p), st.from_regex(r"\s*=.*", fullmatch=True)))
def test_dataset_options_broken_raises(pair: str) -> None:
    with pytest.raises(CTranError, match="--option"):
        dataset_options(["difficult=negative", pair])


# ---------------------------------------------------------------------------------------- config overrides


def typed_keys(kind: type) -> list[str]:
    """Every ``section.key`` (or top-level key) whose annotation is exactly ``kind``."""
    keys = []
    for section, hint in typing.get_type_hints(Config).items():
        if hint is kind:
            keys.append(section)
        elif dataclasses.is_dataclass(hint):
            keys += [f"{section}.{key}" for key, h in typing.get_type_hints(hint).items() if h is kind]
    return keys


def config_value(config: Config, key: str) -> object:
    value = config
    for part in key.split("."):
        value = getattr(value, part)
    return value


def in_range(key: str, value: object) -> bool:
    """Whether ``value`` passes every mark (range, choices) of ``key``'s field."""
    try:
        for mark in field_marks().get(key, ()):
            mark.check(key, value)
    except CTranError:
        return False
    return True


INT_KEYS, FLOAT_KEYS, BOOL_KEYS = typed_keys(int), typed_keys(float), typed_keys(bool)
CONFIG_FIELDS = {
    f.name
    for section in (Config().model, Config().data, Config().train, Config().eval)
    for f in dataclasses.fields(section)
}
YAML_BOOLS = [
    ("true", True),
    ("false", False),
    ("True", True),
    ("FALSE", False),
    ("yes", True),
    ("off", False),
]
TYPED_OVERRIDES = st.one_of(
    st.tuples(st.sampled_from(INT_KEYS), st.integers(-(10**6), 10**12).map(lambda v: (str(v), v))),
    st.tuples(
        st.sampled_from(FLOAT_KEYS),
        st.floats(allow_nan=False, allow_infinity=False).map(lambda v: (repr(v), v)),
    ),
    st.tuples(st.sampled_from(FLOAT_KEYS), st.integers(-1000, 1000).map(lambda v: (str(v), float(v)))),
    st.tuples(st.sampled_from(BOOL_KEYS), st.sampled_from(YAML_BOOLS)),
)


@SETTINGS
@given(overrides=st.lists(TYPED_OVERRIDES, max_size=6, unique_by=lambda o: o[0]))
def test_config_overrides_round_trip(overrides: list) -> None:
    """Values in their field's range come back as given; one out of range fails, naming its key."""
    items = [f"{key}={text}" for key, (text, _) in overrides]
    bad = [key for key, (_, value) in overrides if not in_range(key, value)]
    if bad:
        with pytest.raises(CTranError) as refused:
            load_config(None, items)
        assert str(refused.value).startswith(tuple(f"{key} must be" for key in bad))
        return
    try:
        config = load_config(None, items)
    except CTranError as err:  # the joint checks: dim by heads, scale_size against image_size
        assert str(err).startswith(("model.dim (", "data.scale_size ("))
        return
    for key, (_, value) in overrides:
        got = config_value(config, key)
        assert got == value and type(got) is type(value), key


WRONG_VALUES = {
    "int": ["1.5", "abc", "true", "[1]", "{a: 1}", "", "~", "1e3", "2001-13-45", "!!int x", LONG_NUMBER],
    "float": ["abc", "true", "[1.0]", "{a: 1}", "", "1,5", "!!float abc", "!!timestamp 1"],
    "bool": ["1", "0", "maybe", "2.0", "[true]", "", "null"],
}


@SETTINGS
@given(
    override=st.one_of(
        st.tuples(st.sampled_from(INT_KEYS), st.sampled_from(WRONG_VALUES["int"])),
        st.tuples(st.sampled_from(FLOAT_KEYS), st.sampled_from(WRONG_VALUES["float"])),
        st.tuples(st.sampled_from(BOOL_KEYS), st.sampled_from(WRONG_VALUES["bool"])),
        st.tuples(st.sampled_from(INT_KEYS + FLOAT_KEYS + BOOL_KEYS), st.just(DEEP_YAML)),
        st.tuples(st.sampled_from(["model.", "data.", "train.", "eval.", "nosection."]), WORD)
        .filter(lambda pair: pair[1] not in CONFIG_FIELDS)
        .map(lambda pair: (pair[0] + pair[1], "1")),
        st.sampled_from(
            [("train..lr", "1"), ("train.lr.x", "1"), ("", "1"), ("model", "3"), ("seed.x", "1")]
        ),
    ),
    separator=st.sampled_from(["=", ""]),
)
def test_config_overrides_broken_raise(override: tuple, separator: str) -> None:
    key, value = override
    with pytest.raises(CTranError):
        load_config(None, [f"{key}{separator}{value}" if separator else key])


@SETTINGS
@given(key=st.sampled_from(INT_KEYS + FLOAT_KEYS + BOOL_KEYS + sorted(CHOICES)), raw=st.text(max_size=20))
def test_config_override_garbage_never_escapes(key: str, raw: str) -> None:
    try:
        config = load_config(None, [f"{key}={raw}"])
    except CTranError:
        return
    value = config_value(config, key)
    expected = int if key in INT_KEYS else float if key in FLOAT_KEYS else bool if key in BOOL_KEYS else str
    assert type(value) is expected
