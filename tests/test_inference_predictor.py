"""ctran.load and the Predictor: inputs of every kind, known labels as inputs, cached re-conditioning."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ctran
from ctran.checkpoint import load_checkpoint, save_checkpoint
from ctran.data.transforms import eval_transform, load_image
from ctran.errors import CTranError
from ctran.inference import Features, Prediction, Predictor
from ctran.model import build_baseline

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


def test_ids_sizes_and_messages_of_each_input_kind(tiny_checkpoint: Path, tmp_path: Path) -> None:
    predictor = ctran.load(tiny_checkpoint)
    pixels, name, size = predictor.read(torch.zeros(3, 40, 56))
    assert name == "tensor 0" and size == (56, 40) and pixels.dtype == torch.float32
    assert predictor.read(Image.new("RGB", (30, 20)))[1:] == ("image 0", (30, 20))
    assert predictor.read(Image.new("RGB", (30, 20)), position=4)[1] == "image 4"
    with pytest.raises(CTranError, match=r"got \(1, 48, 48\)$"):
        predictor.read(torch.zeros(1, 48, 48))
    with pytest.raises(
        CTranError, match=r"^image tensors must be float and normalised \(see Predictor\.normalization\)$"
    ):
        predictor.read(torch.zeros(3, 48, 48, dtype=torch.uint8))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(CTranError, match=r"broken.png: cannot read image \(UnidentifiedImageError: "):
        predictor.read(broken)
    model, meta = load_checkpoint(tiny_checkpoint)
    sizeless = Predictor(model, meta["target_names"], meta["extra_names"])
    path = _image(tmp_path / "a.png")
    with pytest.raises(CTranError, match=rf"^{path}: this checkpoint stores no image size"):
        sizeless.read(path)
    with pytest.raises(CTranError, match=r"^image 0: this checkpoint stores no image size"):
        sizeless.read(Image.open(path).convert("RGB"))


def test_names_replace_the_ids_batch_by_batch(tiny_checkpoint: Path) -> None:
    predictor = ctran.load(tiny_checkpoint)
    pixels = torch.randn(5, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    names = [f"photo {i}" for i in range(5)]
    assert [r.image for r in predictor.predict(pixels, names=names, batch_size=2)] == names
    assert predictor.encode(pixels, names=names, batch_size=2).images == names
    with pytest.raises(CTranError, match="^4 names for 5 images$"):
        predictor.predict(pixels, names=names[:4])
    with pytest.raises(CTranError, match="^no images given$"):
        predictor.encode([])
    with pytest.raises(CTranError, match=r"share a size, got .* \(in tensor 0, tensor 1\)$"):
        predictor.predict([torch.zeros(3, 48, 48), torch.zeros(3, 56, 56)])


def test_progress_bar_counts_images_and_clears_itself(tiny_checkpoint: Path, capsys) -> None:
    predictor = ctran.load(tiny_checkpoint)
    pixels = torch.zeros(3, 3, 48, 48)
    predictor.predict(pixels, batch_size=2)
    assert capsys.readouterr().err == ""
    predictor.predict(pixels, batch_size=2, progress=True)
    err = capsys.readouterr().err
    assert "predict:" in err and "0/3" in err and "img/s" in err
    assert not err.endswith("\n")  # leave=False: no finished bar left behind between outputs


def test_state_rows_are_decoded_in_chunks_of_batch_size(tiny_checkpoint: Path) -> None:
    whole, chunked = ctran.load(tiny_checkpoint, batch_size=64), ctran.load(tiny_checkpoint, batch_size=2)
    pixels = torch.randn(5, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    specs = [{"cat": True}, {}, {"dog": False}, {"car": True}, {"person": False}]
    features = whole.encode(pixels)
    for a, b in zip(whole.condition(features, specs), chunked.condition(features, specs), strict=True):
        assert a.probs == pytest.approx(b.probs, abs=1e-6) and a.known == b.known
    # one image's memory for many state rows, as suggest uses it (2 x 4 candidates > batch_size rows)
    for a, b in zip(whole.suggest(features, k=4), chunked.suggest(features, k=4), strict=True):
        assert [s.label for s in a] == [s.label for s in b]
        assert [s.information for s in a] == pytest.approx([s.information for s in b], abs=1e-6)


def test_states_name_the_argument_and_allow_an_empty_batch(tiny_checkpoint: Path) -> None:
    predictor = ctran.load(tiny_checkpoint)
    empty = predictor.states(None, None, 0)
    assert empty.shape == (0, 6) and empty.dtype == torch.long
    with pytest.raises(CTranError, match="^known: 1 label dicts for 2 images"):
        predictor.states([{}], None, 2)
    with pytest.raises(CTranError, match="^extra: 3 label dicts for 2 images"):
        predictor.states(None, [{}, {}, {}], 2)
    with pytest.raises(
        CTranError, match="^this checkpoint stores no calibrated thresholds; give a threshold"
    ):
        Predictor(predictor.model, TARGETS, ["indoor", "outdoor"]).cutoffs("calibrated")


def test_a_probability_equal_to_the_threshold_is_predicted(tiny_checkpoint: Path) -> None:
    predictor = ctran.load(tiny_checkpoint)
    [result] = predictor.predict(torch.zeros(3, 48, 48))
    cut = result.probs["cat"]
    [again] = predictor.predict(torch.zeros(3, 48, 48), threshold=cut)
    assert "cat" in again.predicted
    assert all(again.probs[n] >= cut for n in again.predicted)


def test_reduced_precision_follows_fp32(tiny_checkpoint: Path) -> None:
    fp32, bf16 = ctran.load(tiny_checkpoint), ctran.load(tiny_checkpoint, precision="bf16")
    pixels = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(2))
    for a, b in zip(
        fp32.predict(pixels, known={"cat": True}), bf16.predict(pixels, known={"cat": True}), strict=True
    ):
        assert a.probs == pytest.approx(b.probs, abs=0.05)


def test_load_defaults_and_refuses_a_baseline(tmp_path: Path) -> None:
    model = build_baseline(4, backbone="small_cnn")
    path = save_checkpoint(
        tmp_path / "b.pt", model, {"kind": "baseline", "backbone": "small_cnn", "num_labels": 4}, TARGETS, ()
    )
    with pytest.raises(
        CTranError, match=r"b.pt holds a PooledLinear, not C-Tran; only C-Tran takes known labels$"
    ):
        ctran.load(path)


def test_single_channel_rgba_and_other_arrays(tiny_checkpoint: Path, tmp_path: Path) -> None:
    predictor = ctran.load(tiny_checkpoint)
    path = _image(tmp_path / "a.png")
    grey = np.asarray(Image.open(path).convert("L"))  # (H, W)
    rgba = np.asarray(Image.open(path).convert("RGBA"))  # (H, W, 4)
    [from_grey] = predictor.predict(grey)
    [from_channel] = predictor.predict(grey[..., None])  # (H, W, 1)
    assert from_channel.probs == pytest.approx(from_grey.probs, abs=1e-6)
    [from_rgba] = predictor.predict(rgba)
    assert from_rgba.probs == pytest.approx(predictor.predict(Image.fromarray(rgba))[0].probs, abs=1e-6)
    for bad in (np.zeros((20, 30, 2), np.uint8), np.zeros((20, 30, 5), np.uint8)):
        with pytest.raises(CTranError, match="uint8 pixels"):
            predictor.predict(bad)


def _backbone_calls(predictor: Predictor) -> list[int]:
    """A list that grows by one at every backbone pass of ``predictor``."""
    calls: list[int] = []
    predictor.model.backbone.register_forward_hook(lambda *_: calls.append(1))
    return calls


def test_default_batch_size_is_32_images(tiny_checkpoint: Path) -> None:
    """Without ``batch_size``, ``ctran.load`` and ``Predictor`` decode 32 images per backbone pass."""
    pixels = torch.zeros(33, 3, 16, 16)  # one image more than a default batch
    loaded = ctran.load(tiny_checkpoint)
    model, meta = load_checkpoint(tiny_checkpoint)
    built = Predictor(model, meta["target_names"], meta["extra_names"])
    for predictor in (loaded, built):
        calls = _backbone_calls(predictor)
        assert len(predictor.predict(pixels)) == 33
        assert len(calls) == 2  # 32 + 1


def test_predictor_construction_errors_say_what_is_wrong(tiny_checkpoint: Path) -> None:
    """A wrong model, label count, threshold count or precision is a CTranError naming the numbers."""
    model, meta = load_checkpoint(tiny_checkpoint)
    with pytest.raises(CTranError, match="^a Predictor needs a C-Tran model, got PooledLinear$"):
        Predictor(build_baseline(4, backbone="small_cnn"), TARGETS)  # type: ignore[arg-type]
    with pytest.raises(
        CTranError,
        match=r"^the model has 6 label tokens but 5 label names were given \(4 targets \+ 1 extras\)$",
    ):
        Predictor(model, TARGETS, ["indoor"])
    with pytest.raises(CTranError, match="^3 thresholds for 4 target labels$"):
        Predictor(model, TARGETS, meta["extra_names"], thresholds=[0.5, 0.5, 0.5])
    fp16 = "^fp16 inference needs a CUDA device; on CPU use bf16 or fp32$"
    with pytest.raises(CTranError, match=fp16):
        Predictor(model, TARGETS, meta["extra_names"], precision="fp16")
    with pytest.raises(CTranError, match=fp16):
        ctran.load(tiny_checkpoint, precision="fp16")
    auto = Predictor(model, TARGETS, meta["extra_names"], precision="auto")
    assert auto.precision in {"fp32", "bf16"}  # resolved for the CPU


def test_calibrated_thresholds_are_float64_like_fixed_ones(tiny_checkpoint: Path) -> None:
    """Thresholds given as ints (e.g. from JSON) become float64 probabilities, as ``cutoffs(0.5)`` are."""
    model, meta = load_checkpoint(tiny_checkpoint)
    predictor = Predictor(model, TARGETS, meta["extra_names"], thresholds=[0, 1, 1, 0])
    calibrated = predictor.cutoffs("calibrated")  # (4,)
    assert calibrated.dtype == predictor.cutoffs(0.5).dtype == np.float64
    assert [type(t) for t in predictor.thresholds.tolist()] == [float] * 4  # as export writes them


def test_scale_size_resizes_then_centre_crops(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """With a stored ``scale_size`` images are resized to it and centre-cropped, as at evaluation."""
    model, meta = load_checkpoint(tiny_checkpoint)
    predictor = Predictor(model, TARGETS, meta["extra_names"], image_size=48, scale_size=64)
    path = _image(tmp_path / "a.png")
    pixels = predictor.read(path)[0]  # (3, 48, 48)
    assert torch.equal(pixels, eval_transform(48, 64)(load_image(path)))
    assert not torch.allclose(pixels, eval_transform(48, None)(load_image(path)))


def _nhwc(model: torch.nn.Module) -> bool:
    """Whether the backbone's convolution weights are stored channels-last (strictly NHWC)."""
    weights = [b for b in model.backbone.buffers() if b.dim() == 4 and b.shape[1] > 1]
    assert weights
    nhwc = [w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous() for w in weights]
    assert len(set(nhwc)) == 1
    return nhwc[0]


