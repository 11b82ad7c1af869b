"""``ctran compare``: runs side by side in every setting, from run folders and results JSON files."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch
import yaml

import ctran
from ctran.checkpoint import save_checkpoint
from ctran.cli import main
from ctran.data.digit_scenes import CONTEXT_NAMES, DIGIT_NAMES, TAG_NAMES
from ctran.report import settings_by_name


@pytest.fixture(scope="module")
def evaluations(tmp_path_factory) -> dict[str, dict]:
    """``ctran evaluate --json`` of two untrained digit models (seeds 0 and 1), six settings each."""
    folder = tmp_path_factory.mktemp("evals")
    config = {"kind": "ctran", "num_labels": 20, "backbone": "small_cnn", "dim": 16, "layers": 1, "heads": 2}
    results = {}
    for seed in (0, 1):
        torch.manual_seed(seed)
        path = save_checkpoint(
            folder / f"m{seed}.pt",
            ctran.model.build_from_config(config),
            config,
            DIGIT_NAMES + TAG_NAMES,
            CONTEXT_NAMES,
            image_size=48,
        )
        out = folder / f"m{seed}.json"
        argv = ["evaluate", "--checkpoint", str(path), "--size", "40", "--known", "0,0.5", "--extra", "both"]
        argv += ["--known-positives", "0.5"]
        with contextlib.redirect_stdout(io.StringIO()):
            assert main([*argv, "--json", str(out), "--quiet"]) == 0
        results[f"m{seed}"] = json.loads(out.read_text())
    return results


def _run_folder(root: Path, name: str, evaluation: dict, **train: object) -> Path:
    """A finished ``ctran train`` folder: metrics.json (regular on top, every setting below), config.yaml."""
    folder = root / name
    folder.mkdir(parents=True)
    settings = evaluation["settings"]
    metrics = {**settings["regular"], "setting": "regular", "settings": settings, "best_epoch": 3}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    config = {
        "model": {"backbone": "small_cnn"},
        "data": {"format": "digits"},
        "train": {"epochs": 5, **train},
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder


def _compare(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["compare", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_runs_and_json_files_side_by_side(evaluations, tmp_path: Path, capsys) -> None:
    a = _run_folder(tmp_path, "a", evaluations["m0"], label_mask=True)
    b = _run_folder(tmp_path, "b", evaluations["m1"], label_mask=False)
    only_regular = {"settings": {"regular": evaluations["m1"]["settings"]["regular"]}}
    (tmp_path / "c.json").write_text(json.dumps(only_regular))
    out = tmp_path / "cmp"
    code, stdout, _ = _compare(capsys, str(a), str(b), str(tmp_path / "c.json"), "--out", str(out))
    assert code == 0
    first_table = stdout.split("\n\n")[0].splitlines()
    assert first_table[0] == "| setting | a | b | c |"
    rows = {line.split(" | ")[0].strip("| "): line for line in first_table[2:]}
    assert list(rows) == [
        *("regular", "partial_0.5", "positives_0.5"),
        *("extra", "partial_0.5+extra", "positives_0.5+extra"),
    ]
    for setting, line in rows.items():
        cells = [cell.strip("* ") for cell in line.strip("|").split("|")[1:]]
        expected_a = settings_by_name(evaluations["m0"]["settings"])[setting]["mAP"]
        expected_b = settings_by_name(evaluations["m1"]["settings"])[setting]["mAP"]
        assert cells[:2] == [f"{expected_a:.1f}", f"{expected_b:.1f}"]
        assert cells[2] == (f"{expected_b:.1f}" if setting == "regular" else "-")  # c has regular only
        best = max(expected_a, expected_b)
        assert f"**{best:.1f}**" in line
    assert "| regular | a | 40 | " in stdout  # the full table says how many images were scored
    saved = json.loads((out / "compare.json").read_text())
    assert [run["name"] for run in saved["runs"]] == ["a", "b", "c"]
    assert saved["runs"][1]["label_mask"] is False  # what was trained, from config.yaml
    assert saved["settings"]["partial_0.5+extra"]["c"] is None
    assert saved["settings"]["extra"]["b"]["mAP"] == evaluations["m1"]["settings"]["extra"]["mAP"]
    assert (out / "compare.md").read_text() == stdout.rsplit("\nwrote ", 1)[0]
    assert (out / "compare.png").read_bytes().startswith(b"\x89PNG")


def test_a_demo_folder_is_two_runs_and_clashing_names_use_the_path(evaluations, tmp_path, capsys) -> None:
    demo = tmp_path / "demo"
    demo.mkdir()
    settings = evaluations["m0"]["settings"]
    report = {
        "ctran": settings,
        "baseline": {"regular": settings["regular"]},
        "train_seconds": {"ctran": 1.0},
    }
    (demo / "report.json").write_text(json.dumps(report))
    same = [_run_folder(tmp_path / side, "run", evaluations["m0"]) for side in ("x", "y")]
    code, stdout, _ = _compare(capsys, str(demo), *map(str, same), "--out", str(tmp_path / "out"))
    assert code == 0
    header = stdout.splitlines()[0]
    assert header == f"| setting | demo/ctran | demo/baseline | {same[0]} | {same[1]} |"


def test_different_image_counts_are_pointed_out(evaluations, tmp_path, capsys) -> None:
    fewer = json.loads(json.dumps(evaluations["m1"]))
    fewer["settings"]["regular"]["n_images"] = 10
    (tmp_path / "fewer.json").write_text(json.dumps(fewer))
    a = _run_folder(tmp_path, "a", evaluations["m0"])
    code, stdout, _ = _compare(capsys, str(a), str(tmp_path / "fewer.json"), "--out", str(tmp_path / "o"))
    assert code == 0
    assert "note: regular: the runs scored different numbers of images (a 40, fewer 10)" in stdout


def test_what_is_not_a_run_is_named(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text("train: {epochs: 2}\n")
    (tmp_path / "other.json").write_text('{"weights": [1, 2]}')
    (tmp_path / "broken.json").write_text('{"settings": ')
    resume = f"ctran train --resume {unfinished}"
    cases = {
        "empty": "is not a ctran run folder",
        "unfinished": f"has not finished (no metrics.json yet): finish it with {resume},",
        "missing": "no such run folder or JSON file",
        "other.json": "holds no ctran results",
        "broken.json": "cannot read JSON",
    }
    for name, message in cases.items():
        code, _, err = _compare(capsys, str(tmp_path / name), "--out", str(tmp_path / "o"))
        assert code == 2 and message in err and err.count("\n") == 1, (name, err)
    assert not (tmp_path / "o").exists()  # nothing written for a failed comparison


def test_an_unknown_metric_lists_the_available_ones(evaluations, tmp_path, capsys) -> None:
    a = _run_folder(tmp_path, "a", evaluations["m0"])
    code, _, err = _compare(capsys, str(a), "--metric", "mAp", "--out", str(tmp_path / "o"))
    assert code == 2 and "mAP" in err and "CF1" in err


def _cells(table: str, start: str) -> list[str]:
    """The cells of the one table row that starts with ``start``."""
    [row] = [line for line in table.splitlines() if line.startswith(start)]
    return [cell.strip("* ") for cell in row.strip("|").split("|")]


def test_told_settings_show_what_being_told_gained_on_the_same_entries(evaluations, tmp_path, capsys) -> None:
    """The full table has untold and gain columns ("-" for regular); --metric gain compares the gains."""
    a, b = (_run_folder(tmp_path, name, evaluations[m]) for name, m in (("a", "m0"), ("b", "m1")))
    code, stdout, _ = _compare(capsys, str(a), str(b), "--metric", "gain", "--out", str(tmp_path / "o"))
    assert code == 0
    first, full = stdout.split("\n\n")[:2]
    told = {m: settings_by_name(evaluations[m]["settings"])["positives_0.5"] for m in ("m0", "m1")}
    assert _cells(first, "| positives_0.5 |")[1:] == [f"{told[m]['gain']:+.1f}" for m in ("m0", "m1")]
    assert full.startswith("| setting | run | images | labels | mAP | untold | gain | CP |")
    expected = [f"{told['m0']['mAP']:.1f}", f"{told['m0']['untold_mAP']:.1f}", f"{told['m0']['gain']:+.1f}"]
    assert _cells(full, "| positives_0.5 | a |")[4:7] == expected
    assert _cells(full, "| regular | a |")[5:7] == ["-", "-"]
