"""``Predictor.suggest`` ("which label should I tell you next?") and re-conditioning of one-way models."""

from __future__ import annotations

import math

import pytest
import torch

import ctran
from ctran.errors import CTranError
from ctran.inference import Features, Predictor, Suggestion
from ctran.inference.suggest import binary_entropy
from ctran.states import UNKNOWN

TARGETS = ["cat", "dog", "person", "car", "bus"]
EXTRAS = ["indoor", "outdoor"]


def _predictor(attention: str = "full", seed: int = 0, batch_size: int = 32) -> Predictor:
    """A random 2-layer C-Tran; its state embeddings are scaled up so that known labels move the others."""
    torch.manual_seed(seed)
    model = ctran.build_model(
        len(TARGETS) + len(EXTRAS), backbone="small_cnn", dim=32, layers=2, heads=2, attention=attention
    )
    with torch.no_grad():
        model.state_embed.weight.mul_(40)
    return Predictor(model, TARGETS, EXTRAS, image_size=48, batch_size=batch_size)


def _features(predictor: Predictor, count: int = 1):
    images = torch.randn(count, 3, 48, 48, generator=torch.Generator().manual_seed(3))
    return predictor.encode(images)


def _entropy(p: float) -> float:
    return 0.0 if p in (0.0, 1.0) else -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def _brute_force(predictor: Predictor, features, known: dict) -> dict[str, float]:
    """Expected information of each unknown target, one ``condition`` call per answer, by the formula."""
    now = predictor.condition(features, known)[0].probs
    scores = {}
    for label, p in now.items():
        others_now = sum(_entropy(q) for name, q in now.items() if name != label)
        after = {}
        for answer in (True, False):
            told = predictor.condition(features, {**known, label: answer})[0].probs
            after[answer] = sum(map(_entropy, told.values()))
        scores[label] = others_now - (p * after[True] + (1 - p) * after[False])
    return scores


@pytest.mark.parametrize("attention", ["full", "one_way"])
def test_information_is_the_expected_entropy_reduction_of_the_others(attention: str) -> None:
    predictor = _predictor(attention)
    features = _features(predictor)
    known = {"dog": True}
    expected = _brute_force(predictor, features, known)
    [suggestions] = predictor.suggest(features, known, k=10)
    assert all(isinstance(s, Suggestion) for s in suggestions)
    assert [s.label for s in suggestions] == sorted(expected, key=lambda n: -expected[n])
    for s in suggestions:
        assert s.information == pytest.approx(expected[s.label], abs=1e-5)
        assert s.uncertainty == pytest.approx(_entropy(s.probability), abs=1e-9)
    assert max(expected.values()) - min(expected.values()) > 1e-3  # the ranking is not a tie


def test_both_answers_for_every_candidate_go_through_one_batched_call() -> None:
    predictor = _predictor()
    features = _features(predictor)
    calls = []
    decode = predictor.model.decode
    predictor.model.decode = lambda memory, states: calls.append(len(states)) or decode(memory, states)
    [suggestions] = predictor.suggest(features, {"cat": False}, k=2)
    assert calls == [1, 2 * 4]  # what is known now, then yes and no for the 4 unknown targets at once
    assert len(suggestions) == 2 and "cat" not in {s.label for s in suggestions}
    calls.clear()
    predictor.suggest(features, {"cat": False}, k=2, method="uncertainty")
    assert calls == [1]  # the cheap option needs no hypothetical answers


def test_candidates_bound_the_work_to_the_most_uncertain_labels() -> None:
    """Only the 2 most uncertain labels are tried (4 rows); their scores still count every other label."""
    predictor = _predictor(seed=2)
    features = _features(predictor)
    probs = predictor.condition(features)[0].probs
    expected = _brute_force(predictor, features, {})
    calls = []
    decode = predictor.model.decode
    predictor.model.decode = lambda memory, states: calls.append(len(states)) or decode(memory, states)
    [suggestions] = predictor.suggest(features, k=5, candidates=2)
    assert calls == [1, 4]
    most_uncertain = sorted(probs, key=lambda n: abs(probs[n] - 0.5))[:2]
    assert sorted(s.label for s in suggestions) == sorted(most_uncertain)
    for s in suggestions:
        assert s.information == pytest.approx(expected[s.label], abs=1e-5)
    assert suggestions[0].information >= suggestions[1].information
    with pytest.raises(CTranError, match="candidates must be a positive integer"):
        predictor.suggest(features, candidates=0)


def test_uncertainty_ranks_by_the_labels_own_entropy() -> None:
    predictor = _predictor(seed=1)
    features = _features(predictor)
    probs = predictor.condition(features, {"bus": True})[0].probs
    [suggestions] = predictor.suggest(features, {"bus": True}, k=3, method="uncertainty")
    closest = sorted(probs, key=lambda n: abs(probs[n] - 0.5))[:3]
    assert [s.label for s in suggestions] == closest
    assert all(s.information is None for s in suggestions)


def test_per_image_suggestions_and_limits() -> None:
    predictor = _predictor(batch_size=3)  # hypotheses are decoded 3 rows at a time
    features = _features(predictor, count=2)
    specs = [{"cat": True}, dict.fromkeys(TARGETS, False)]
    first, everything_known = predictor.suggest(features, specs, k=50)
    assert {s.label for s in first} == set(TARGETS) - {"cat"} and everything_known == []
    first_image = Features(features.tokens[:1], features.grid, ["a"], [(48, 48)])
    alone = predictor.suggest(first_image, specs[0])
    assert [s.label for s in alone[0]] == [s.label for s in first[:3]]
    assert [s.information for s in alone[0]] == pytest.approx([s.information for s in first[:3]], abs=1e-6)
    with pytest.raises(CTranError, match="method must be one of"):
        predictor.suggest(features, method="random")
    with pytest.raises(CTranError, match="positive integer"):
        predictor.suggest(features, k=0)
    with pytest.raises(CTranError, match="unknown target label"):
        predictor.suggest(features, {"cta": True})


def test_binary_entropy() -> None:
    p = torch.tensor([0.0, 0.5, 1.0, 0.1])
    torch.testing.assert_close(binary_entropy(p), torch.tensor([0.0, 1.0, 0.0, _entropy(0.1)]).double())


def test_one_way_reconditioning_equals_the_uncached_model() -> None:
    """The predictor's cached condition of a one-way model gives the logits of the whole masked sequence."""
    predictor = _predictor("one_way")
    images = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(5))
    features = predictor.encode(images)
    assert features.tokens.shape == (2, 36, 2 * 2 * 32)  # per-layer image keys and values
    known = [{"cat": True, "car": False}, {"person": True}]
    cached = predictor.condition(features, known, extra={"indoor": True})
    states = predictor.states(known, {"indoor": True}, 2)
    with torch.no_grad():
        uncached = predictor.model(images, states, return_attention=True).logits.sigmoid()
    for result, row, s in zip(cached, uncached, states, strict=True):
        expected = {n: float(row[i]) for i, n in enumerate(TARGETS) if s[i] == UNKNOWN}
        assert result.probs == pytest.approx(expected, abs=1e-6)
