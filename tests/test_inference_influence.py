"""``Predictor.influence``: how far known labels moved the others, checked against explicit predictions."""

from __future__ import annotations

import pytest
import torch

import ctran
from ctran.errors import CTranError
from ctran.inference import Change, Influence, Predictor
from ctran.inference.influence import influence_rows
from ctran.states import NEGATIVE, POSITIVE, UNKNOWN

TARGETS = ["cat", "dog", "person", "car", "bus"]
EXTRAS = ["indoor", "outdoor"]
KNOWN, EXTRA = {"dog": True, "car": False}, {"indoor": True}


def _predictor(attention: str = "full") -> Predictor:
    """A random 2-layer C-Tran; its state embeddings are scaled up so that known labels move the others."""
    torch.manual_seed(0)
    model = ctran.build_model(
        len(TARGETS) + len(EXTRAS), backbone="small_cnn", dim=32, layers=2, heads=2, attention=attention
    )
    with torch.no_grad():
        model.state_embed.weight.mul_(40)
    return Predictor(model, TARGETS, EXTRAS, image_size=48)


def _features(predictor: Predictor, count: int = 2):
    images = torch.randn(count, 3, 48, 48, generator=torch.Generator().manual_seed(3))
    return predictor.encode(images)


def _assert_changes(changes: list[Change], without: dict, told: dict) -> None:
    """Each change is the explicit ``without -> told`` of its label, largest |delta| first."""
    for change in changes:
        assert change.p_without == pytest.approx(without[change.label], abs=1e-6)
        assert change.p_with == pytest.approx(told[change.label], abs=1e-6)
        assert change.delta == pytest.approx(told[change.label] - without[change.label], abs=1e-6)
    sizes = [abs(c.delta) for c in changes]
    assert sizes == sorted(sizes, reverse=True)


@pytest.mark.parametrize("attention", ["full", "one_way"])
def test_overall_is_the_difference_of_two_explicit_predictions(attention: str) -> None:
    predictor = _predictor(attention)
    features = _features(predictor)
    moved = predictor.influence(features, KNOWN, EXTRA)
    nothing = predictor.condition(features)
    told = predictor.condition(features, KNOWN, EXTRA)
    for image, without, given in zip(moved, nothing, told, strict=True):
        assert {c.label for c in image.overall} == {"cat", "person", "bus"}  # every unknown target, no more
        _assert_changes(image.overall, without.probs, given.probs)
        assert max(abs(c.delta) for c in image.overall) > 1e-3  # told something, the others moved


@pytest.mark.parametrize("attention", ["full", "one_way"])
def test_each_known_labels_effect_is_leave_one_out(attention: str) -> None:
    predictor = _predictor(attention)
    features = _features(predictor)
    moved = predictor.influence(features, KNOWN, EXTRA)
    told = predictor.condition(features, KNOWN, EXTRA)
    for name in ("dog", "car", "indoor"):
        known = {k: v for k, v in KNOWN.items() if k != name}
        extra = {k: v for k, v in EXTRA.items() if k != name}
        all_but = predictor.condition(features, known, extra)
        for image, without, given in zip(moved, all_but, told, strict=True):
            assert list(image.by_label) == ["dog", "car", "indoor"]  # label order: targets, then extras
            _assert_changes(image.by_label[name], without.probs, given.probs)
            assert max(abs(c.delta) for c in image.by_label[name]) > 1e-3


def test_top_keeps_the_largest_changes() -> None:
    predictor = _predictor()
    features = _features(predictor, 1)
    [every] = predictor.influence(features, {"dog": True})
    [best] = predictor.influence(features, {"dog": True}, top=2)
    assert len(every.overall) == 4 and best.overall == every.overall[:2]
    assert best.by_label["dog"] == every.by_label["dog"][:2]
    with pytest.raises(CTranError, match="top must be a positive integer"):
        predictor.influence(features, {"dog": True}, top=0)


def test_nothing_known_moves_nothing_and_known_labels_may_differ_per_image() -> None:
    predictor = _predictor()
    features = _features(predictor)
    assert predictor.influence(features) == [Influence(), Influence()]
    first, second = predictor.influence(features, [{"dog": True}, {}])
    assert first.overall and list(first.by_label) == ["dog"] and second == Influence()
    assert first.to_dict()["overall"][0] == {
        "label": first.overall[0].label,
        "p_without": first.overall[0].p_without,
        "p_with": first.overall[0].p_with,
        "delta": first.overall[0].delta,
    }


def test_the_k_plus_2_rows_are_one_decode_call(monkeypatch) -> None:
    predictor = _predictor()
    features = _features(predictor, 1)
    calls = []
    decode = predictor.model.decode
    monkeypatch.setattr(predictor.model, "decode", lambda m, s: calls.append(tuple(s.shape)) or decode(m, s))
    predictor.influence(features, KNOWN, EXTRA)
    assert calls == [(5, len(TARGETS) + len(EXTRAS))]


def test_influence_rows_know_nothing_everything_and_all_but_each() -> None:
    states = torch.tensor([UNKNOWN, POSITIVE, UNKNOWN, NEGATIVE, UNKNOWN, POSITIVE, UNKNOWN])
    rows, known = influence_rows(states)
    assert known == [1, 3, 5]
    assert torch.equal(rows[0], torch.full_like(states, UNKNOWN))
    assert torch.equal(rows[1], states)
    for i, k in enumerate(known):
        expected = states.clone()
        expected[k] = UNKNOWN
        assert torch.equal(rows[2 + i], expected)
