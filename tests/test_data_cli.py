"""``ctran data check`` and ``ctran data stats`` on tiny trees in the publishers' formats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ctran.cli import main
from test_data_openimages import make_openimages
from test_data_voc import make_voc


def test_check_writes_the_contract_json(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    base = make_voc(tmp_path / "data")
    (base / "JPEGImages" / "000009.jpg").write_bytes(b"not a jpeg")
    (base / "JPEGImages" / "000005.jpg").unlink()
    out = tmp_path / "check.json"
    argv = [
        "data",
        "check",
        "--format",
        "voc",
        "--root",
        str(tmp_path / "data"),
        "--json",
        str(out),
        "--quiet",
    ]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    # the missing image (000005: a chair, a difficult dining table) is left out: counts cover the other two
    assert report["split"] == "trainval" and report["images"] == 2 and report["labels"] == 20
    assert report["label_counts"]["chair"] == 0 and report["label_counts"]["person"] == 1
    assert sum(report["label_counts"].values()) == 3 and report["labels_never_positive"][0] == "aeroplane"
    assert report["missing_files"] == [str(base / "JPEGImages" / "000005.jpg")]
    assert report["unreadable_files"] == [str(base / "JPEGImages" / "000009.jpg")]
    assert report["labels_per_image"] == {"mean": 1.5, "median": 1.5, "min": 1, "max": 2}
    assert report["not_annotated_entries"] == 0 and "difficult objects: ignore" in report["notes"]
    assert "1 of 3 listed images are missing on disk and were skipped" in report["notes"]
    table = capsys.readouterr().out
    assert "| images | 2 |" in table and "| missing image files | 1 |" in table
    assert main([*argv, "--strict"]) == 1
    assert main([*argv, "--no-decode", "--split", "test", "--option", "difficult=positive"]) == 0
    assert json.loads(out.read_text())["label_counts"]["car"] == 1


def test_check_open_images_counts_only_positives(tmp_path: Path) -> None:
    root = make_openimages(tmp_path / "oi")
    out = tmp_path / "oi.json"
    assert main(["data", "check", "--format", "openimages", "--root", str(root), "--split", "validation",
                 "--json", str(out), "--quiet"]) == 0  # fmt: skip
    report = json.loads(out.read_text())
    assert report["label_counts"] == {"Cat (/m/01)": 1, "Dog": 1, "Table, dining": 0, "Cat (/m/04)": 1}
    assert report["negative_counts"]["Cat (/m/01)"] == 1 and report["not_annotated_entries"] == 7


def test_errors_exit_2_naming_the_path(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "no-such-coco"
    assert main(["data", "check", "--format", "coco", "--root", str(missing)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"dataset root {missing} does not exist; expected layout" in error
    make_voc(tmp_path)
    assert main(["data", "check", "--format", "voc", "--root", str(tmp_path), "--option", "difficult"]) == 2
    assert "--option expects KEY=VALUE, got 'difficult'" in capsys.readouterr().err


def test_stats_writes_plots_and_cooccurrence(tmp_path: Path) -> None:
    make_voc(tmp_path / "data")
    out = tmp_path / "stats"
    assert main(["data", "stats", "--format", "voc", "--root", str(tmp_path / "data"), "--out", str(out),
                 "--top", "5"]) == 0  # fmt: skip
    for name in ("label_frequency.png", "cooccurrence.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stats = json.loads((out / "stats.json").read_text())
    labels = stats["cooccurrence"]["labels"]
    assert labels[:4] == ["car", "chair", "horse", "person"] and len(labels) == 5
    counts = stats["cooccurrence"]["counts"]
    assert counts[labels.index("horse")][labels.index("person")] == 1 and counts[0][0] == 1
    assert counts[labels.index("car")][labels.index("person")] == 0
