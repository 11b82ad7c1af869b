"""The evaluation protocol: settings, one encode per batch, and partial metrics over unknown labels only."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

import ctran
from ctran.data.digit_scenes import load_digit_scenes
from ctran.metrics import METRIC_KEYS, multilabel_metrics
from ctran.states import NEGATIVE, POSITIVE, UNKNOWN
from ctran.training.evaluation import Setting, collect_scores, evaluate, input_states, standard_settings
from ctran.training.label_mask import evaluation_states, positive_states

NUM_IMAGES = 64
NUM_TARGETS, NUM_EXTRAS = 16, 4


@pytest.fixture(scope="module")
def dataset():
    return load_digit_scenes("test", 0, NUM_IMAGES)


class CheatingModel(nn.Module):
    """A fake C-Tran: image-dependent base logits, +10 / -10 on labels it is told are positive / negative.

    If revealed labels were scored, this model would look much better than its base logits; the protocol
    must score exactly the base logits on the labels left unknown. Counts encode and decode calls.
    """

    def __init__(self, num_labels: int = NUM_TARGETS + NUM_EXTRAS) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.register_buffer("proj", torch.randn(3 * 48 * 48, num_labels, generator=generator) / 100)
        self.encode_calls = 0
        self.decode_calls = 0

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        self.encode_calls += 1
        return images.flatten(1) @ self.proj  # (B, L): the base logits, cached across settings

    def decode(self, tokens: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        self.decode_calls += 1
        return tokens + 10.0 * (states == POSITIVE) - 10.0 * (states == NEGATIVE)

    def forward(self, images: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(images), states)


def _loader(dataset, batch_size: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False)


def _all(dataset):
    images, targets, extras, indices = next(iter(_loader(dataset, len(dataset))))
    return images, targets, extras, indices


# ---------------------------------------------------------------------------------------------- settings


def test_standard_settings_names():
    names = [s.name for s in standard_settings()]
    assert names == [
        "regular",
        *("partial_0.25", "partial_0.5", "partial_0.75"),
        *("positives_0.25", "positives_0.5", "positives_0.75"),
        "extra",
    ]
    assert [s.name for s in standard_settings((0.5,), extra=False, positives=())] == [
        "regular",
        "partial_0.5",
    ]
    assert [s.name for s in standard_settings((0.0, 0.3), positives=(0, 1))] == [
        "regular",
        "partial_0.3",
        "positives_1",
        "extra",
    ]
    extra = standard_settings()[-1]
    assert extra.reveal_extras and extra.known_fraction == 0 and extra.known_positives == 0
    with pytest.raises(ValueError, match="not both"):
        Setting(known_fraction=0.5, known_positives=0.5)


def test_input_states(dataset):
    _, targets, extras, indices = _all(dataset)
    regular = input_states(Setting(), targets, extras, indices, seed=0)
    assert regular.shape == (NUM_IMAGES, NUM_TARGETS + NUM_EXTRAS)
    assert (regular == UNKNOWN).all()

    extra = input_states(Setting(reveal_extras=True), targets, extras, indices, seed=0)
    assert (extra[:, :NUM_TARGETS] == UNKNOWN).all()
    assert torch.equal(extra[:, NUM_TARGETS:], extras)

    partial = input_states(Setting(known_fraction=0.5), targets, extras, indices, seed=0)
    assert torch.equal(partial[:, :NUM_TARGETS], evaluation_states(targets, indices, 0.5, 0))
    assert ((partial[:, :NUM_TARGETS] != UNKNOWN).sum(1) == 8).all()
    assert (partial[:, NUM_TARGETS:] == UNKNOWN).all()

    positives = input_states(
        Setting(reveal_extras=True, known_positives=0.5), targets, extras, indices, seed=0
    )
    assert torch.equal(positives[:, :NUM_TARGETS], positive_states(targets, indices, 0.5, 0))
    assert (positives[:, :NUM_TARGETS] != NEGATIVE).all() and (positives[:, :NUM_TARGETS] == POSITIVE).any()
    assert torch.equal(positives[:, NUM_TARGETS:], extras)


# ---------------------------------------------------------------------------------------------- evaluate


def test_evaluate_untrained_model_report_structure(dataset):
    torch.manual_seed(0)
    model = ctran.build_model(NUM_TARGETS + NUM_EXTRAS, backbone="small_cnn", dim=32, layers=1, heads=2)
    results = evaluate(model, _loader(dataset, 32))
    assert set(results) == {"regular", "partial", "positives", "extra"}
    assert set(results["partial"]) == set(results["positives"]) == {"0.25", "0.5", "0.75"}
    assert "untold_mAP" not in results["regular"] and "gain" not in results["regular"]
    told = [results["extra"], *results["partial"].values(), *results["positives"].values()]
    for metrics in [results["regular"], *told]:
        assert set(METRIC_KEYS) <= set(metrics)
        assert metrics["n_images"] == NUM_IMAGES
        for key in METRIC_KEYS:
            assert 0.0 <= metrics[key] <= 100.0, key
    for metrics in told:
        assert list(metrics)[:3] == ["mAP", "untold_mAP", "gain"]
        assert metrics["gain"] == pytest.approx(metrics["mAP"] - metrics["untold_mAP"])
    assert results["extra"]["untold_mAP"] == results["regular"]["mAP"]  # extras: regular's entries
    assert not model.training  # evaluation leaves the model in eval mode


def test_partial_metrics_score_only_unknown_labels(dataset):
    """Told settings score exactly the base logits on the labels left unknown; this model changes no
    unknown label's logit, so measured on the same entries being told gains exactly nothing."""
    model = CheatingModel()
    seed = 5
    results = evaluate(model, _loader(dataset, 16), seed=seed)
    images, targets, _, indices = _all(dataset)
    with torch.no_grad():
        base = model.encode(images)[:, :NUM_TARGETS].sigmoid()

    regular = multilabel_metrics(base, targets)
    for key in METRIC_KEYS:
        assert results["regular"][key] == pytest.approx(regular[key], abs=1e-9)
        # Revealing the extras changes no target logit of this model, and no target is masked.
        assert results["extra"][key] == pytest.approx(regular[key], abs=1e-9)
    assert results["extra"]["gain"] == 0

    for kind, fraction in [(kind, f) for kind in ("partial", "positives") for f in (0.25, 0.5, 0.75)]:
        draw = evaluation_states if kind == "partial" else positive_states
        states = draw(targets, indices, fraction, seed)
        unknown = states == UNKNOWN
        expected = multilabel_metrics(base, targets, mask=unknown)
        got = results[kind][f"{fraction:g}"]
        for key in METRIC_KEYS:
            assert got[key] == pytest.approx(expected[key], abs=1e-9), (kind, fraction, key)
        assert got["untold_mAP"] == pytest.approx(expected["mAP"], abs=1e-9)
        assert got["gain"] == pytest.approx(0.0, abs=1e-9)  # on other entries it would read as a change
        # Scoring the revealed labels too would have inflated the result: the check has teeth.
        cheated = torch.where(states == POSITIVE, 1.0, torch.where(states == NEGATIVE, 0.0, base))
        assert multilabel_metrics(cheated, targets)["mAP"] > expected["mAP"] + 5


