"""Partial-label evaluation on sparsely annotated data, end to end: a CSV set whose rows name a few of 60
labels (``unlisted=unknown``, as Open Images or a user's tags) is trained and evaluated through the CLI; every
partial setting keeps entries to score, and a setting with nothing to score says so instead of NaN."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ctran.cli import main

LABELS = [f"tag{i:02d}" for i in range(60)]
FRACTIONS = (0.25, 0.5, 0.75)


def _write_split(root: Path, split: str, count: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """``count`` 16 x 16 images, each naming 2-8 labels (about a third positive); returns each image's
    (annotated A, present P)."""
    rows, annotated = ["image,labels"], []
    for i in range(count):
        names = rng.choice(LABELS, size=int(rng.integers(2, 9)), replace=False)
        tags = [("" if rng.random() < 0.35 else "-") + name for name in names]
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        Image.new("RGB", (16, 16), color).save(root / f"{split}{i}.png")
        rows.append(f"{split}{i}.png,{';'.join(tags)}")
        annotated.append((len(names), sum(not tag.startswith("-") for tag in tags)))
    (root / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return annotated


@pytest.fixture(scope="module")
def sparse_run(tmp_path_factory) -> tuple[Path, Path, list[tuple[int, int]]]:
    """A one-epoch ``ctran train`` on the sparse set: (data folder, run folder, test images' (A_i, P_i))."""
    root, out = tmp_path_factory.mktemp("sparse"), tmp_path_factory.mktemp("run")
    rng = np.random.default_rng(0)
    (root / "labels.txt").write_text("\n".join(LABELS) + "\n")
    _write_split(root, "train", 40, rng)
    _write_split(root, "val", 12, rng)
    annotated = _write_split(root, "test", 30, rng)
    args = ["train", "--config", "digits-tiny", "--data", "csv", "--data-root", str(root), "--out", str(out)]
    args += ["--quiet", "data.image_size=16", "data.scale_size=null", "data.options={unlisted: unknown}"]
    args += ["model.dim=16", "model.layers=1", "model.heads=2", "train.epochs=1", "train.batch_size=8"]
    args += ["eval.batch_size=8", f"eval.known_fractions=[{','.join(map(str, FRACTIONS))}]"]
    args += [f"eval.known_positives=[{','.join(map(str, FRACTIONS))}]"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(args) == 0
    return root, out, annotated


def test_train_scores_every_partial_setting_on_sparse_annotations(sparse_run) -> None:
    """Each test image reveals int(f * A_i) of its A_i annotated labels (partial) or int(f * P_i) of its P_i
    present ones (positives): those rows of metrics.json are finite, score the rest (a count over all 60
    labels would reveal every annotation: NaN) and say what being told gained on those same entries."""
    _, out, counts = sparse_run
    settings = json.loads((out / "metrics.json").read_text())["settings"]
    assert settings["regular"]["n_entries"] == sum(a for a, _ in counts)
    assert "untold_mAP" not in settings["regular"]
    for kind, fraction in [(kind, f) for kind in ("partial", "positives") for f in FRACTIONS]:
        metrics = settings[kind][f"{fraction:g}"]
        pool = 0 if kind == "partial" else 1  # what int(f * n) counts: annotated or present labels
        assert metrics["n_entries"] == sum(c[0] - int(fraction * c[pool]) for c in counts), (kind, fraction)
        assert metrics["n_images"] == len(counts)
        assert (
            math.isfinite(metrics["mAP"]) and metrics["n_labels_scored"] > 0 and "not_scored" not in metrics
        )
        assert metrics["gain"] == pytest.approx(metrics["mAP"] - metrics["untold_mAP"])


def test_evaluate_says_not_scored_instead_of_nan(sparse_run, tmp_path: Path) -> None:
    """Images that annotate only negatives leave no label with a scored positive, and images with nothing
    annotated leave no entry: the table and the JSON say "not scored" and hold no NaN."""
    root, out, _ = sparse_run
    for name, tags in (("negatives", "-tag01;-tag02"), ("blank", "")):
        (tmp_path / f"{name}.csv").write_text(
            "image,labels\n" + "".join(f"{root}/test{i}.png,{tags}\n" for i in range(6))
        )
    expected = {"negatives": "no label with a scored positive", "blank": "no entry left"}
    options = ["--option", "unlisted=unknown", "--option", f"vocabulary={root / 'labels.txt'}"]
    for name, reason in expected.items():
        report = tmp_path / f"{name}.json"
        argv = ["evaluate", "--checkpoint", str(out / "best.pt"), "--data", "csv", *options, "--quiet"]
        argv += ["--data-root", str(tmp_path / f"{name}.csv"), "--known", "0,0.5", "--json", str(report)]
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            assert main(argv) == 0
        text = report.read_text()
        assert "NaN" not in text
        settings = json.loads(text)["settings"]
        for metrics in (settings["regular"], settings["partial"]["0.5"]):
            assert metrics["not_scored"] == reason and metrics["mAP"] is None
        assert settings["partial"]["0.5"]["untold_mAP"] is None and settings["partial"]["0.5"]["gain"] is None
        assert printed.getvalue().count(f"not scored: {reason}") == 2
