"""Pascal VOC 2007 reader on a tiny devkit tree in the exact published layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ctran.data import voc
from ctran.errors import CTranError

OBJECT = (
    "<object><name>{name}</name><pose>Left</pose><truncated>0</truncated><difficult>{difficult}</difficult>"
    "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object>"
)
ANNOTATIONS = {
    "000005": [("chair", 0), ("chair", 1), ("diningtable", 1)],  # diningtable only difficult
    "000007": [("car", 0)],
    "000009": [("horse", 0), ("person", 0), ("person", 1)],
    "000012": [("car", 1)],  # car only difficult
}


def make_voc(root: Path) -> Path:
    """VOCdevkit/VOC2007 with 4 images: 3 in trainval, 1 in test."""
    base = root / "VOCdevkit" / "VOC2007"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (base / sub).mkdir(parents=True)
    for i, (image_id, objects) in enumerate(ANNOTATIONS.items()):
        Image.new("RGB", (40, 30), (60 * i, 90, 120)).save(base / "JPEGImages" / f"{image_id}.jpg")
        body = "".join(OBJECT.format(name=n, difficult=d) for n, d in objects)
        xml = f"<annotation><folder>VOC2007</folder><filename>{image_id}.jpg</filename>{body}</annotation>"
        (base / "Annotations" / f"{image_id}.xml").write_text(xml)
    (base / "ImageSets/Main/trainval.txt").write_text("000005\n000007\n000009\n")
    (base / "ImageSets/Main/test.txt").write_text("000012\n")
    return base


def _row(**states: int) -> list[int]:
    row = [0] * len(voc.VOC_CLASSES)
    for name, value in states.items():
        row[voc.VOC_CLASSES.index(name)] = value
    return row


@pytest.fixture()
def devkit(tmp_path: Path) -> Path:
    make_voc(tmp_path)
    return tmp_path / "VOCdevkit"


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("ignore", [_row(chair=1, diningtable=-1), _row(car=1), _row(horse=1, person=1)]),
        ("negative", [_row(chair=1), _row(car=1), _row(horse=1, person=1)]),
        ("positive", [_row(chair=1, diningtable=1), _row(car=1), _row(horse=1, person=1)]),
    ],
)
def test_trainval_labels_for_each_difficult_mode(devkit: Path, mode: str, expected: list) -> None:
    dataset = voc.load(devkit, "trainval", difficult=mode)
    assert dataset.target_names == voc.VOC_CLASSES
    assert [dataset.image_id(i) for i in range(len(dataset))] == ["000005.jpg", "000007.jpg", "000009.jpg"]
    np.testing.assert_array_equal(dataset.targets_matrix(), np.array(expected, dtype=np.int8))
    assert dataset.targets_matrix().dtype == np.int8


def test_root_may_be_any_level_of_the_devkit(devkit: Path) -> None:
    for root in (devkit.parent, devkit, devkit / "VOC2007"):
        assert len(voc.load(root, "test")) == 1
    sample = voc.load(devkit, "test")[0]
    assert sample.targets.tolist() == _row(car=-1)  # the only car is difficult: not annotated, never scored
    assert sample.image.shape == (3, 576, 576) and sample.extras.shape == (0,)


def test_malformed_xml_names_file_and_line(devkit: Path) -> None:
    path = devkit / "VOC2007/Annotations/000007.xml"
    path.write_text("<annotation>\n<object><name>car</name>\n</annotation>")
    with pytest.raises(CTranError, match=r"000007\.xml line 3: malformed XML"):
        voc.load(devkit, "trainval")


def test_unknown_class_suggests_close_names(devkit: Path) -> None:
    path = devkit / "VOC2007/Annotations/000009.xml"
    path.write_text(path.read_text().replace("<name>horse</name>", "<name>hrose</name>"))
    with pytest.raises(CTranError, match=r"000009\.xml: unknown VOC class 'hrose'; did you mean 'horse'"):
        voc.load(devkit, "trainval")


def test_missing_files_and_folders_name_the_path_and_layout(devkit: Path, tmp_path: Path) -> None:
    (devkit / "VOC2007/Annotations/000012.xml").unlink()
    with pytest.raises(CTranError, match=r"missing .*000012\.xml; expected layout: VOCdevkit/VOC2007/.*test"):
        voc.load(devkit, "test")
    (devkit / "VOC2007/ImageSets/Main/test.txt").unlink()
    with pytest.raises(CTranError, match=r"missing .*test\.txt.*VOCtest_06-Nov-2007\.tar"):
        voc.load(devkit, "test")
    with pytest.raises(CTranError, match=r"no Annotations found under .*elsewhere; expected layout"):
        (tmp_path / "elsewhere").mkdir()
        voc.load(tmp_path / "elsewhere", "trainval")
    with pytest.raises(CTranError, match="difficult must be one of ignore, negative, positive"):
        voc.load(devkit, "trainval", difficult="maybe")
