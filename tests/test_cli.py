"""A command line that stays out of the way: fast parsing, overrides anywhere, resume that extends a run,
progress bars only for a terminal, one line per epoch even with ``--quiet``."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ctran.cli import build_parser, main
from ctran.cli.args import DATASET_FORMATS

HEAVY = ("torch", "torchvision", "matplotlib", "timm", "numpy", "PIL", "fastapi", "sklearn")
TINY = [
    "data.sizes={train: 64, val: 32, test: 32}",
    "train.batch_size=16",
    "train.precision=fp32",
    "data.num_workers=0",
]


def test_parsing_every_help_imports_no_heavy_library() -> None:
    """``ctran --help`` stays fast because parsing never imports torch & co. (the time is in benchmarks/)."""
    commands = [[], *([name] for name in build_parser()._subparsers._group_actions[0].choices)]
    script = (
        "import sys\nfrom ctran.cli import main\n"
        f"for argv in {[[*c, '--help'] for c in commands] + [['--version']]!r}:\n"
        "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
        f"print('imported:', [m for m in {HEAVY!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "imported: []"


def test_dataset_formats_of_the_parser_are_the_registry_formats() -> None:
    from ctran.data.registry import FORMATS

    assert DATASET_FORMATS == FORMATS


def test_overrides_are_accepted_anywhere_on_the_line(monkeypatch, tmp_path: Path) -> None:
    seen = {}

    def fake_train_run(config, out, resume=False, progress=True):
        seen.update(config=config, out=out)
        return {"mAP": 1.0, "best_epoch": 1}

    monkeypatch.setattr("ctran.training.run.train_run", fake_train_run)
    argv = ["train", "train.lr=0.5", "--config", "digits-tiny", "model.dim=8", "--out", str(tmp_path)]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main([*argv, "--quiet", "train.epochs=7", "model.heads=2"]) == 0
    config = seen["config"]
    assert (config.train.lr, config.model.dim, config.train.epochs, config.model.heads) == (0.5, 8, 7, 2)


def _exit_code(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as stop:  # argparse's usage errors
        return stop.code


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--config", "digits-tiny", "--out", "x", "stray.txt"],
        ["train", "train.lr=1", "--config", "digits-tiny", "--out", "x", "stray.txt"],
        ["train", "--config", "digits-tiny", "train.lr=1", "--out", "x", "--bogus"],
        ["evaluate", "--checkpoint", "x.pt", "train.epochs=2"],  # evaluate takes no overrides
    ],
)
def test_a_stray_argument_is_still_refused(argv: list[str], capsys) -> None:
    assert _exit_code(argv) == 2
    assert argv[-1] in capsys.readouterr().err


def _train(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["train", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _epoch_lines(out: str) -> list[str]:
    return [line.split(":")[0] for line in out.splitlines() if line.startswith("train epoch ")]


@pytest.mark.slow
def test_resume_extends_a_finished_run_and_quiet_keeps_the_epoch_lines(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    code, out, err = _train(capsys, "--config", "digits-tiny", "--out", str(run), "--quiet", *TINY)
    assert code == 0, err
    assert _epoch_lines(out) == ["train epoch 1", "train epoch 2", "train epoch 3"]
    assert "\r" not in err and "it/s" not in err  # --quiet: no bar
    code, out, err = _train(capsys, "--resume", str(run), "train.epochs=5", "--quiet")
    assert code == 0, err
    assert _epoch_lines(out) == ["train epoch 4", "train epoch 5"]
    rows = (run / "metrics.csv").read_text().strip().splitlines()[1:]
    assert [int(row.split(",")[0]) for row in rows] == [1, 2, 3, 4, 5]
    assert (
        yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 5
    )  # a later resume keeps it
    assert json.loads((run / "metrics.json").read_text())["n_images"] == 32


def test_resume_errors_say_what_to_do(tmp_path: Path, capsys) -> None:
    run = tmp_path / "killed"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"train": {"epochs": 2}}))  # no last.pt yet
    code, _, err = _train(capsys, "--resume", str(run))
    assert code == 2 and "before its first checkpoint" in err and f"--out {run}" in err
    code, _, err = _train(capsys, "--resume", str(run), "model.dim=8")
    assert code == 2 and "cannot change model.dim" in err and "train.epochs" in err
    code, _, err = _train(capsys, "--resume", str(tmp_path / "nothing"))
    assert code == 2 and "config.yaml not found" in err


def test_progress_bars_only_when_stderr_is_a_terminal(tiny_checkpoint: Path, tmp_path: Path, capsys) -> None:
    """A bar on a pipe or a log file is noise; on a terminal it is shown unless --quiet."""
    import numpy as np
    from PIL import Image

    for i in range(3):
        Image.fromarray(np.full((48, 48, 3), 40 * i, dtype=np.uint8)).save(tmp_path / f"{i}.png")
    argv = ["predict", "--checkpoint", str(tiny_checkpoint), str(tmp_path), "--batch-size", "1"]

    def stderr_of(*extra: str, terminal: bool) -> str:
        with contextlib.ExitStack() as stack:
            if terminal:
                stack.enter_context(pytest.MonkeyPatch.context()).setattr(sys.stderr, "isatty", lambda: True)
            assert main([*argv, *extra]) == 0
        return capsys.readouterr().err

    assert "predict: 100%" in stderr_of(terminal=True)
    assert stderr_of(terminal=False) == ""
    assert stderr_of("--quiet", terminal=True) == ""
