"""End to end through the CLI: a tiny demo run, its report and checkpoint, ``ctran evaluate``, and errors.

The demo-dependent tests share one run (a few seconds on two CPU cores) and are marked ``slow``; the
argument-error and checkpoint tests are quick.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import pytest
import torch

import ctran
from ctran.checkpoint import load_checkpoint, save_checkpoint
from ctran.cli import main
from ctran.errors import CTranError
from ctran.metrics import METRIC_KEYS
from ctran.states import unknown_states

SIZES = (600, 200, 300)
REGULAR_KEYS = ("mAP", "CP", "CR", "CF1", "OP", "OR", "OF1")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(
            ["demo", "--out", str(out), "--sizes", ",".join(map(str, SIZES)), "--epochs", "2", "--quiet"]
        )
    return code, out, stdout.getvalue()


@pytest.fixture(scope="module")
def report(demo_run):
    _, out, _ = demo_run
    return json.loads((out / "report.json").read_text())


def _evaluate(checkpoint: Path, json_path: Path, *flags: str) -> tuple[int, dict]:
    argv = ["evaluate", "--checkpoint", str(checkpoint), "--size", str(SIZES[2]), "--json", str(json_path)]
    with contextlib.redirect_stdout(io.StringIO()):
        code = main([*argv, *flags, "--quiet"])
    return code, json.loads(json_path.read_text()) if json_path.exists() else {}


def _check_metrics(metrics: dict, keys=METRIC_KEYS) -> None:
    for key in keys:
        value = metrics[key]
        assert math.isfinite(value) and 0.0 <= value <= 100.0, (key, value)


# ---------------------------------------------------------------------------------------------- demo


@pytest.mark.slow
def test_demo_succeeds_and_writes_outputs(demo_run):
    code, out, stdout = demo_run
    assert code == 0
    for name in ("report.json", "report.md", "map_vs_known.png", "ctran.pt"):
        assert (out / name).is_file(), name
    png = (out / "map_vs_known.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000
    markdown = (out / "report.md").read_text()
    assert "| setting |" in markdown and "C-Tran regular" in markdown and "baseline regular" in markdown
    assert "| mAP | untold | gain |" in markdown and "C-Tran 50% of present labels known |" in markdown
    assert "Worked example" in stdout
    assert "C-Tran epoch 2: loss" in stdout and "baseline epoch 2: loss" in stdout  # --quiet keeps these
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]  # atomic writes left nothing


@pytest.mark.slow
def test_report_schema(report):
    assert {"ctran", "baseline", "train_seconds", "dataset"} <= set(report)
    ctran_results = report["ctran"]
    assert set(ctran_results) == {"regular", "partial", "positives", "extra"}
    assert set(ctran_results["partial"]) == set(ctran_results["positives"]) == {"0.25", "0.5", "0.75"}
    told = [ctran_results["extra"], *ctran_results["partial"].values(), *ctran_results["positives"].values()]
    for metrics in [ctran_results["regular"], *told]:
        _check_metrics(metrics)
        assert metrics["n_images"] == SIZES[2]
    for metrics in told:
        assert metrics["gain"] == pytest.approx(metrics["mAP"] - metrics["untold_mAP"])
    baseline = report["baseline"]
    _check_metrics(baseline["regular"], REGULAR_KEYS)
    assert set(baseline) == {"regular", "partial", "positives"}  # a plain CNN cannot use extra labels
    for metrics in [*baseline["partial"].values(), *baseline["positives"].values()]:
        assert metrics["gain"] == pytest.approx(0.0, abs=1e-9)  # it ignores what it is told
    assert set(report["train_seconds"]) == {"ctran", "baseline"}
    assert all(seconds >= 0 for seconds in report["train_seconds"].values())
    dataset = report["dataset"]
    assert dataset["sizes"] == dict(zip(("train", "val", "test"), SIZES, strict=True))
    assert len(dataset["targets"]) == 16 and len(dataset["extras"]) == 4


@pytest.mark.slow
def test_demo_checkpoint_loads(demo_run):
    _, out, _ = demo_run
    model, meta = load_checkpoint(out / "ctran.pt")
    assert not model.training
    assert "state_dict" not in meta
    assert len(meta["target_names"]) == 16 and len(meta["extra_names"]) == 4
    with torch.no_grad():
        logits = model(torch.zeros(2, 3, 48, 48), unknown_states(2, 20))
    assert logits.shape == (2, 20) and torch.isfinite(logits).all()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("flags", "path"),
    [
        ((), ("regular",)),
        (("--known", "0.5"), ("partial", "0.5")),
        (("--known-positives", "0.5"), ("positives", "0.5")),
        (("--extra",), ("extra",)),
    ],
)
def test_evaluate_cli_matches_demo_report(demo_run, report, tmp_path, flags, path):
    """Same seed and test scenes => the same known sets => the same numbers as the demo's report."""
    _, out, _ = demo_run
    code, metrics = _evaluate(out / "ctran.pt", tmp_path / "metrics.json", *flags)
    assert code == 0
    _check_metrics(metrics)
    assert metrics["n_images"] == SIZES[2]
    expected = report["ctran"]
    for key in path:
        expected = expected[key]
    for key in (*METRIC_KEYS, "untold_mAP", "gain") if path != ("regular",) else METRIC_KEYS:
        assert metrics[key] == pytest.approx(expected[key], abs=1e-6), key


# ---------------------------------------------------------------------------------------------- errors


def _run(argv: list[str]) -> int:
    with contextlib.redirect_stdout(io.StringIO()):
        return main(argv)


