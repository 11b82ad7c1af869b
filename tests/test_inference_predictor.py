"""ctran.load and the Predictor: inputs of every kind, known labels as inputs, cached re-conditioning."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ctran
from ctran.checkpoint import load_checkpoint
from ctran.data.transforms import eval_transform, load_image
from ctran.errors import CTranError
from ctran.inference import Features, Prediction, Predictor

TARGETS = ["cat", "dog", "person", "car"]


def _image(path: Path, mode: str = "RGB", size: tuple[int, int] = (60, 40), seed: int = 0) -> Path:
    """Save a random image in ``mode`` (RGB, L, RGBA, P or I;16) and return its path."""
    rng = np.random.default_rng(seed)
    w, h = size
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65535, (h, w), dtype=np.uint16))
    else:
        image = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).convert(mode)
    image.save(path)
    return path


def _reference_probs(checkpoint: Path, path: Path, states: list[int]) -> torch.Tensor:
    """The model called by hand: decode, resize, normalise, forward, sigmoid -> (L,)."""
    model, meta = load_checkpoint(checkpoint)
    pixels = eval_transform(meta["image_size"], None)(load_image(path))[None]
    with torch.no_grad():
        return model(pixels, torch.tensor([states])).sigmoid()[0]


def test_load_exposes_model_and_label_names(tiny_checkpoint: Path) -> None:
    predictor = ctran.load(tiny_checkpoint)
    assert isinstance(predictor, Predictor)
    assert isinstance(predictor.model, torch.nn.Module) and not predictor.model.training
    assert predictor.label_names == [*TARGETS, "indoor", "outdoor"]
    states = torch.full((2, 6), ctran.UNKNOWN)
    assert predictor.model(torch.randn(2, 3, 48, 48), states).shape == (2, 6)  # build_model's signature


def test_predict_matches_the_model_called_by_hand(tiny_checkpoint: Path, tmp_path: Path) -> None:
    path = _image(tmp_path / "a.png")
    predictor = ctran.load(tiny_checkpoint)
    [result] = predictor.predict(path, known={"dog": True, "car": False}, extra={"outdoor": True})
    expected = _reference_probs(tiny_checkpoint, path, [-1, 1, -1, 0, -1, 1])
    assert result.image == str(path)
    assert result.known == {"dog": True, "car": False, "outdoor": True}
    assert list(result.probs) == ["cat", "person"]  # known labels are inputs, not predictions
    assert result.probs["cat"] == pytest.approx(float(expected[0]), abs=1e-6)
    assert result.probs["person"] == pytest.approx(float(expected[2]), abs=1e-6)


def test_known_labels_change_the_other_predictions(tiny_checkpoint: Path, tmp_path: Path) -> None:
    predictor = ctran.load(tiny_checkpoint)
    path = _image(tmp_path / "a.png")
    free = predictor.predict(path)[0].probs
    told = predictor.predict(path, known={"dog": True})[0].probs
    assert free.keys() == set(TARGETS) and told.keys() == {"cat", "person", "car"}
    assert any(abs(free[n] - told[n]) > 1e-4 for n in told)


def test_every_input_kind_gives_the_same_answer(tiny_checkpoint: Path, tmp_path: Path) -> None:
    predictor = ctran.load(tiny_checkpoint)
    paths = [_image(tmp_path / f"{i}.png", seed=i) for i in range(3)]
    pixels = torch.stack([predictor.read(p)[0] for p in paths])  # (3, 3, 48, 48)
    by_path = predictor.predict([str(p) for p in paths])
    by_pil = predictor.predict([Image.open(p) for p in paths])
    by_batch = predictor.predict(pixels)
    by_list = predictor.predict([pixels[0], pixels[1:]])
    by_single = predictor.predict(pixels[2])
    small_batches = predictor.predict(paths, batch_size=2)
    reference = [r.probs for r in by_path]
    for results in (by_pil, by_batch, by_list, small_batches):
        for got, want in zip(results, reference, strict=True):
            assert got.probs == pytest.approx(want, abs=1e-6)
    assert by_single[0].probs == pytest.approx(reference[2], abs=1e-6)
    assert [r.image for r in by_batch] == ["tensor 0", "tensor 1", "tensor 2"]
    assert by_pil[0].image == str(paths[0])


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16"])
def test_grayscale_alpha_palette_and_16_bit_images(tiny_checkpoint: Path, tmp_path: Path, mode: str) -> None:
    path = _image(tmp_path / "odd.png", mode)
    assert Image.open(path).mode == mode
    [result] = ctran.load(tiny_checkpoint).predict(path)
    assert all(0.0 <= p <= 1.0 for p in result.probs.values())


def test_encode_once_then_condition_without_the_backbone(tiny_checkpoint: Path, tmp_path: Path) -> None:
    predictor = ctran.load(tiny_checkpoint)
    paths = [_image(tmp_path / f"{i}.png", seed=i, size=(50 + 10 * i, 40)) for i in range(3)]
    calls = []
    predictor.model.backbone.register_forward_hook(lambda *_: calls.append(1))
    features = predictor.encode(paths, batch_size=2)
    assert isinstance(features, Features) and len(features) == 3 and len(calls) == 2
    assert features.tokens.shape == (3, 36, 32) and features.grid == (6, 6)
    assert features.images == [str(p) for p in paths]
    assert features.sizes == [(50, 40), (60, 40), (70, 40)]
    for known in ({}, {"cat": True}, {"cat": False, "person": True}):
        before = len(calls)
        conditioned = predictor.condition(features, known=known, extra={"indoor": False})
        assert len(calls) == before  # no backbone pass
        direct = predictor.predict(paths, known=known, extra={"indoor": False})
        for got, want in zip(conditioned, direct, strict=True):
            assert got.probs == pytest.approx(want.probs, abs=1e-6) and got.known == want.known


def test_per_image_known_labels(tiny_checkpoint: Path, tmp_path: Path) -> None:
    predictor = ctran.load(tiny_checkpoint)
    paths = [_image(tmp_path / f"{i}.png", seed=i) for i in range(3)]
    specs = [{"cat": True}, {}, {"dog": False, "car": True}]
    together = predictor.predict(paths, known=specs, batch_size=2)
    for path, spec, result in zip(paths, specs, together, strict=True):
        alone = predictor.predict(path, known=spec)[0]
        assert result.known == alone.known and result.probs == pytest.approx(alone.probs, abs=1e-6)
    with pytest.raises(CTranError, match="2 label dicts for 3 images"):
        predictor.predict(paths, known=specs[:2])


def test_thresholds_fixed_and_calibrated(tiny_checkpoint: Path, tmp_path: Path) -> None:
    predictor = ctran.load(tiny_checkpoint)
    path = _image(tmp_path / "a.png")
    for threshold in (0.0, 0.45, 0.5, 1.0):
        [result] = predictor.predict(path, threshold=threshold)
        expected = [n for n, p in result.probs.items() if p >= threshold]
        assert sorted(result.predicted) == sorted(expected)
        assert [result.probs[n] for n in result.predicted] == sorted(
            (result.probs[n] for n in result.predicted), reverse=True
        )
    stored = dict(zip(TARGETS, [0.3, 0.5, 0.6, 0.7], strict=True))
    [result] = predictor.predict(path, threshold="calibrated")
    assert sorted(result.predicted) == sorted(n for n, p in result.probs.items() if p >= stored[n])
    with pytest.raises(CTranError, match="in \\[0, 1\\]"):
        predictor.predict(path, threshold=1.5)
    with pytest.raises(CTranError, match="'calibrated'"):
        predictor.predict(path, threshold="best")


def test_checkpoint_without_thresholds_refuses_calibrated(tiny_checkpoint: Path, tmp_path: Path) -> None:
    model, meta = load_checkpoint(tiny_checkpoint)
    predictor = Predictor(model, meta["target_names"], meta["extra_names"], image_size=48)
    with pytest.raises(CTranError, match="no calibrated thresholds"):
        predictor.predict(_image(tmp_path / "a.png"), threshold="calibrated")


def test_prediction_helpers() -> None:
    result = Prediction("x.png", {"a": 0.2, "b": 0.9, "c": 0.5}, {"d": True}, ["b", "c"])
    assert result.top(2) == [("b", 0.9), ("c", 0.5)]
    assert result.to_dict() == {
        "image": "x.png",
        "probs": {"a": 0.2, "b": 0.9, "c": 0.5},
        "known": {"d": True},
        "predicted": ["b", "c"],
    }


def test_bad_inputs_say_what_is_wrong(tiny_checkpoint: Path, tmp_path: Path) -> None:
    predictor = ctran.load(tiny_checkpoint)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 definitely not a jpeg")
    with pytest.raises(CTranError, match="broken.jpg: cannot read image"):
        predictor.predict(broken)
    with pytest.raises(CTranError, match="missing.png: no such image file"):
        predictor.predict(tmp_path / "missing.png")
    with pytest.raises(CTranError, match="unknown target label 'dgo'; closest: dog"):
        predictor.predict(torch.zeros(3, 48, 48), known={"dgo": True})
    with pytest.raises(CTranError, match=r"\(3, H, W\) or \(B, 3, H, W\)"):
        predictor.predict(torch.zeros(1, 48, 48))
    with pytest.raises(CTranError, match="float and normalised"):
        predictor.predict(torch.zeros(3, 48, 48, dtype=torch.uint8))
    with pytest.raises(CTranError, match="must share a size"):
        predictor.predict([torch.zeros(3, 48, 48), torch.zeros(3, 56, 56)])
    with pytest.raises(CTranError, match="no images given"):
        predictor.predict([])


def test_load_refuses_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(CTranError, match="checkpoint not found"):
        ctran.load(tmp_path / "nope.pt")
    junk = tmp_path / "junk.pt"
    torch.save({"weights": 1}, junk)
    with pytest.raises(CTranError, match="not a ctran checkpoint"):
        ctran.load(junk)


def test_numpy_images_are_read_like_pil_images_and_tensors(tiny_checkpoint: Path, tmp_path: Path) -> None:
    predictor = ctran.load(tiny_checkpoint)
    path = _image(tmp_path / "a.png")
    pixels = np.asarray(Image.open(path).convert("RGB"))  # (H, W, 3) uint8, as PIL/imageio/OpenCV give
    [from_file] = predictor.predict(path)
    [from_array] = predictor.predict(pixels)
    assert from_array.probs == pytest.approx(from_file.probs, abs=1e-6)
    for result in predictor.predict(np.stack([pixels, pixels])):  # (B, H, W, 3): B images
        assert result.probs == pytest.approx(from_array.probs, abs=1e-6)
    grey = np.asarray(Image.open(path).convert("L"))  # (H, W)
    [from_grey] = predictor.predict(grey)
    assert from_grey.probs == pytest.approx(predictor.predict(Image.fromarray(grey))[0].probs, abs=1e-6)
    normalised = predictor.read(path)[0].numpy()  # float (3, S, S), as a tensor would be
    [from_float] = predictor.predict(normalised)
    assert from_float.probs == pytest.approx(from_file.probs, abs=1e-6)
    with pytest.raises(CTranError, match="uint8 pixels"):
        predictor.predict(pixels.astype(np.int64))
