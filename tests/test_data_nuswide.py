"""NUS-WIDE reader on a tiny tree in the image-list + per-concept label-file format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ctran.data import nuswide
from ctran.errors import CTranError

CONCEPTS = ("animal", "lake", "sky")
TRAIN = ["actor\\0001_2124494179.jpg", "C:\\ImageData\\Flickr\\beach\\0002_3.jpg", "beach\\0003_4.jpg"]
TRAIN_LABELS = {"animal": "1\n0\n0\n", "lake": "0\n-1130179\n1\n", "sky": "1\n1\n0\n"}


def make_nuswide(root: Path, flat: bool = False) -> Path:
    """Three training images (the second one missing on disk) and one test image."""
    (root / "ImageList").mkdir(parents=True)
    (root / "Groundtruth" / "TrainTestLabels").mkdir(parents=True)
    (root / "ImageList" / "TrainImagelist.txt").write_text("\n".join(TRAIN) + "\n")
    (root / "ImageList" / "TestImagelist.txt").write_text("actor\\0009_9.jpg\n")
    (root / "Concepts81.txt").write_text("\n".join(CONCEPTS) + "\n")
    for concept in CONCEPTS:
        folder = root / "Groundtruth" / "TrainTestLabels"
        (folder / f"Labels_{concept}_Train.txt").write_text(TRAIN_LABELS[concept])
        (folder / f"Labels_{concept}_Test.txt").write_text("0\n")
    for relative in ("actor/0001_2124494179.jpg", "beach/0003_4.jpg", "actor/0009_9.jpg"):
        path = root / "Flickr" / (relative.split("/")[1] if flat else relative)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (30, 20), (200, 30, 30)).save(path)
    return root


@pytest.mark.parametrize("flat", [False, True])
def test_missing_images_are_listed_and_skipped_corrupt_values_not_annotated(
    tmp_path: Path, flat: bool
) -> None:
    root = make_nuswide(tmp_path / "NUS-WIDE", flat)
    dataset = nuswide.load(tmp_path, "train")  # root above NUS-WIDE/ is accepted
    assert dataset.target_names == CONCEPTS
    expected_ids = (
        ["0001_2124494179.jpg", "0003_4.jpg"] if flat else ["actor/0001_2124494179.jpg", "beach/0003_4.jpg"]
    )
    assert [dataset.image_id(i) for i in range(len(dataset))] == expected_ids
    missing = "0002_3.jpg" if flat else "beach/0002_3.jpg"
    assert dataset.missing_files == [str(root / "Flickr" / missing)]
    np.testing.assert_array_equal(dataset.targets_matrix(), [[1, 0, 1], [0, 1, 0]])
    assert any("Labels_lake_Train.txt line 2: value -1130179 is neither 0 nor 1" in n for n in dataset.notes)
    assert any("1 of 3 listed images are missing on disk and were skipped" in n for n in dataset.notes)
    assert len(dataset) == 2 and dataset[1].index == 1


def test_corrupt_value_of_an_existing_image_is_not_annotated(tmp_path: Path) -> None:
    root = make_nuswide(tmp_path)
    Image.new("RGB", (30, 20)).save(root / "Flickr" / "beach" / "0002_3.jpg")
    np.testing.assert_array_equal(nuswide.load(root, "train").targets_matrix()[1], [0, -1, 1])


def test_label_file_errors_name_file_and_line(tmp_path: Path) -> None:
    root = make_nuswide(tmp_path)
    path = root / "Groundtruth" / "TrainTestLabels" / "Labels_sky_Train.txt"
    path.write_text("1\n1\n")
    with pytest.raises(
        CTranError, match=r"Labels_sky_Train\.txt: 2 values, expected 3 .*TrainImagelist\.txt"
    ):
        nuswide.load(root, "train")
    path.write_text("1\nyes\n0\n")
    with pytest.raises(CTranError, match=r"Labels_sky_Train\.txt line 2: expected 0 or 1, got 'yes'"):
        nuswide.load(root, "train")
    path.unlink()
    with pytest.raises(CTranError, match=r"missing .*Labels_sky_Train\.txt; expected layout"):
        nuswide.load(root, "train")


def test_concepts_from_file_names_and_missing_image_folder(tmp_path: Path) -> None:
    root = make_nuswide(tmp_path)
    (root / "Concepts81.txt").unlink()
    assert nuswide.load(root, "test").target_names == CONCEPTS  # sorted Labels_<concept>_Train.txt names
    (root / "Flickr").rename(root / "pictures")
    with pytest.raises(CTranError, match=r"no image folder \(Flickr, Images, images\) under"):
        nuswide.load(root, "test")