def test_evaluate_missing_checkpoint(tmp_path, capsys):
    missing = tmp_path / "missing.pt"
    assert _run(["evaluate", "--checkpoint", str(missing), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert str(missing) in err
    assert "Traceback" not in err


@pytest.mark.parametrize("known", ["1.5", "1.0", "-0.1"])
def test_evaluate_rejects_bad_known_fraction(tmp_path, capsys, known):
    assert _run(["evaluate", "--checkpoint", str(tmp_path / "x.pt"), "--known", known]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--known" in err


@pytest.mark.parametrize("sizes", ["1,2", "a,b,c", "10,0,10", "1,2,3,4"])
def test_demo_rejects_bad_sizes(tmp_path, capsys, sizes):
    assert _run(["demo", "--out", str(tmp_path / "out"), "--sizes", sizes, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--sizes" in err
    assert not (tmp_path / "out" / "report.json").exists()


def test_demo_rejects_zero_epochs(tmp_path, capsys):
    assert _run(["demo", "--out", str(tmp_path / "out"), "--epochs", "0", "--quiet"]) == 2
    assert "--epochs" in capsys.readouterr().err


def test_evaluate_small_untrained_checkpoint(digits_checkpoint, tmp_path):
    code, metrics = _evaluate(digits_checkpoint, tmp_path / "m.json", "--known", "0.25")
    assert code == 0
    _check_metrics(metrics)
    assert metrics["n_images"] == SIZES[2]


@pytest.mark.parametrize("flags", [["--split", "bogus"], ["--size", "0"], ["--size", "-5"], ["--seed", "-1"]])
def test_evaluate_rejects_bad_data_options(digits_checkpoint, flags, capsys):
    assert _run(["evaluate", "--checkpoint", str(digits_checkpoint), *flags, "--quiet"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv", [["--help"], ["demo", "--help"], ["evaluate", "--help"], ["--version"]])
def test_help_exits_zero(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    assert capsys.readouterr().out.strip()


def test_missing_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2


# ---------------------------------------------------------------------------------------------- checkpoints


CONFIG = {"kind": "ctran", "num_labels": 5, "backbone": "small_cnn", "dim": 16, "layers": 1, "heads": 2}


def _trained_small_model() -> torch.nn.Module:
    """A small model moved away from its initialisation by a few optimiser steps."""
    torch.manual_seed(0)
    model = ctran.model.build_from_config(CONFIG)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    images = torch.randn(4, 3, 48, 48)
    states = torch.randint(-1, 2, (4, 5))
    for _ in range(2):
        optimizer.zero_grad()
        model(images, states).pow(2).mean().backward()
        optimizer.step()
    return model.eval()


def test_checkpoint_round_trip(tmp_path):
    model = _trained_small_model()
    path = save_checkpoint(tmp_path / "model.pt", model, CONFIG, ["a", "b", "c"], ["x", "y"], image_size=48)
    assert path == tmp_path / "model.pt"
    loaded, meta = load_checkpoint(path)
    assert not loaded.training
    assert meta["target_names"] == ["a", "b", "c"] and meta["extra_names"] == ["x", "y"]
    assert meta["image_size"] == 48
    assert meta["model_config"] == CONFIG
    images = torch.randn(3, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    states = torch.randint(-1, 2, (3, 5), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(loaded(images, states), model(images, states), atol=0, rtol=0)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_baseline_checkpoint_round_trip(tmp_path):
    config = {"kind": "baseline", "num_labels": 3, "backbone": "small_cnn"}
    torch.manual_seed(0)
    model = ctran.model.build_from_config(config).eval()
    save_checkpoint(tmp_path / "baseline.pt", model, config, ["a", "b", "c"])
    loaded, _ = load_checkpoint(tmp_path / "baseline.pt")
    images = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        assert torch.equal(loaded(images), model(images))


def test_save_checkpoint_leaves_no_temporary_files(tmp_path):
    model = _trained_small_model()
    save_checkpoint(tmp_path / "model.pt", model, CONFIG, ["a", "b", "c"], ["x", "y"])
    save_checkpoint(tmp_path / "model.pt", model, CONFIG, ["a", "b", "c"], ["x", "y"])  # overwrite
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_failed_save_leaves_nothing(tmp_path):
    model = _trained_small_model()
    with pytest.raises(Exception):  # noqa: B017 - whatever pickling raises for a lambda
        save_checkpoint(tmp_path / "model.pt", model, CONFIG, ["a"], unpicklable=lambda: None)
    assert list(tmp_path.iterdir()) == []


def test_truncated_checkpoint_raises_ctran_error(tmp_path):
    model = _trained_small_model()
    good = save_checkpoint(tmp_path / "model.pt", model, CONFIG, ["a", "b", "c"], ["x", "y"])
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CTranError, match=r"truncated\.pt"):
        load_checkpoint(truncated)


def test_foreign_and_missing_checkpoints_raise_ctran_error(tmp_path):
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(CTranError, match="not a ctran checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(CTranError, match=r"nothing\.pt"):
        load_checkpoint(tmp_path / "nothing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_text("not a checkpoint at all")
    with pytest.raises(CTranError, match=r"garbage\.pt is not a ctran checkpoint"):
        load_checkpoint(garbage)


def test_a_pickled_model_is_not_a_ctran_checkpoint_and_no_unsafe_advice_is_given(tmp_path):
    pickled = tmp_path / "model.pt"
    torch.save(torch.nn.Linear(2, 2), pickled)  # a whole module, not a state dict
    with pytest.raises(CTranError) as info:
        load_checkpoint(pickled)
    message = str(info.value)
    assert (
        message.startswith(f"{pickled} is not a ctran checkpoint")
        and "torch.nn.modules.linear.Linear" in message
    )
    assert "weights_only" not in message and "trust" not in message
