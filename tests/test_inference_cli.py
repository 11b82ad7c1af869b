"""``ctran predict``: files, folders and globs; table, JSON and CSV; per-file failures; label mistakes."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ctran
from ctran.cli import main
from ctran.cli.predict import expand_paths

TARGETS = ["cat", "dog", "person", "car"]


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """photos/a.png, photos/b.jpg, photos/sub/c.png (grey), photos/notes.txt."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for name, mode in (("a.png", "RGB"), ("b.jpg", "RGB"), ("sub/c.png", "L")):
        pixels = rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)
        Image.fromarray(pixels).convert(mode).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    return folder


def _predict(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["predict", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_expand_paths_files_folders_globs_and_misses(photos: Path) -> None:
    found, missing = expand_paths(
        [str(photos), str(photos / "*.png"), str(photos / "nothing*.png"), "gone.png"]
    )
    assert found == [photos / "a.png", photos / "b.jpg", photos / "sub" / "c.png"]  # duplicates dropped
    assert missing == [str(photos / "nothing*.png"), "gone.png"]


def test_json_output_follows_the_contract(tiny_checkpoint: Path, photos: Path, capsys) -> None:
    code, out, _ = _predict(
        capsys,
        "--checkpoint",
        str(tiny_checkpoint),
        str(photos),
        "--known",
        "dog=1,car=no",
        "--format",
        "json",
    )
    assert code == 0
    rows = json.loads(out)
    assert [row["image"] for row in rows] == [str(photos / n) for n in ("a.png", "b.jpg", "sub/c.png")]
    expected = ctran.load(tiny_checkpoint).predict(photos / "a.png", known={"dog": True, "car": False})[0]
    assert rows[0]["known"] == {"dog": True, "car": False}
    assert rows[0]["probs"] == pytest.approx(expected.probs, abs=1e-6)
    assert set(rows[0]["probs"]) == {"cat", "person"} and rows[0]["predicted"] == expected.predicted


def test_csv_top_k_and_output_file(tiny_checkpoint: Path, photos: Path, tmp_path: Path, capsys) -> None:
    target = tmp_path / "out" / "preds.csv"
    args = ["--checkpoint", str(tiny_checkpoint), str(photos / "*.png"), "--format", "csv", "--top-k", "2"]
    code, out, err = _predict(capsys, *args, "--output", str(target), "--extra", "indoor=1")
    assert code == 0 and out == "" and "wrote" in err
    rows = list(csv.DictReader(io.StringIO(target.read_text())))
    assert [Path(r["image"]).name for r in rows] == ["a.png"]  # the glob is not recursive
    assert list(rows[0]) == ["image", "predicted", "known", *TARGETS]
    assert rows[0]["known"] == "indoor=1"
    filled = {name: float(rows[0][name]) for name in TARGETS if rows[0][name]}
    probs = ctran.load(tiny_checkpoint).predict(photos / "a.png", extra={"indoor": True})[0].probs
    best = sorted(probs, key=lambda n: -probs[n])[:2]
    assert set(filled) == set(best)
    assert filled == pytest.approx({n: probs[n] for n in best}, abs=1e-5)


def test_table_and_json_file(tiny_checkpoint: Path, photos: Path, tmp_path: Path, capsys) -> None:
    args = ["--checkpoint", str(tiny_checkpoint), str(photos / "a.png"), "--calibrated", "--top-k", "3"]
    code, out, _ = _predict(capsys, *args, "--json", str(tmp_path / "r.json"))
    assert code == 0
    assert out.splitlines()[0] == "| image | known | top 3 (* = above threshold) |"
    assert str(photos / "a.png") in out
    [row] = json.loads((tmp_path / "r.json").read_text())
    assert len(row["probs"]) == 3


def test_suggest_lists_the_labels_to_ask_next(tiny_checkpoint: Path, photos: Path, capsys) -> None:
    predictor = ctran.load(tiny_checkpoint)
    base = ["--checkpoint", str(tiny_checkpoint), str(photos / "a.png"), str(photos / "b.jpg")]
    code, out, _ = _predict(capsys, *base, "--known", "dog=1", "--suggest", "2", "--format", "json")
    assert code == 0
    rows = json.loads(out)
    for row, name in zip(rows, ("a.png", "b.jpg"), strict=True):
        [expected] = predictor.suggest(predictor.encode(photos / name), {"dog": True}, k=2)
        assert [s["label"] for s in row["suggest"]] == [s.label for s in expected]
        assert [s["information"] for s in row["suggest"]] == pytest.approx(
            [s.information for s in expected], abs=1e-6
        )
    code, out, _ = _predict(capsys, *base, "--suggest", "1", "--suggest-method", "uncertainty")
    lines = out.splitlines()
    assert code == 0 and lines[0] == "| image | known | predicted (probability) | ask next |"
    [[cheapest]] = predictor.suggest(predictor.encode(photos / "a.png"), k=1, method="uncertainty")
    assert lines[2].endswith(f"| {cheapest.label} ({cheapest.uncertainty:.2f} bits) |")
    code, out, _ = _predict(capsys, *base, "--suggest", "1", "--format", "csv")
    csv_rows = list(csv.DictReader(io.StringIO(out)))
    assert list(csv_rows[0])[:4] == ["image", "predicted", "known", "ask_next"]
    [[best]] = predictor.suggest(predictor.encode(photos / "a.png"), k=1)
    assert csv_rows[0]["ask_next"] == best.label
    code, out, _ = _predict(capsys, *base, "--format", "json")
    assert "suggest" not in json.loads(out)[0]  # only when asked


def test_known_labels_show_how_far_they_moved_the_others(
    tiny_checkpoint: Path, photos: Path, tmp_path: Path, capsys
) -> None:
    predictor = ctran.load(tiny_checkpoint)
    base = ["--checkpoint", str(tiny_checkpoint), str(photos / "a.png"), str(photos / "b.jpg")]
    told = ["--known", "dog=1,car=0", "--extra", "indoor=1"]
    code, out, _ = _predict(capsys, *base, *told, "--format", "json", "--json", str(tmp_path / "r.json"))
    assert code == 0
    rows = json.loads(out)
    assert json.loads((tmp_path / "r.json").read_text()) == rows
    for row, name in zip(rows, ("a.png", "b.jpg"), strict=True):
        moved = row["moved_by_known"]
        without = predictor.predict(photos / name)[0].probs  # the explicit prediction told nothing
        assert {c["label"] for c in moved["overall"]} == {"cat", "person"}
        for change in moved["overall"]:
            label = change["label"]
            assert change["p_without"] == pytest.approx(without[label], abs=1e-6)
            assert change["p_with"] == pytest.approx(row["probs"][label], abs=1e-6)
            assert change["delta"] == pytest.approx(row["probs"][label] - without[label], abs=1e-6)
        assert max(abs(c["delta"]) for c in moved["overall"]) > 1e-4  # nonzero: the states reached the model
        [expected] = predictor.influence(
            predictor.encode(photos / name), {"dog": True, "car": False}, {"indoor": True}
        )
        assert list(moved["by_label"]) == ["dog", "car", "indoor"]
        for label, changes in expected.by_label.items():
            assert [c["label"] for c in moved["by_label"][label]] == [c.label for c in changes]
            deltas = [c["delta"] for c in moved["by_label"][label]]
            assert deltas == pytest.approx([c.delta for c in changes], abs=1e-6)

    code, out, _ = _predict(capsys, *base, *told)
    assert code == 0
    lines = out.splitlines()
    block = lines.index(f"telling the model moved ({photos / 'a.png'}):")
    first = rows[0]["moved_by_known"]["overall"][0]
    shown = f"{first['label']} {first['delta']:+.3f} ({first['p_without']:.3f} -> {first['p_with']:.3f})"
    assert lines[block + 1].startswith(f"  {shown}")
    assert [line.split(",")[0] for line in lines[block + 2 : block + 5]] == [
        "  dog",
        "  car",
        "  indoor",
    ]
    assert f"telling the model moved ({photos / 'b.jpg'}):" in lines

    code, out, _ = _predict(capsys, *base, "--format", "json")
    assert "moved_by_known" not in json.loads(out)[0]  # only when something is told
    code, out, _ = _predict(capsys, *base)
    assert "telling the model moved" not in out


def test_unreadable_files_are_reported_and_the_rest_processed(
    tiny_checkpoint: Path, photos: Path, capsys
) -> None:
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    args = ["--checkpoint", str(tiny_checkpoint), str(photos), "missing.jpg", "--format", "json"]
    code, out, err = _predict(capsys, *args, "--batch-size", "2")
    assert code == 1
    assert [Path(r["image"]).name for r in json.loads(out)] == ["a.png", "b.jpg", "c.png"]
    assert "broken.png: cannot read image" in err and "missing.jpg: no such file" in err
    assert "2 of 5 inputs failed" in err


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--known", "dgo=1"], "unknown target label 'dgo'; closest: dog"),
        (["--known", "dog=1", "--extra", "dog=1"], "'dog' is given both as known and as extra"),
        (["--known", "dog=1", "--known", "dog=0"], "'dog' is given twice with different values"),
        (["--known", "indoor=1"], "'indoor' is an extra (input-only) label: give it as extra"),
        (["--extra", "cat=1"], "'cat' is a target label: give it as known"),
        (["--threshold", "2"], "threshold must be in [0, 1]"),
        (["--top-k", "0"], "--top-k must be a positive integer"),
        (["--suggest", "0"], "--suggest must be a positive integer"),
    ],
)
def test_label_and_option_mistakes_exit_2(
    tiny_checkpoint: Path, photos: Path, capsys, option, message
) -> None:
    code, out, err = _predict(capsys, "--checkpoint", str(tiny_checkpoint), str(photos), *option)
    assert code == 2 and out == ""
    assert message in err and len(err.strip().splitlines()) == 1


