"""Visual Genome 500 reader on a tiny tree in the SSGRL release format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ctran.data import vg500
from ctran.errors import CTranError

LABELS = {"1.jpg": [0, 499], "2.jpg": [], "3.jpg": [7, 7, 12], "4.jpg": [3]}


def make_vg(root: Path) -> Path:
    base = root / "VG"
    (base / "VG_100K").mkdir(parents=True)
    (base / "VG_100K_2").mkdir()
    for name in ("1.jpg", "2.jpg", "3.jpg"):
        Image.new("RGB", (30, 30), (10, 200, 30)).save(base / "VG_100K" / name)
    Image.new("RGB", (30, 30), (10, 20, 230)).save(base / "VG_100K_2" / "4.jpg")  # second image archive
    (base / "train_list_500.txt").write_text("1.jpg\n2.jpg\n3.jpg\n")
    (base / "test_list_500.txt").write_text("4.jpg\n")
    (base / "vg_category_500_labels_index.json").write_text(json.dumps(LABELS))
    return base


def test_labels_and_image_folders(tmp_path: Path) -> None:
    make_vg(tmp_path)
    train = vg500.load(tmp_path, "train")  # root above VG/ is accepted
    assert len(train.target_names) == 500 and train.target_names[7] == "label_007"
    expected = np.zeros((3, 500), dtype=np.int8)
    expected[0, [0, 499]] = 1
    expected[2, [7, 12]] = 1
    np.testing.assert_array_equal(train.targets_matrix(), expected)
    test = vg500.load(tmp_path / "VG", "test")
    assert test.image_id(0) == "VG_100K_2/4.jpg" and test.missing_files == []
    assert test[0].targets.nonzero().flatten().tolist() == [3]


def test_names_file(tmp_path: Path) -> None:
    base = make_vg(tmp_path)
    names = tmp_path / "names.txt"
    names.write_text("\n".join(f"object {i}" for i in range(500)))
    assert vg500.load(base, "train", names=str(names)).target_names[499] == "object 499"
    names.write_text("man\nwoman\n")
    with pytest.raises(CTranError, match=r"names\.txt: expected 500 label names, found 2"):
        vg500.load(base, "train", names=str(names))


def test_bad_label_index_and_unlisted_image(tmp_path: Path) -> None:
    base = make_vg(tmp_path)
    path = base / "vg_category_500_labels_index.json"
    path.write_text(json.dumps({**LABELS, "3.jpg": [500]}))
    with pytest.raises(CTranError, match=r"labels of '3\.jpg' must be indices in 0\.\.499"):
        vg500.load(base, "train")
    path.write_text(json.dumps({"1.jpg": [1]}))
    with pytest.raises(CTranError, match=r"no entry for image '2\.jpg' of train_list_500\.txt"):
        vg500.load(base, "train")


def test_missing_list_names_the_layout(tmp_path: Path) -> None:
    base = make_vg(tmp_path)
    (base / "test_list_500.txt").unlink()
    with pytest.raises(CTranError, match=r"missing .*test_list_500\.txt; expected layout: \{VG_100K/"):
        vg500.load(base, "test")
    with pytest.raises(CTranError, match=r"no vg_category_500_labels_index\.json found under"):
        vg500.load(tmp_path / "VG" / "VG_100K", "test")
