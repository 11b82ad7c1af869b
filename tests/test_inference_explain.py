"""Explanations: label-token attention maps (last layer, rollout), label-to-label matrix, plots, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ctran
from ctran.cli import main
from ctran.errors import CTranError
from ctran.inference.explain import attention_flow

LABELS = ["cat", "dog", "person", "car", "indoor", "outdoor"]


@pytest.fixture
def image_path(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "scene.png"
    Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(path)
    return path


def _attentions(predictor: ctran.inference.Predictor, pixels: torch.Tensor, states: list[int]) -> list:
    with torch.no_grad():
        out = predictor.model(pixels[None], torch.tensor([states]), return_attention=True)
    return [a[0].double().numpy() for a in out.attentions]  # per layer (heads, N, N)


def _rollout_reference(layers: list[np.ndarray]) -> np.ndarray:
    """Abnar & Zuidema, written out: R = prod_l norm(0.5 * mean_heads(A_l) + 0.5 * I), last layer leftmost."""
    flow = np.eye(layers[0].shape[-1])
    for weights in layers:
        a = 0.5 * weights.mean(axis=0) + 0.5 * np.eye(weights.shape[-1])
        flow = (a / a.sum(axis=1, keepdims=True)) @ flow
    return flow


@pytest.mark.parametrize("rollout", [False, True])
def test_maps_are_the_label_rows_of_the_attention(
    tiny_checkpoint: Path, image_path: Path, rollout: bool
) -> None:
    predictor = ctran.load(tiny_checkpoint)
    explanation = predictor.explain(
        image_path, labels=["dog", "outdoor"], known={"cat": True}, rollout=rollout
    )
    layers = _attentions(predictor, predictor.read(image_path)[0], [1, -1, -1, -1, -1, -1])
    assert len(layers) == 2
    flow = _rollout_reference(layers) if rollout else layers[-1].mean(axis=0)  # (N, N)
    tokens = flow.shape[0] - len(LABELS)
    assert tokens == 36 and explanation.grid == (6, 6)
    for name in ("dog", "outdoor"):
        row = flow[tokens + LABELS.index(name)]
        np.testing.assert_allclose(explanation.maps[name], row[:tokens].reshape(6, 6), atol=1e-6)
    np.testing.assert_allclose(explanation.label_attention, flow[tokens:, tokens:], atol=1e-6)
    assert explanation.method == ("rollout" if rollout else "last")
    assert explanation.known == {"cat": True} and "cat" not in explanation.probs
    if rollout:  # rollout rows stay distributions over all tokens
        np.testing.assert_allclose(flow.sum(axis=1), 1.0, atol=1e-9)


def test_rollout_of_one_layer_mixes_in_the_identity() -> None:
    weights = torch.softmax(torch.randn(1, 2, 5, 5), dim=-1)
    expected = 0.5 * weights.mean(dim=1) + 0.5 * torch.eye(5)
    torch.testing.assert_close(attention_flow([weights], rollout=True), expected)
    torch.testing.assert_close(attention_flow([weights], rollout=False), weights.mean(dim=1))


def test_default_labels_are_the_most_probable_and_heatmaps_fit_the_picture(
    tiny_checkpoint: Path, image_path: Path
) -> None:
    predictor = ctran.load(tiny_checkpoint)
    explanation = predictor.explain(image_path, top_k=2)
    [prediction] = predictor.predict(image_path)
    assert explanation.labels == [name for name, _ in prediction.top(2)]
    assert explanation.probs == pytest.approx(prediction.probs, abs=1e-6)
    assert explanation.picture.shape == (48, 48, 3) and explanation.picture.dtype == np.uint8
    heat = explanation.heatmap(explanation.labels[0])
    assert heat.shape == (48, 48)
    assert heat.min() >= explanation.maps[explanation.labels[0]].min() - 1e-6


def test_grid_follows_the_backbone_for_non_square_tensors(tiny_checkpoint: Path) -> None:
    predictor = ctran.load(tiny_checkpoint)
    explanation = predictor.explain(torch.randn(3, 64, 40), labels=["car"])
    assert explanation.grid == (8, 5) and explanation.maps["car"].shape == (8, 5)
    assert explanation.picture.shape == (64, 40, 3)


def test_unknown_label_to_explain(tiny_checkpoint: Path, image_path: Path) -> None:
    with pytest.raises(CTranError, match="unknown label 'dgo'; closest: dog"):
        ctran.load(tiny_checkpoint).explain(image_path, labels=["dgo"])


def test_cli_writes_plots_and_raw_maps(
    tiny_checkpoint: Path, image_path: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "why"
    code = main(
        [
            "explain",
            str(image_path),
            "--checkpoint",
            str(tiny_checkpoint),
            "--labels",
            "dog,person,outdoor",
            "--known",
            "cat=1",
            "--rollout",
            "--out",
            str(out),
            "--json",
            str(tmp_path / "copy.json"),
        ]
    )
    assert code == 0
    names = {p.name for p in out.iterdir()}
    assert names == {
        "overview.png",
        "attention_dog.png",
        "attention_person.png",
        "attention_outdoor.png",
        "label_attention.png",
        "explanation.json",
    }
    for name in names - {"explanation.json"}:
        assert Image.open(out / name).size[0] > 100
    data = json.loads((out / "explanation.json").read_text())
    assert data["method"] == "rollout" and data["known"] == {"cat": True} and data["grid"] == [6, 6]
    assert set(data["maps"]) == {"dog", "person", "outdoor"} and np.shape(data["maps"]["dog"]) == (6, 6)
    assert np.shape(data["label_attention"]) == (6, 6) and data["label_names"] == LABELS
    assert json.loads((tmp_path / "copy.json").read_text()) == data
    printed = capsys.readouterr().out
    assert "| dog |" in printed and "| outdoor | - |" in printed


def test_cli_bad_label_exits_2(tiny_checkpoint: Path, image_path: Path, tmp_path: Path, capsys) -> None:
    args = ["explain", str(image_path), "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "o")]
    assert main([*args, "--known", "indor=1"]) == 2
    assert "unknown target label 'indor'" in capsys.readouterr().err


def test_one_way_models_explain_too(image_path: Path) -> None:
    """One-way caches no image rows, so explanations run the whole masked sequence; the image tokens'
    rows attend to no label, and the probabilities are those of the cached path."""
    torch.manual_seed(0)
    model = ctran.build_model(6, backbone="small_cnn", dim=32, layers=2, heads=2, attention="one_way")
    predictor = ctran.inference.Predictor(model, LABELS[:4], LABELS[4:], image_size=48)
    explanation = predictor.explain(image_path, labels=["dog"], known={"cat": True}, rollout=True)
    layers = _attentions(predictor, predictor.read(image_path)[0], [1, -1, -1, -1, -1, -1])
    assert all(np.abs(a[:, :36, 36:]).max() == 0 for a in layers)
    flow = _rollout_reference(layers)
    np.testing.assert_allclose(explanation.maps["dog"], flow[36 + 1, :36].reshape(6, 6), atol=1e-6)
    cached = predictor.predict(image_path, known={"cat": True})[0].probs
    assert explanation.probs == pytest.approx(cached, abs=1e-6)
