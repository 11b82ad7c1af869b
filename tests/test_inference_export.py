"""Export: ONNX (onnxruntime) and TorchScript give PyTorch's logits for any batch size, metadata included."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import ctran
from ctran.cli import main
from ctran.errors import CTranError
from ctran.inference.export import export, format_for, read_metadata, run_exported


def _inputs(batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    states = torch.randint(-1, 2, (batch, 6), generator=generator)
    return torch.randn(batch, 3, 48, 48, generator=generator), states


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_exported_logits_match_pytorch_for_other_batch_sizes(
    tiny_checkpoint: Path, tmp_path: Path, fmt: str
) -> None:
    predictor = ctran.load(tiny_checkpoint)
    path = export(predictor, tmp_path / f"model.{'onnx' if fmt == 'onnx' else 'pt'}", fmt)
    for batch in (1, 2, 5):  # traced with 2
        image, states = _inputs(batch, seed=batch)
        with torch.no_grad():
            expected = predictor.model(image, states).numpy()
        got = run_exported(path, image, states, fmt)
        assert got.shape == (batch, 6)
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    meta = read_metadata(path)
    assert meta["target_names"] == ["cat", "dog", "person", "car"]
    assert meta["extra_names"] == ["indoor", "outdoor"]
    assert meta["image_size"] == 48 and meta["thresholds"] == [0.3, 0.5, 0.6, 0.7]


def test_known_states_reach_the_exported_graph(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """Changing only the states changes the ONNX logits exactly as in PyTorch (no constant was baked in)."""
    predictor = ctran.load(tiny_checkpoint)
    path = export(predictor, tmp_path / "model.onnx")
    image = torch.randn(1, 3, 48, 48).expand(3, -1, -1, -1).contiguous()
    states = torch.tensor([[-1] * 6, [1, -1, -1, 0, -1, 1], [0, 0, 0, 0, 0, 0]])
    got = run_exported(path, image, states)
    assert np.abs(got[0] - got[1]).max() > 1e-4
    with torch.no_grad():
        np.testing.assert_allclose(got, predictor.model(image, states).numpy(), atol=1e-4, rtol=0)


def test_format_from_suffix() -> None:
    assert format_for("m.onnx") == "onnx" and format_for("m.pt") == "torchscript"
    assert format_for("m.bin", "onnx") == "onnx"
    with pytest.raises(CTranError, match="cannot tell the format"):
        format_for("m.bin")


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_cli_exports_and_verifies(tiny_checkpoint: Path, tmp_path: Path, fmt: str, capsys) -> None:
    out, summary = tmp_path / "exported.bin", tmp_path / "summary.json"
    args = ["export", "--checkpoint", str(tiny_checkpoint), "--format", fmt, "--out", str(out)]
    assert main([*args, "--json", str(summary)]) == 0
    data = json.loads(summary.read_text())
    assert data["format"] == fmt and data["max_abs_diff_vs_pytorch"] < 1e-4
    assert data["inputs"]["label_states"] == ["batch", 6]
    assert "max_abs_diff_vs_pytorch" in capsys.readouterr().out


def test_cli_needs_a_format_it_can_tell(tiny_checkpoint: Path, tmp_path: Path, capsys) -> None:
    assert main(["export", "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "m.bin")]) == 2
    assert "--format onnx|torchscript" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_one_way_models_export_with_their_attention(tmp_path: Path, fmt: str) -> None:
    """The exported graph of a one-way model is its forward (image stream, then label rows) for any batch."""
    from ctran.checkpoint import save_checkpoint

    torch.manual_seed(0)
    config = {"kind": "ctran", "backbone": "small_cnn", "dim": 32, "layers": 2, "heads": 2, "num_labels": 6}
    config["attention"] = "one_way"
    model = ctran.build_model(**{k: v for k, v in config.items() if k != "kind"})
    names = ["cat", "dog", "person", "car"]
    checkpoint = save_checkpoint(tmp_path / "one_way.pt", model, config, names, ["indoor", "outdoor"], 48)
    predictor = ctran.load(checkpoint)
    path = export(predictor, tmp_path / f"model.{'onnx' if fmt == 'onnx' else 'pt'}", fmt)
    for batch in (1, 3):
        image, states = _inputs(batch, seed=batch)
        with torch.no_grad():
            expected = predictor.model(image, states, return_attention=True).logits.numpy()
        np.testing.assert_allclose(run_exported(path, image, states, fmt), expected, atol=1e-4, rtol=0)
