"""Your own data: CSV and JSON-lines annotations with known negatives, extra labels and vocabularies."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ctran.data import tabular
from ctran.data.registry import load_splits
from ctran.errors import CTranError

TRAIN_CSV = """image,labels,extra
photos/beach.jpg,sea;sun;-dog,outdoor
photos/kitchen.jpg, food ; ;cat ,indoor;-outdoor
photos/street.jpg,,
"""
TEST_CSV = "image,labels,extra\nphotos/park.jpg,dog;tree,outdoor\n"


def make_folder(root: Path, kind: str = "csv") -> Path:
    (root / "photos").mkdir(parents=True)
    for name in ("beach", "kitchen", "street", "park"):
        Image.new("RGB", (32, 24), (200, 180, 40)).save(root / "photos" / f"{name}.jpg")
    if kind == "csv":
        (root / "train.csv").write_text(TRAIN_CSV)
        (root / "test.csv").write_text(TEST_CSV)
    else:
        train = [
            {"image": "photos/beach.jpg", "labels": ["sea", "sun", "-dog"], "extra": ["outdoor"]},
            {"image": "photos/kitchen.jpg", "labels": "food;cat", "extra": "indoor;-outdoor"},
            {"image": "photos/street.jpg"},
        ]
        (root / "train.jsonl").write_text("\n".join(json.dumps(r) for r in train) + "\n\n")
        test = {"image": "photos/park.jpg", "labels": ["dog", "tree"], "extra": ["outdoor"]}
        (root / "test.jsonl").write_text(json.dumps(test) + "\n")
    return root


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_negatives_extras_and_inferred_vocabulary(tmp_path: Path, kind: str) -> None:
    root = make_folder(tmp_path, kind)
    dataset = tabular.load(root, "train", kind=kind)
    assert dataset.target_names == ("cat", "dog", "food", "sea", "sun", "tree")  # every split's names, sorted
    assert dataset.extra_names == ("indoor", "outdoor")
    expected = [[0, 0, 0, 1, 1, 0], [1, 0, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]]  # unlisted -> negative
    np.testing.assert_array_equal(dataset.targets_matrix(), expected)
    np.testing.assert_array_equal(dataset.extras_matrix(), [[0, 1], [1, 0], [0, 0]])
    assert dataset.image_id(1) == "photos/kitchen.jpg" and dataset[1].extras.tolist() == [1, 0]
    partial = tabular.load(root, "train", kind=kind, unlisted="unknown")
    np.testing.assert_array_equal(
        partial.targets_matrix()[0], [-1, 0, -1, 1, 1, -1]
    )  # "-dog": known negative
    np.testing.assert_array_equal(partial.extras_matrix(), [[-1, 1], [1, 0], [-1, -1]])


def test_given_vocabulary_rejects_unknown_names_with_suggestions(tmp_path: Path) -> None:
    root = make_folder(tmp_path)
    (root / "labels.txt").write_text("cat\ndog\nfood\nsea\nsun\ntree\nboat\n")
    assert tabular.load(root, "test").target_names[-1] == "boat"  # labels.txt next to the files is used
    (root / "test.csv").write_text("image,labels\nphotos/park.jpg,dgo;tree\n")
    message = r"test\.csv line 2 \(vocabulary .*labels\.txt\): unknown label 'dgo'; did you mean 'dog'\?"
    with pytest.raises(CTranError, match=message):
        tabular.load(root, "test")
    vocabulary = tmp_path / "mine.txt"
    vocabulary.write_text("tree\n")
    with pytest.raises(CTranError, match=r"unknown label 'dgo'; no similar name is known"):
        tabular.load(root, "test", vocabulary=str(vocabulary))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "image,labels\nphotos/a.jpg,cat,dog\n",
            r"train\.csv line 2: expected 2 fields \(image,labels\), got 3",
        ),
        ("image,labels\n,cat\n", r"train\.csv line 2: the image path is empty"),
        (
            "image,labels\nphotos/a.jpg,cat;-cat\n",
            r"train\.csv line 2: label 'cat' is marked both present and",
        ),
        ("image,labels\nphotos/a.jpg,cat;-\n", r"train\.csv line 2: '-' must be followed by a label name"),
        ("file,tags\nphotos/a.jpg,cat\n", r"train\.csv line 1: expected a header with columns image,labels"),
    ],
)
def test_malformed_csv_rows_name_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "train.csv").write_text(text)
    with pytest.raises(CTranError, match=message):
        tabular.load(tmp_path, "train")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"image": "a.jpg"}\n{"image": "b.jpg", \n', r"train\.jsonl line 2: malformed JSON"),
        ('{"labels": ["cat"]}\n', r"train\.jsonl line 1: expected an object like"),
        (
            '{"image": "a.jpg", "labels": [1]}\n',
            r"train\.jsonl line 1: labels must be a ';'-separated string",
        ),
    ],
)
def test_malformed_jsonl_lines_name_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "train.jsonl").write_text(text)
    with pytest.raises(CTranError, match=message):
        tabular.load(tmp_path, "train", kind="jsonl")


def test_single_file_missing_split_and_held_out_validation(tmp_path: Path) -> None:
    root = make_folder(tmp_path)
    assert len(tabular.load(root / "test.csv", "anything")) == 1  # a single file is its own split
    with pytest.raises(CTranError, match=r"no val\.csv in .* \(found: test, train\)"):
        tabular.load(root, "val")
    with pytest.raises(
        CTranError, match=r"dataset root .*nowhere does not exist; expected a folder with train\.csv"
    ):
        tabular.load(tmp_path / "nowhere", "train")
    splits = load_splits("csv", root, image_size=32, scale_size=None, val_fraction=0.34, seed=1)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [2, 1, 1]
    with pytest.raises(
        CTranError, match=r"training on csv data needs a folder with train\.csv and test\.csv"
    ):
        load_splits("csv", root / "train.csv")