def test_load_speed_switches_layout_and_weight_dtype(tiny_checkpoint: Path) -> None:
    """``channels_last`` follows the precision unless given; bf16 stores the weights in bf16."""
    fp32, bf16 = ctran.load(tiny_checkpoint), ctran.load(tiny_checkpoint, precision="bf16")
    assert not _nhwc(fp32.model) and _nhwc(bf16.model)
    assert _nhwc(ctran.load(tiny_checkpoint, channels_last=True).model)
    assert not _nhwc(ctran.load(tiny_checkpoint, precision="bf16", channels_last=False).model)
    assert {p.dtype for p in fp32.model.backbone.buffers() if p.is_floating_point()} == {torch.float32}
    assert {p.dtype for p in bf16.model.backbone.buffers() if p.dim() == 4} == {torch.bfloat16}


def test_a_checkpoint_without_extra_names_has_no_extra_labels(tmp_path: Path) -> None:
    """A checkpoint that omits ``extra_names`` (older or hand-written) loads with no extra labels."""
    torch.manual_seed(0)
    config = {"backbone": "small_cnn", "dim": 16, "layers": 1, "heads": 2, "num_labels": 4}
    path = save_checkpoint(tmp_path / "c.pt", ctran.build_model(**config), config, TARGETS, image_size=48)
    payload = torch.load(path, weights_only=True)
    del payload["extra_names"]
    torch.save(payload, path)
    predictor = ctran.load(path)
    assert predictor.extra_names == [] and predictor.label_names == TARGETS
    [result] = predictor.predict(torch.zeros(3, 48, 48), known={"cat": True})
    assert list(result.probs) == ["dog", "person", "car"]


