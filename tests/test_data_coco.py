"""MS-COCO 2014 reader on a tiny tree with real-format instances files (category ids with gaps)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ctran.data import coco
from ctran.errors import CTranError

CATEGORIES = [  # out of id order in the file, with gaps (ids run 1..90 in COCO)
    {"supercategory": "indoor", "id": 90, "name": "toothbrush"},
    {"supercategory": "person", "id": 1, "name": "person"},
    {"supercategory": "vehicle", "id": 3, "name": "car"},
]
IMAGES = [
    {"id": 9, "file_name": "COCO_val2014_000000000009.jpg", "width": 40, "height": 30},
    {"id": 25, "file_name": "COCO_val2014_000000000025.jpg", "width": 40, "height": 30},
    {"id": 30, "file_name": "COCO_val2014_000000000030.jpg", "width": 40, "height": 30},
]
ANNOTATIONS = [
    {"id": 1, "image_id": 9, "category_id": 3, "iscrowd": 0, "bbox": [1, 1, 5, 5], "area": 25},
    {"id": 2, "image_id": 9, "category_id": 3, "iscrowd": 0, "bbox": [8, 1, 5, 5], "area": 25},
    {"id": 3, "image_id": 9, "category_id": 90, "iscrowd": 0, "bbox": [1, 9, 5, 5], "area": 25},
    {"id": 4, "image_id": 30, "category_id": 1, "iscrowd": 1, "bbox": [1, 1, 20, 20], "area": 400},
]


def make_coco(root: Path) -> Path:
    (root / "annotations").mkdir(parents=True)
    (root / "val2014").mkdir()
    for i, image in enumerate(IMAGES):
        Image.new("RGB", (40, 30), (80 * i, 40, 200)).save(root / "val2014" / image["file_name"])
    data = {
        "info": {},
        "licenses": [],
        "images": IMAGES,
        "annotations": ANNOTATIONS,
        "categories": CATEGORIES,
    }
    (root / "annotations" / "instances_val2014.json").write_text(json.dumps(data, indent=1))
    return root


def test_categories_map_to_id_order_and_empty_images_are_kept(tmp_path: Path) -> None:
    dataset = coco.load(make_coco(tmp_path), "val")
    assert dataset.target_names == ("person", "car", "toothbrush")  # ids 1, 3, 90 -> 0, 1, 2
    expected = [[0, 1, 1], [0, 0, 0], [1, 0, 0]]  # crowd regions count; image 25 has no object
    np.testing.assert_array_equal(dataset.targets_matrix(), expected)
    assert dataset.image_id(0) == "COCO_val2014_000000000009.jpg"
    assert any("1 images have no annotated object: kept" in note for note in dataset.notes)
    assert dataset[1].targets.tolist() == [0, 0, 0]


def test_images_folder_may_sit_under_images(tmp_path: Path) -> None:
    root = make_coco(tmp_path)
    (root / "images").mkdir()
    (root / "val2014").rename(root / "images" / "val2014")
    assert len(coco.load(root, "val")) == 3


def test_malformed_json_names_file_and_line(tmp_path: Path) -> None:
    root = make_coco(tmp_path)
    path = root / "annotations" / "instances_val2014.json"
    path.write_text('{\n  "images": [\n    {"id": 1,}\n  ]\n}')
    with pytest.raises(CTranError, match=r"instances_val2014\.json line 3: malformed JSON"):
        coco.load(root, "val")


def test_annotation_of_unknown_category_is_an_error(tmp_path: Path) -> None:
    root = make_coco(tmp_path)
    path = root / "annotations" / "instances_val2014.json"
    data = json.loads(path.read_text())
    data["annotations"][1]["category_id"] = 91
    path.write_text(json.dumps(data))
    with pytest.raises(
        CTranError, match=r"instances_val2014\.json: annotation #1 \(id 2\) refers to no known"
    ):
        coco.load(root, "val")


def test_missing_folder_and_file_name_the_path(tmp_path: Path) -> None:
    root = make_coco(tmp_path)
    with pytest.raises(
        CTranError, match=r"missing .*instances_train2014\.json; expected layout: \{train2014/"
    ):
        coco.load(root, "train")
    (root / "val2014").rename(root / "elsewhere")
    with pytest.raises(CTranError, match=r"missing .*val2014; expected layout"):
        coco.load(root, "val")
