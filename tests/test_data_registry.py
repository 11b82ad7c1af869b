"""The dataset registry, held-out validation splits, the bad-image policy, and evaluation on a real format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import ctran
from ctran.data import voc
from ctran.data.images import collate_samples
from ctran.data.registry import FORMATS, build_dataset, default_split, held_out, load_splits
from ctran.errors import CTranError
from ctran.training.evaluation import Setting, collect_scores, evaluate
from test_data_voc import make_voc


def test_formats_and_default_splits() -> None:
    assert FORMATS == (
        "voc",
        "coco",
        "vg500",
        "nuswide",
        "cub",
        "openimages",
        "csv",
        "jsonl",
        "digits",
        "shards",
    )
    assert default_split("voc", "test") == "test" and default_split("voc", "train") == "trainval"
    assert default_split("coco", "test") == "val" and default_split("openimages", "val") == "validation"
    with pytest.raises(CTranError, match="coco has no validation split of its own"):
        default_split("coco", "val")
    with pytest.raises(CTranError, match="unknown dataset format 'pascal'; expected one of voc, coco"):
        default_split("pascal", "test")


def test_options_and_splits_are_checked(tmp_path: Path) -> None:
    make_voc(tmp_path)
    with pytest.raises(CTranError, match=r"voc has no option 'difficulty' \(its options: difficult, year\)"):
        build_dataset("voc", tmp_path, "test", difficulty="negative")
    with pytest.raises(
        CTranError, match="voc has no split 'val2007'; its splits are trainval, test, train, val"
    ):
        build_dataset("voc", tmp_path, "val2007")


def test_held_out_validation_is_deterministic_and_disjoint(tmp_path: Path) -> None:
    make_voc(tmp_path)
    train, val = held_out(100, 0.1, seed=7)
    assert len(val) == 10 and not set(train) & set(val) and sorted([*train, *val]) == list(range(100))
    assert np.array_equal(held_out(100, 0.1, seed=7)[1], val) and not np.array_equal(
        held_out(100, 0.1, 8)[1], val
    )
    splits = load_splits("voc", tmp_path, image_size=32, scale_size=None, val_fraction=0.34, seed=0)
    ids = {name: {d.image_id(i) for i in range(len(d))} for name, d in splits.items()}
    assert len(ids["val"]) == 1 and len(ids["train"]) == 2 and not ids["val"] & ids["train"]
    assert ids["test"] == {"000012.jpg"}  # the test split is never used for validation
    assert splits["val"][0].image.shape == (3, 32, 32) and splits["val"][0].index == 0


def test_split_roles_can_be_overridden(tmp_path: Path) -> None:
    base = make_voc(tmp_path)
    (base / "ImageSets/Main/train.txt").write_text("000005\n000007\n")
    (base / "ImageSets/Main/val.txt").write_text("000009\n")
    splits = load_splits(
        "voc",
        tmp_path,
        image_size=32,
        scale_size=40,
        crop_sizes=(36,),
        splits={"train": "train", "val": "val"},
    )
    assert [len(splits[s]) for s in ("train", "val", "test")] == [2, 1, 1]
    assert splits["train"][0].image.shape == (3, 32, 32) and splits["val"].image_id(0) == "000009.jpg"
    with pytest.raises(CTranError, match="split roles are train, val and test, got 'dev'"):
        load_splits("voc", tmp_path, splits={"dev": "val"})


def test_digits_format() -> None:
    dataset = build_dataset("digits", None, "val", seed=0, size=12)
    assert (
        len(dataset) == 12
        and dataset.targets_matrix().shape == (12, 16)
        and dataset.image_id(3) == "val-00003"
    )
    assert dataset[0].image.shape == (3, 48, 48) and dataset.missing_files == []
    splits = load_splits("digits", None, size=5)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [5, 5, 5]


def test_bad_images_are_skipped_or_fatal(tmp_path: Path) -> None:
    base = make_voc(tmp_path)
    (base / "JPEGImages" / "000007.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    dataset = build_dataset("voc", tmp_path, "trainval", image_size=32, scale_size=None)
    with pytest.warns(UserWarning, match=r"skipping unreadable image .*000007\.jpg"):
        assert dataset[1] is None
    assert dataset.bad_images[0][0].endswith("000007.jpg")
    batch = collate_samples([dataset[0], None, dataset[2]])
    assert batch.image.shape == (2, 3, 32, 32) and batch.index.tolist() == [0, 2]
    assert collate_samples([None, None]) is None
    strict = build_dataset("voc", tmp_path, "trainval", on_bad_image="fail", image_size=32, scale_size=None)
    with pytest.raises(
        CTranError, match=r"cannot read image .*000007\.jpg: (OSError|UnidentifiedImageError)"
    ):
        strict[1]


def test_missing_images_are_listed_and_left_out_at_construction(tmp_path: Path) -> None:
    """A file that is not there never reaches a batch (a process of a DDP run would wait on the others)."""
    base = make_voc(tmp_path)
    (base / "JPEGImages" / "000009.jpg").unlink()
    with pytest.warns(UserWarning, match=r"1 of 3 listed images are missing on disk, e.g. .*000009\.jpg"):
        dataset = build_dataset("voc", tmp_path, "trainval", image_size=32, scale_size=None)
    assert dataset.missing_files == [str(base / "JPEGImages" / "000009.jpg")]
    assert [dataset.image_id(i) for i in range(len(dataset))] == ["000005.jpg", "000007.jpg"]
    assert dataset.targets_matrix().shape == (2, 20) and dataset[1].targets[voc.VOC_CLASSES.index("car")] == 1
    assert dataset.subset([1]).missing_files == dataset.missing_files  # a held-out split: its listing's
    with pytest.raises(CTranError, match=r"1 of 3 listed images are missing on disk, e.g. .*000009\.jpg"):
        build_dataset("voc", tmp_path, "trainval", on_bad_image="fail")


def test_partial_label_evaluation_on_voc_with_unannotated_entries(tmp_path: Path) -> None:
    make_voc(tmp_path)
    dataset = build_dataset("voc", tmp_path, "trainval", image_size=32, scale_size=None)
    torch.manual_seed(0)
    model = ctran.build_model(20, backbone="small_cnn", dim=32, layers=1, heads=2)
    loader = DataLoader(dataset, batch_size=2, collate_fn=collate_samples)
    results = evaluate(model, loader, [Setting(), Setting(known_fraction=0.5)], seed=0)
    assert set(results) == {"regular", "partial"} and set(results["partial"]) == {"0.5"}
    regular, partial = results["regular"], results["partial"]["0.5"]
    assert regular["n_images"] == 3 and regular["n_labels_scored"] == 4  # chair, car, horse, person
    assert 0 <= partial["mAP"] <= 100 and partial["n_images"] == 3
    _, truth, scored, _ = collect_scores(model, loader, [Setting(known_fraction=0.5)], seed=0)[
        Setting(known_fraction=0.5)
    ]
    table = voc.VOC_CLASSES.index("diningtable")
    assert truth[0, table] == -1 and not scored[0, table]  # only a difficult table: never scored
    # int(0.5 * A) of each image's A annotated labels revealed: image 0 has 19 (the table is not), so 9 of
    # them are revealed and 10 scored; the others have all 20, 10 revealed
    assert scored.sum(dim=1).tolist() == [10, 10, 10]


@pytest.mark.parametrize("flip", [True, False])
def test_data_flip_switches_the_training_flip_through_the_config(tmp_path: Path, flip: bool) -> None:
    """``data.flip=false`` (digits, text: a mirror changes what they are) trains on unmirrored images."""
    from torchvision.transforms import v2

    from ctran.config import load_config
    from ctran.training.run import build_datasets

    make_voc(tmp_path)
    overrides = ["data.format=voc", f"data.root={tmp_path}", "data.image_size=32", f"data.flip={flip}"]
    splits = build_datasets(load_config(None, overrides))

    def flips(dataset) -> bool:
        return any(isinstance(step, v2.RandomHorizontalFlip) for step in dataset.transform.transforms)

    assert flips(splits["train"]) == flip and not flips(splits["val"]) and not flips(splits["test"])
