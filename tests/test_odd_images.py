"""Odd and broken image files: decoded when they are images, skipped and listed (or fatal) when not."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ctran.cli import main
from ctran.data.registry import build_dataset
from ctran.data.transforms import load_image
from ctran.errors import CTranError
from ctran.training.loaders import eval_loader

GOOD = ("rgb.jpg", "cmyk.jpg", "deep.png", "palette.png", "rotated.jpg", "grey.png")
BAD = ("truncated.jpg", "empty.jpg", "text.jpg", "huge.png")


def _write_images(folder: Path) -> None:
    """One file per case; the bad ones are what real datasets contain."""
    Image.new("RGB", (40, 30), (200, 30, 30)).save(folder / "rgb.jpg", quality=95)
    Image.new("CMYK", (40, 30), (0, 255, 255, 0)).save(folder / "cmyk.jpg", quality=95)  # red in CMYK
    deep = np.full((30, 40), 65535 // 2, dtype=np.uint16)
    Image.fromarray(deep).save(folder / "deep.png")  # mode I;16
    palette = Image.new("P", (40, 30), 0)
    palette.putpalette([255, 0, 0] + [0, 0, 0] * 255)
    palette.info["transparency"] = 0  # fully transparent: composed over white
    palette.save(folder / "palette.png", transparency=0)
    rotated = Image.new("RGB", (40, 30), (30, 30, 200))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees on display
    rotated.save(folder / "rotated.jpg", exif=exif.tobytes())
    Image.new("L", (40, 30), 128).save(folder / "grey.png")
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buffer, format="JPEG")
    (folder / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 3])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("not an image at all\n")
    Image.new("L", (400, 400), 0).save(folder / "huge.png")  # over the (lowered) bomb limit below


@pytest.fixture
def odd_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50_000)  # 400x400 = 160k > 2 x 50k: a "bomb"
    _write_images(tmp_path)
    rows = ["image,labels"] + [f"{name},{'a' if i % 2 else 'b'}" for i, name in enumerate(GOOD + BAD)]
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "test.csv").write_text("\n".join(rows) + "\n")
    return tmp_path


def test_odd_but_valid_images_decode(odd_folder: Path) -> None:
    rgb = {name: np.asarray(load_image(odd_folder / name)) for name in GOOD}
    assert all(image.ndim == 3 and image.shape[2] == 3 for image in rgb.values())
    assert rgb["cmyk.jpg"][0, 0].tolist()[0] > 200 and rgb["cmyk.jpg"][0, 0].tolist()[1] < 60
    assert abs(int(rgb["deep.png"][0, 0, 0]) - 127) <= 1  # 16-bit mid-grey -> 8-bit mid-grey
    assert rgb["palette.png"][0, 0].tolist() == [255, 255, 255]  # transparent over white
    assert rgb["rotated.jpg"].shape[:2] == (40, 30)  # EXIF orientation applied: 40 x 30 -> 30 x 40
    assert rgb["grey.png"][0, 0].tolist() == [128, 128, 128]


def test_bad_images_are_skipped_counted_and_reported(odd_folder: Path) -> None:
    dataset = build_dataset("csv", odd_folder / "train.csv", "train", image_size=32, scale_size=None)
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        samples = [dataset[i] for i in range(len(dataset))]
    assert [s is None for s in samples] == [False] * len(GOOD) + [True] * len(BAD)
    assert sorted(Path(path).name for path, _ in dataset.bad_images) == sorted(BAD)
    assert all(
        s.image.shape == (3, 32, 32) and torch.isfinite(s.image).all() for s in samples if s is not None
    )


def test_fail_policy_names_the_file(odd_folder: Path) -> None:
    dataset = build_dataset("csv", odd_folder / "train.csv", "train", image_size=32, on_bad_image="fail")
    with pytest.raises(CTranError, match="truncated.jpg"):
        dataset[len(GOOD)]


def test_training_survives_bad_images_and_lists_them(odd_folder: Path, tmp_path_factory) -> None:
    from ctran.cli import main

    out = tmp_path_factory.mktemp("run")
    args = ["train", "--config", "digits-tiny", "--data", "csv", "--data-root", str(odd_folder)]
    args += ["--out", str(out), "--quiet", "data.image_size=32", "data.scale_size=null", "data.num_workers=0"]
    args += ["train.epochs=2", "train.batch_size=4", "eval.batch_size=4", "data.val_fraction=0.3"]
    with pytest.warns(UserWarning):
        assert main(args) == 0
    skipped = json.loads((out / "skipped_images.json").read_text())
    assert skipped["count"] >= 1 and {Path(e["path"]).name for e in skipped["images"]} <= set(BAD)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["skipped_images"] == skipped["count"]
    assert metrics["n_images"] == len(GOOD)  # the test split: every readable image scored, no more


def test_large_jpegs_decode_at_a_reduced_size_and_small_ones_exactly(tmp_path: Path, monkeypatch) -> None:
    """Pillow's draft: a 1600 x 1200 JPEG bound for 144 px decodes at 1/8 (200 x 150), never below the
    side asked for; an image under twice that side decodes bit for bit as without it."""
    from ctran.data import images, shards
    from ctran.data.transforms import eval_transform

    photo = Image.radial_gradient("L").resize((1600, 1200)).convert("RGB")
    photo.save(tmp_path / "big.jpg", quality=90)
    photo.resize((280, 210)).save(tmp_path / "small.jpg", quality=90)
    big, small = tmp_path / "big.jpg", tmp_path / "small.jpg"
    assert load_image(big, 144).size == (200, 150) and load_image(big, 400).size == (800, 600)
    assert load_image(big).size == (1600, 1200)
    assert np.array_equal(np.asarray(load_image(small, 144)), np.asarray(load_image(small)))
    transform = eval_transform(128, 144)
    difference = (transform(load_image(big, 144)) - transform(load_image(big))).abs()
    assert float(difference.mean()) < 0.03  # normalised units: about 1.5 / 255 of a pixel value
    (tmp_path / "train.csv").write_text("image,labels\nbig.jpg,a\nsmall.jpg,b\n")
    asked = []
    for module in (images, shards):
        monkeypatch.setattr(
            module, "load_image", lambda file, side=None: asked.append(side) or load_image(file)
        )
    folder = build_dataset("csv", tmp_path / "train.csv", "train", image_size=128, scale_size=144)
    assert folder.decode_side == 144 and folder[0].image.shape == (3, 128, 128) and asked == [144]
    args = ["data", "pack", "--format", "csv", "--root", str(tmp_path / "train.csv"), "--split", "train"]
    assert main([*args, "--out", str(tmp_path / "shards"), "--quiet"]) == 0
    packed = build_dataset("shards", tmp_path / "shards", "train", image_size=96, scale_size=None)
    assert packed.decode_side == 96 and len(list(eval_loader(packed, 2))) == 1 and asked[1:] == [96, 96]