@pytest.fixture(scope="module")
def resnet_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A resnet18 C-Tran whose BatchNorms hold non-trivial statistics, so that folding them matters."""
    torch.manual_seed(0)
    config = {"kind": "ctran", "num_labels": 4, "backbone": "resnet18", "dim": 32, "layers": 1, "heads": 2}
    model = ctran.model.build_from_config(config)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.3, 1.2)
    path = tmp_path_factory.mktemp("resnet") / "r18.pt"
    return save_checkpoint(path, model, config, TARGETS, (), image_size=64)


def test_load_model_is_the_trainable_model_and_load_the_fused_one(resnet_checkpoint: Path) -> None:
    """``ctran.load(path).model`` is fused for inference (no ``conv1``, no training); ``ctran.load_model``
    has the backbone's original layers, trains, and gives the fused model's outputs."""
    predictor = ctran.load(resnet_checkpoint)
    assert not hasattr(predictor.model.backbone.body, "conv1")
    with pytest.raises(RuntimeError, match="for inference only"):
        predictor.model.train()(torch.randn(1, 3, 64, 64), torch.full((1, 4), -1))
    predictor.model.eval()
    model = ctran.load_model(resnet_checkpoint)
    assert isinstance(model.backbone.body.conv1, torch.nn.Conv2d)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert {p.dtype for p in model.parameters()} == {torch.float32} and not model.training
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    states = torch.tensor([[-1, 1, 0, -1], [1, -1, -1, 0]])
    with torch.inference_mode():
        expected = predictor.model(images, states)
        torch.testing.assert_close(model(images, states), expected, atol=1e-5, rtol=1e-5)
    model.train()
    before = model.backbone.body.conv1.weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model(images, states).sum().backward()
    optimizer.step()
    assert not torch.equal(model.backbone.body.conv1.weight, before)  # a real training step


def test_load_without_fusion_keeps_the_layers_and_the_predictions(resnet_checkpoint: Path) -> None:
    fused, plain = ctran.load(resnet_checkpoint), ctran.load(resnet_checkpoint, fuse=False)
    assert isinstance(plain.model.backbone.body.conv1, torch.nn.Conv2d)
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    expected, got = fused.predict(pixels, known={"dog": True}), plain.predict(pixels, known={"dog": True})
    for a, b in zip(expected, got, strict=True):
        assert a.probs == pytest.approx(b.probs, abs=1e-5)


def test_load_model_opens_baseline_checkpoints_too(tmp_path: Path) -> None:
    model = build_baseline(4, backbone="small_cnn")
    config = {"kind": "baseline", "backbone": "small_cnn", "num_labels": 4}
    path = save_checkpoint(tmp_path / "b.pt", model, config, TARGETS, ())
    loaded = ctran.load_model(path)
    assert type(loaded) is type(model)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
