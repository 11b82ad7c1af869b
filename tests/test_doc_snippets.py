"""The documentation's Python snippets run as written (the ONNX one end to end, preprocessing included)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ctran
from ctran.checkpoint import save_checkpoint
from ctran.data.digit_scenes import CONTEXT_NAMES, DIGIT_NAMES, TAG_NAMES

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def python_block(containing: str) -> str:
    """The one ```python block of the README and docs/ pages that contains ``containing``."""
    blocks = [
        block
        for page in PAGES
        for block in re.findall(r"```python\n(.*?)```", page.read_text(), re.S)
        if containing in block
    ]
    assert len(blocks) == 1, f"{len(blocks)} python blocks of the docs contain {containing!r}"
    return blocks[0]


def test_build_model_snippet_predicts_in_eval_mode() -> None:
    """The paper-size snippet, shrunk (backbone, width, image size) so that it runs in a second."""
    code = python_block("ctran.build_model(num_labels=80")
    for paper, small in (
        ('backbone="resnet101"', 'backbone="small_cnn", dim=32'),
        ("torch.randn(2, 3, 576, 576)", "torch.randn(2, 3, 48, 48)"),
    ):
        assert code.count(paper) == 1, paper
        code = code.replace(paper, small)
    namespace: dict = {}
    exec(code, namespace)
    model = namespace["model"]
    assert not model.training
    with torch.inference_mode():
        again = model(namespace["images"], namespace["states"])
    torch.testing.assert_close(again, namespace["logits"])  # no dropout: the same call, the same numbers


@pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime")), reason="needs ctran[export]"
)
def test_onnx_snippet_runs_as_written_and_matches_the_predictor(tmp_path: Path, monkeypatch, capsys) -> None:
    config = {"kind": "ctran", "num_labels": 20, "backbone": "small_cnn", "dim": 16, "layers": 1, "heads": 2}
    torch.manual_seed(0)
    model = ctran.model.build_from_config(config)
    checkpoint = save_checkpoint(
        tmp_path / "ctran.pt",
        model,
        config,
        DIGIT_NAMES + TAG_NAMES,
        CONTEXT_NAMES,
        image_size=48,
        scale_size=56,
    )
    from ctran.inference.export import export

    predictor = ctran.load(checkpoint)
    export(predictor, tmp_path / "ctran.onnx", "onnx")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)).save(tmp_path / "scene.png")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(python_block("onnxruntime.InferenceSession"), namespace)
    capsys.readouterr()
    [expected] = predictor.predict("scene.png", known={"digit_3": True})
    got = dict(zip(namespace["meta"]["target_names"], namespace["probs"][0].tolist(), strict=True))
    assert set(expected.probs) == set(got) - {"digit_3"}  # the known label is an input, not a prediction
    for name, p in expected.probs.items():
        assert got[name] == pytest.approx(p, abs=1e-4), name


def test_readme_quick_start_snippet_runs(digits_checkpoint: Path, tmp_path: Path, monkeypatch) -> None:
    """The front page's Python lines, on an untrained digit-scenes checkpoint in place of the demo's."""
    code = python_block('predictor = ctran.load("runs/demo/ctran.pt")')
    assert code.count('"runs/demo/ctran.pt"') == 2
    code = code.replace('"runs/demo/ctran.pt"', repr(str(digits_checkpoint)))
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(tmp_path / "scene.png")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(code, namespace)
    assert "digit_3" in namespace["result"].known and "digit_3" not in namespace["result"].probs
    assert len(namespace["result"].top(3)) == 3
    model = namespace["model"]  # the trainable module: BatchNorm still there, not folded away
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
