"""The synthetic many-label dataset: its layout, sparsity, long tail, pixels and determinism."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ctran.cli import main
from ctran.config import load_config
from ctran.data import synthetic, tabular
from ctran.data.synthetic import CELL, PALETTE, STRIPES, SyntheticSpec, label_model, write_synthetic

ANNOTATED = 10


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """240 training images over 300 labels (val and test: 50 each)."""
    out = tmp_path_factory.mktemp("synth") / "set"
    return out, write_synthetic(out, 240, 300, annotated_per_image=ANNOTATED, seed=3)


def _states(out: Path, split: str = "train") -> np.ndarray:
    return tabular.load(out, split, unlisted="unknown").target_table.dense()  # (N, L) in {-1, 0, 1}


def test_reads_as_sparse_csv_with_about_ten_annotated_per_image(small_set) -> None:
    out, summary = small_set
    assert summary["images"] == {"train": 240, "val": 50, "test": 50} and summary["labels"] == 300
    states = _states(out)
    assert states.shape == (240, 300)
    annotated, positives = (states >= 0).sum(1), (states == 1).sum(1)
    # each row: its annotated positives, then negatives up to A (at least 2): exactly A unless crowded
    assert (annotated == np.maximum(ANNOTATED, positives + synthetic.MIN_NEGATIVES)).all()
    assert (positives >= 0).all() and 2 <= positives.mean() <= 6
    assert (states == -1).mean() > 0.95  # the rest is not annotated
    every = np.concatenate([(_states(out, split) >= 0).sum(1) for split in ("train", "val", "test")])
    assert summary["annotated_per_image"] == pytest.approx(every.mean(), abs=1e-3)
    names = (out / "labels.txt").read_text().split()
    assert len(names) == 300 and names == list(tabular.load(out, "test", unlisted="unknown").target_names)


def test_label_frequency_is_long_tailed() -> None:
    model = label_model(SyntheticSpec(num_labels=2000))
    frequency = np.sort(model.frequency)[::-1]
    assert frequency[0] > 50 * np.median(frequency) and frequency[0] > 1000 * frequency[-1]
    # rank-frequency of the groups follows the Zipf law: popularity x rank is constant
    ranks = np.arange(1, len(model.group_weight) + 1)
    assert np.allclose(model.group_weight * ranks, model.group_weight[0])


def _decoded_labels(pixels: np.ndarray, model) -> set[int]:
    """Labels whose code appears in a grid cell (stripe colours within 0.2 of the palette's)."""
    code_of = {tuple(code): label for label, code in enumerate(model.codes.tolist())}
    stripe = CELL // STRIPES
    found = set()
    image = pixels.astype(np.float32) / 255
    for y in range(0, image.shape[0], CELL):
        for x in range(0, image.shape[1], CELL):
            means = image[y : y + CELL, x : x + CELL].reshape(STRIPES, stripe * CELL, 3).mean(1)  # (4, 3)
            distance = np.abs(means[:, None, :] - PALETTE[None]).max(-1)  # (4, 26)
            if (distance.min(1) < 0.2).all():
                found.add(code_of.get(tuple(distance.argmin(1).tolist()), -1))
    return found - {-1}


def test_pixels_carry_the_visible_labels_and_never_the_hidden(small_set) -> None:
    out, _ = small_set
    spec = SyntheticSpec(**json.loads((out / "synthetic.json").read_text())["spec"])
    model = label_model(spec)
    dataset = tabular.load(out, "train", unlisted="unknown")
    states = dataset.target_table.dense()
    visible_found = visible_total = 0
    for index in range(len(dataset)):
        found = _decoded_labels(np.asarray(Image.open(out / dataset.image_id(index))), model)
        positives = set(np.flatnonzero(states[index] == 1).tolist())
        assert not found & set(np.flatnonzero(states[index] == 0).tolist())  # a negative is never drawn
        assert not any(model.hidden[label] for label in found)
        visible = {label for label in positives if not model.hidden[label]}
        visible_found += len(found & visible)
        visible_total += len(visible)
    assert visible_found / visible_total > 0.75  # the rest degraded (20%) or beyond the free cells


def test_known_labels_predict_their_group_mates(small_set) -> None:
    """A hidden label (never drawn) is far more often present with a group-mate of its own variant than with
    one of the other variant: a known label tells the group's variant, so known labels help."""
    out, _ = small_set
    model = label_model(SyntheticSpec(**json.loads((out / "synthetic.json").read_text())["spec"]))
    states = _states(out)
    counts = np.zeros((2, 2))  # (same variant, other variant) x (present, annotated)
    for label in np.flatnonzero(model.hidden):
        mates = model.members[model.group[label]]
        mates = mates[mates != label]
        matching = model.variant[mates] == model.variant[label]
        with_same = (states[:, mates[matching]] == 1).any(1)
        with_other = (states[:, mates[~matching]] == 1).any(1)
        annotated = states[:, label] >= 0
        for row, rows in enumerate((with_same & ~with_other, with_other & ~with_same)):
            counts[row] += (states[annotated & rows, label] == 1).sum(), (annotated & rows).sum()
    same, other = counts[:, 0] / counts[:, 1]
    assert same > 2.5 * other


def test_deterministic_from_the_seed_whatever_the_workers(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(synthetic, "CHUNK", 25)  # several chunks per split, so two processes share work
    first = write_synthetic(tmp_path / "a", 60, 40, val_images=20, test_images=20, seed=5, workers=1)
    write_synthetic(tmp_path / "b", 60, 40, val_images=20, test_images=20, seed=5, workers=2)
    write_synthetic(tmp_path / "c", 60, 40, val_images=20, test_images=20, seed=6)
    for name in ("train.csv", "val.csv", "test.csv", "labels.txt", "images/train/002/000055.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert (tmp_path / "a" / "train.csv").read_bytes() != (tmp_path / "c" / "train.csv").read_bytes()
    assert first["images"] == {"train": 60, "val": 20, "test": 20}


def test_cli_prints_a_summary_and_writes_a_training_config(tmp_path: Path, capsys) -> None:
    out = tmp_path / "set"
    argv = ["data", "synth", "--out", str(out), "--images", "30", "--labels", "50", "--val", "10", "--quiet"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == {"train": 30, "val": 10, "test": 50} and summary["images_per_s"] > 0
    assert summary["train_command"] == f"ctran train --config {out.resolve()}/ctran.yaml --out runs/synth"
    config = load_config(out / "ctran.yaml")
    assert config.data.format == "csv" and config.data.options == {"unlisted": "unknown"}
    assert Path(config.data.root) == out.resolve() and config.data.image_size == 32
    assert main(argv) == 2  # not empty any more
    assert "is not empty" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--labels", "1"], "at least 2"),
        (["--image-size", "30"], "multiple of 8"),
        (["--images", "0"], "--images must be a positive integer"),
        (["--annotated", "0"], "annotated labels per image must be positive"),
    ],
)
def test_bad_values_exit_2(tmp_path: Path, capsys, flags: list[str], message: str) -> None:
    assert main(["data", "synth", "--out", str(tmp_path / "x"), "--quiet", *flags]) == 2
    assert message in capsys.readouterr().err
