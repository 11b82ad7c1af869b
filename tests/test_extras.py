"""A lean install: the core (train, evaluate, predict, tag) needs no web server or plotting package, and a
command that needs a missing extra names the ``pip install 'ctran[EXTRA]'`` that brings it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ctran.cli import main
from ctran.extras import EXTRAS, MissingExtraError, install_hint, missing, pyplot

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# every module an extra brings, and what they pull in themselves (starlette comes with fastapi)
EXTRA_MODULES = [*(m for modules in EXTRAS.values() for m in modules), "starlette"]


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[ ;]", r, maxsplit=1)[0].lower() for r in requirements}


def test_core_dependencies_leave_the_server_and_plotting_to_extras() -> None:
    core = _names(PYPROJECT["dependencies"])
    extras = PYPROJECT["optional-dependencies"]
    assert not core & {"fastapi", "uvicorn", "python-multipart", "pydantic", "matplotlib", "onnx"}
    for extra, modules in EXTRAS.items():  # ctran/extras.py and pyproject.toml name the same packages
        assert _names(extras[extra]) == set(modules.values()), extra
    assert extras["all"] == [f"ctran[{','.join(EXTRAS)}]"]
    assert any(r.startswith("ctran[all") for r in extras["dev"])  # `make test`/`make demo` get them all


def test_install_hint_names_the_packages_and_the_extra(monkeypatch) -> None:
    assert install_hint("viz", "ctran explain", ["matplotlib"]) == (
        "ctran explain needs matplotlib, which is not installed: pip install 'ctran[viz]'"
    )
    assert "needs fastapi and uvicorn, which are not installed" in install_hint(
        "serve", "x", ["fastapi", "uvicorn"]
    )
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    assert missing("viz") == ["matplotlib"]
    with pytest.raises(MissingExtraError, match=r"drawing needs matplotlib.*pip install 'ctran\[viz\]'$"):
        pyplot("drawing")


def _image(path: Path) -> Path:
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(path)
    return path


@pytest.mark.parametrize(
    ("command", "blocked", "extra"),
    [
        (["serve", "--checkpoint", "{ckpt}"], "fastapi", "serve"),
        (["serve", "--checkpoint", "{ckpt}"], "uvicorn", "serve"),
        (["annotate", "{tmp}", "--checkpoint", "{ckpt}"], "fastapi", "serve"),
        (["explain", "--checkpoint", "{ckpt}", "{image}"], "matplotlib", "viz"),
        (["data", "stats", "--format", "csv", "--root", "{tmp}", "--out", "{tmp}/s"], "matplotlib", "viz"),
        (["compare", "{tmp}"], "matplotlib", "viz"),
        (["demo", "--out", "{tmp}/demo"], "matplotlib", "viz"),
        (["export", "--checkpoint", "{ckpt}", "--out", "{tmp}/m.onnx"], "onnx", "export"),
    ],
)
def test_a_command_that_needs_a_missing_extra_says_which_to_install(
    command: list[str], blocked: str, extra: str, tiny_checkpoint: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setitem(sys.modules, blocked, None)  # importing it now fails, as when it is not installed
    image = _image(tmp_path / "a.png")
    argv = [a.format(ckpt=tiny_checkpoint, image=image, tmp=tmp_path) for a in command]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    package = EXTRAS[extra][blocked]
    assert re.fullmatch(
        rf"ctran {argv[0]}.*: error: .*needs {package}, .*pip install 'ctran\[{extra}\]'", err
    )


BLOCKER = """
import json, sys
for name in {modules!r}:
    sys.modules[name] = None  # not installed
from ctran.cli import main
for argv in json.loads(sys.argv[1]):
    code = main(argv)
    if code:
        sys.exit(f"ctran {{' '.join(argv)}} exited {{code}}")
"""


@pytest.mark.slow
def test_train_predict_and_tag_run_without_any_extra(digits_checkpoint: Path, tmp_path: Path) -> None:
    """The core install's jobs, one after the other in a fresh interpreter where every extra's packages
    are unimportable."""
    library, run, out = tmp_path / "library", tmp_path / "run", tmp_path / "predictions.json"
    library.mkdir()
    image = _image(library / "a.png")
    checkpoint = str(digits_checkpoint)
    commands = [
        ["predict", "--checkpoint", checkpoint, str(image), "--format", "json", "--output", str(out)],
        ["tag", str(library), "--checkpoint", checkpoint, "--workers", "0", "--quiet"],
        [
            "train", "--config", "digits-tiny", "--out", str(run), "--quiet", "train.epochs=1",
            "data.sizes={train: 32, val: 16, test: 16}", "train.batch_size=16", "data.num_workers=0",
        ],
    ]  # fmt: skip
    script = [sys.executable, "-c", BLOCKER.format(modules=EXTRA_MODULES), json.dumps(commands)]
    done = subprocess.run(script, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(out.read_text())[0]["image"] == str(image)
    assert (library / "a.txt").is_file()  # the tags ctran tag wrote
    assert (run / "best.pt").is_file() and (run / "metrics.json").is_file()