def test_no_images_at_all_exits_2(tiny_checkpoint: Path, tmp_path: Path, capsys) -> None:
    code, _, err = _predict(capsys, "--checkpoint", str(tiny_checkpoint), str(tmp_path))
    assert code == 2 and "no image files found" in err


def test_predict_without_threshold_cuts_where_serve_does(tiny_checkpoint: Path, photos: Path, capsys) -> None:
    """One default for predict and serve: the checkpoint's calibrated thresholds (0.3, 0.5, 0.6, 0.7)."""
    from fastapi.testclient import TestClient

    from ctran.serving import create_app

    image = str(photos / "a.png")
    code, out, _ = _predict(capsys, "--checkpoint", str(tiny_checkpoint), image, "--format", "json")
    assert code == 0
    [row] = json.loads(out)
    served = TestClient(create_app(ctran.load(tiny_checkpoint))).get("/api/labels").json()["thresholds"]
    assert sorted(row["predicted"]) == sorted(n for n, p in row["probs"].items() if p >= served[n])
    at_half = sorted(n for n, p in row["probs"].items() if p >= 0.5)
    assert sorted(row["predicted"]) != at_half  # so a 0.5 default would have been caught
    assert ctran.load(tiny_checkpoint).predict(image)[0].predicted == row["predicted"]  # the Python API too