def test_collect_scores_mask_is_false_exactly_on_revealed(dataset):
    model = CheatingModel()
    settings = standard_settings()
    scores = collect_scores(model, _loader(dataset, 24), settings, seed=1)
    _, targets, _, indices = _all(dataset)
    for setting in settings:
        probs, truth, scored = scores[setting][:3]
        assert probs.shape == truth.shape == scored.shape == (NUM_IMAGES, NUM_TARGETS)
        assert torch.equal(truth, targets)
        assert ((probs >= 0) & (probs <= 1)).all()
        states = input_states(setting, targets, torch.zeros(NUM_IMAGES, NUM_EXTRAS), indices, 1)
        revealed = states[:, :NUM_TARGETS] != UNKNOWN
        assert torch.equal(scored, ~revealed), setting.name
        assert bool(scored.all()) is not setting.reveals_targets


def test_encode_runs_once_per_batch(dataset):
    model = CheatingModel()
    settings = standard_settings()
    evaluate(model, _loader(dataset, 16), settings)
    batches = math.ceil(NUM_IMAGES / 16)
    assert model.encode_calls == batches
    assert model.decode_calls == batches * len(settings)


def test_results_do_not_depend_on_batch_size(dataset):
    small = evaluate(CheatingModel(), _loader(dataset, 10), seed=2)
    large = evaluate(CheatingModel(), _loader(dataset, 64), seed=2)
    for fraction in ("0.25", "0.5", "0.75"):
        for key in METRIC_KEYS:
            assert small["partial"][fraction][key] == pytest.approx(large["partial"][fraction][key], abs=1e-9)


def test_partial_known_sets_follow_the_seed(dataset):
    a = evaluate(CheatingModel(), _loader(dataset, 32), seed=0)
    b = evaluate(CheatingModel(), _loader(dataset, 32), seed=1)
    assert a["regular"] == b["regular"]
    assert a["partial"]["0.5"]["mAP"] != b["partial"]["0.5"]["mAP"]
