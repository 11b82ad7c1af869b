"""ctran.metrics cross-checked against scikit-learn on random data (ties, masks, unknown targets)."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score

from ctran.metrics import (
    CHUNK_ENTRIES,
    METRIC_KEYS,
    LabelChunkMetrics,
    average_precision,
    calibrate_thresholds,
    label_chunks,
    mean_average_precision,
    multilabel_metrics,
)

TOL = 1e-6


def _random_problem(seed: int, n: int = 200, n_labels: int = 12, decimals: int | None = 1):
    """Scores with many ties (rounded), targets in {0, 1}, one all-negative and one all-positive label."""
    rng = np.random.default_rng(seed)
    scores = rng.random((n, n_labels))
    if decimals is not None:
        scores = scores.round(decimals)
    targets = (rng.random((n, n_labels)) < 0.3).astype(np.int64)
    targets[:, 0] = 0  # no positives -> NaN AP
    targets[:, 1] = 1  # all positives -> AP 1
    return scores, targets


def _sklearn_ap(scores: np.ndarray, targets: np.ndarray, scored: np.ndarray) -> np.ndarray:
    """Reference: sklearn AP label by label on the scored rows only; NaN when there is no positive."""
    out = np.full(scores.shape[1], np.nan)
    for j in range(scores.shape[1]):
        rows = scored[:, j]
        y = targets[rows, j] == 1
        if y.any():
            out[j] = average_precision_score(y, scores[rows, j])
    return out


def _sklearn_prf(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """Reference C*/O* metrics in percent from binary matrices (unscored entries already zeroed in both)."""
    kw = {"zero_division": 0}
    cp = 100 * precision_score(true, pred, average="macro", **kw)
    cr = 100 * recall_score(true, pred, average="macro", **kw)
    return {
        "CP": cp,
        "CR": cr,
        "CF1": 2 * cp * cr / (cp + cr) if cp + cr > 0 else 0.0,
        "OP": 100 * precision_score(true, pred, average="micro", **kw),
        "OR": 100 * recall_score(true, pred, average="micro", **kw),
        "OF1": 100 * f1_score(true, pred, average="micro", **kw),
    }


def _top_k_reference(scores: np.ndarray, scored: np.ndarray, k: int) -> np.ndarray:
    """Top-k among scored entries per image via a stable argsort (ties -> lower label index)."""
    s = np.where(scored, scores, -np.inf)
    idx = np.argsort(-s, axis=1, kind="stable")[:, :k]
    top = np.zeros(scores.shape, dtype=bool)
    np.put_along_axis(top, idx, True, axis=1)
    return top & scored


def _assert_metrics_close(got: dict[str, float], want: dict[str, float]) -> None:
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=TOL), key


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("decimals", [1, 2, None])
def test_average_precision_matches_sklearn_with_ties(seed: int, decimals: int | None) -> None:
    scores, targets = _random_problem(seed, decimals=decimals)
    ap = average_precision(scores, targets)
    assert ap.dtype == torch.float64 and ap.shape == (scores.shape[1],)
    want = _sklearn_ap(scores, targets, np.ones_like(targets, dtype=bool))
    np.testing.assert_allclose(ap.numpy(), want, atol=TOL, equal_nan=True)
    assert torch.isnan(ap[0]) and ap[1] == pytest.approx(1.0)
    assert mean_average_precision(scores, targets) == pytest.approx(100 * np.nanmean(want), abs=TOL)


def test_average_precision_all_tied_and_tiny() -> None:
    # One tie group: precision is the base rate for every positive.
    scores = np.full((10, 2), 0.5)
    targets = np.zeros((10, 2), dtype=int)
    targets[:3, 0] = 1
    targets[7:, 1] = 1
    np.testing.assert_allclose(average_precision(scores, targets).numpy(), [0.3, 0.3])
    # A single scored positive ranked second out of two.
    ap = average_precision(np.array([[0.9], [0.1]]), np.array([[0], [1]]))
    assert ap.item() == pytest.approx(average_precision_score([0, 1], [0.9, 0.1]))


@pytest.mark.parametrize("seed", range(5))
def test_map_with_mask_and_unknown_targets(seed: int) -> None:
    scores, targets = _random_problem(seed, n=300, n_labels=15)
    rng = np.random.default_rng(100 + seed)
    targets = np.where(rng.random(targets.shape) < 0.2, -1, targets)
    mask = rng.random(targets.shape) < 0.7
    mask[:, 3] = False  # a label that is never scored -> NaN, excluded from mAP
    targets[:, 4] = -1
    scored = mask & (targets != -1)

    ap = average_precision(scores, targets, mask)
    want = _sklearn_ap(scores, targets, scored)
    np.testing.assert_allclose(ap.numpy(), want, atol=TOL, equal_nan=True)
    assert torch.isnan(ap[3]) and torch.isnan(ap[4])
    assert mean_average_precision(scores, targets, mask) == pytest.approx(100 * np.nanmean(want), abs=TOL)

    metrics = multilabel_metrics(scores, targets, mask)
    assert metrics["mAP"] == pytest.approx(100 * np.nanmean(want), abs=TOL)
    assert metrics["n_labels_scored"] == int((~np.isnan(want)).sum())
    assert metrics["n_images"] == int(scored.any(axis=1).sum())


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_threshold_and_top3_metrics_match_sklearn(seed: int, threshold: float) -> None:
    scores, targets = _random_problem(seed, n=150, n_labels=10, decimals=2)
    scored = np.ones_like(targets, dtype=bool)
    metrics = multilabel_metrics(scores, targets, threshold=threshold)
    true = targets == 1

    pred = scores >= threshold
    _assert_metrics_close(metrics, _sklearn_prf(pred, true))

    top3 = _top_k_reference(scores, scored, 3) & pred
    want_top = {f"{k}_top3": v for k, v in _sklearn_prf(top3, true).items()}
    _assert_metrics_close(metrics, want_top)

    assert list(metrics)[: len(METRIC_KEYS)] == list(METRIC_KEYS)
    assert metrics["n_images"] == scores.shape[0]
    assert metrics["n_labels_scored"] == scores.shape[1] - 1  # label 0 has no positive


@pytest.mark.parametrize("seed", range(3))
def test_masked_prf_matches_sklearn_on_zeroed_matrices(seed: int) -> None:
    """Unscored = neither predicted nor true, so sklearn on matrices zeroed there is the reference."""
    scores, targets = _random_problem(seed, n=120, n_labels=9, decimals=1)
    rng = np.random.default_rng(200 + seed)
    targets = np.where(rng.random(targets.shape) < 0.15, -1, targets)
    mask = rng.random(targets.shape) < 0.6
    scored = mask & (targets != -1)
    metrics = multilabel_metrics(scores, targets, mask, top_k=2)

    true = (targets == 1) & scored
    pred = (scores >= 0.5) & scored
    _assert_metrics_close(metrics, _sklearn_prf(pred, true))
    top2 = _top_k_reference(scores, scored, 2) & pred
    _assert_metrics_close(metrics, {f"{k}_top2": v for k, v in _sklearn_prf(top2, true).items()})


def test_top_k_ties_prefer_lower_label_index() -> None:
    scores = np.array([[0.9, 0.9, 0.9, 0.9]])
    targets = np.array([[0, 0, 1, 1]])
    metrics = multilabel_metrics(scores, targets, top_k=2)  # picks labels 0 and 1: no hit
    assert metrics["OP_top2"] == 0.0 and metrics["OR_top2"] == 0.0
    metrics = multilabel_metrics(scores, targets, mask=np.array([[False, True, True, True]]), top_k=2)
    assert metrics["OP_top2"] == pytest.approx(50.0)  # label 0 unscored: picks 1 and 2


def test_torch_and_numpy_inputs_agree() -> None:
    scores, targets = _random_problem(7, decimals=2)
    targets[::5, 2] = -1
    mask = np.random.default_rng(7).random(scores.shape) < 0.8
    from_numpy = multilabel_metrics(scores, targets, mask)
    from_torch = multilabel_metrics(
        torch.from_numpy(scores).float(), torch.from_numpy(targets), torch.from_numpy(mask)
    )
    assert from_numpy.keys() == from_torch.keys()
    for key in from_numpy:  # float32 scores: identical up to the float32 rounding of the inputs
        assert from_torch[key] == pytest.approx(from_numpy[key], abs=1e-4), key
    from_torch64 = multilabel_metrics(
        torch.from_numpy(scores), torch.from_numpy(targets), torch.from_numpy(mask)
    )
    assert from_torch64 == from_numpy
    assert torch.equal(
        average_precision(torch.from_numpy(scores), torch.from_numpy(targets)).nan_to_num(-1),
        average_precision(scores, targets).nan_to_num(-1),
    )


def test_unscored_entries_have_no_influence() -> None:
    scores, targets = _random_problem(11, n=100, n_labels=8, decimals=1)
    rng = np.random.default_rng(11)
    targets = np.where(rng.random(targets.shape) < 0.2, -1, targets)
    mask = rng.random(targets.shape) < 0.6
    base = multilabel_metrics(scores, targets, mask)
    base_ap = average_precision(scores, targets, mask)

    unscored = ~mask | (targets == -1)
    scores2 = np.where(unscored, rng.choice([0.0, 1.0, 0.5, -1e9, np.nan], size=scores.shape), scores)
    # Hidden by the mask: any target; unknown (-1) targets stay unknown or become hidden by the mask.
    targets2 = np.where(~mask, rng.integers(-1, 2, size=targets.shape), targets)
    assert (scores2 != scores)[unscored].any() and (targets2 != targets)[~mask].any()
    assert multilabel_metrics(scores2, targets2, mask) == base
    assert torch.equal(average_precision(scores2, targets2, mask).nan_to_num(-1), base_ap.nan_to_num(-1))


def test_mask_all_true_equals_no_mask() -> None:
    scores, targets = _random_problem(3)
    assert multilabel_metrics(scores, targets, np.ones_like(targets, dtype=bool)) == multilabel_metrics(
        scores, targets
    )


def test_nothing_scored_gives_nan_map_and_zero_prf() -> None:
    scores = np.random.default_rng(0).random((4, 3))
    metrics = multilabel_metrics(scores, np.full((4, 3), -1))
    assert np.isnan(metrics["mAP"])
    assert metrics["n_images"] == 0 and metrics["n_labels_scored"] == 0
    assert all(metrics[k] == 0.0 for k in METRIC_KEYS if k != "mAP")


@pytest.mark.parametrize(
    ("scores", "targets", "mask", "message"),
    [
        (np.zeros(3), np.zeros(3), None, "scores must have shape (N, L), got (3,)"),
        (
            np.zeros((2, 3)),
            np.zeros((3, 2)),
            None,
            "targets must have the shape of scores (2, 3), got (3, 2)",
        ),
        (
            np.zeros((2, 3)),
            np.full((2, 3), 2),
            None,
            "targets must be -1 (unknown), 0 (negative) or 1 (positive)",
        ),
        (
            np.zeros((2, 3)),
            np.zeros((2, 3)),
            np.ones((2, 2), dtype=bool),
            "mask must have the shape of scores (2, 3), got (2, 2)",
        ),
        (np.full((2, 3), np.nan), np.zeros((2, 3)), None, "scores of scored entries must be finite"),
    ],
)
def test_bad_inputs_raise(scores, targets, mask, message: str) -> None:
    """A wrong input fails loudly with a message naming the problem and the shapes, not deep in torch."""
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        multilabel_metrics(scores, targets, mask)
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        calibrate_thresholds(scores, targets, mask)


def test_coco_size_is_well_defined() -> None:
    """COCO-sized inputs (40,000 x 80, a mask): no warnings, finite metrics (speed: benchmarks/, not here)."""
    rng = np.random.default_rng(0)
    scores = rng.random((40_000, 80)).astype(np.float32)
    targets = (rng.random((40_000, 80)) < 0.03).astype(np.int64)
    mask = rng.random((40_000, 80)) < 0.75
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metrics = multilabel_metrics(scores, targets, mask)
    assert 0.0 < metrics["mAP"] < 100.0 and metrics["n_labels_scored"] == 80


def test_per_label_ap_is_sklearns_in_percent_with_none_and_positive_counts() -> None:
    scores, targets = _random_problem(11, n=60, n_labels=5)
    names = [f"label_{i}" for i in range(5)]
    per_label = multilabel_metrics(scores, targets, label_names=names)["per_label"]
    assert list(per_label) == names
    assert per_label["label_0"] == {"AP": None, "positives": 0}  # no positive: None, not NaN
    for i, name in enumerate(names[1:], start=1):
        expected = average_precision_score(targets[:, i], scores[:, i]) * 100.0
        assert per_label[name]["AP"] == pytest.approx(expected, abs=TOL)
        assert per_label[name]["positives"] == int(targets[:, i].sum())
    with pytest.raises(ValueError, match="4 label names for 5 labels"):
        multilabel_metrics(scores, targets, label_names=names[:4])


def test_one_correct_prediction_among_many_labels_keeps_its_small_percentages() -> None:
    """200 labels, one predicted and right: CP = CR = CF1 = 0.5 (sklearn's macro scores), OP = OR = 100."""
    scores, targets = np.zeros((3, 200)), np.zeros((3, 200), dtype=np.int64)
    scores[0, 7], targets[0, 7] = 0.9, 1
    out = multilabel_metrics(scores, targets)
    pred = (scores >= 0.5).astype(int)
    for key, ref in (("CP", precision_score), ("CR", recall_score), ("CF1", f1_score)):
        expected = ref(targets, pred, average="macro", zero_division=0) * 100.0
        assert expected == pytest.approx(0.5) and out[key] == pytest.approx(expected, abs=TOL), key
    assert out["OP"] == out["OR"] == out["OF1"] == pytest.approx(100.0)


def test_top_k_breaks_ties_by_label_order_and_top_0_predicts_nothing() -> None:
    """Equal scores: the lower label index wins (np.argsort(-s, kind="stable")); top_k=0 gives zeros."""
    scores = np.array([[0.9, 0.9, 0.9, 0.9], [0.6, 0.8, 0.8, 0.7]])
    targets = np.array([[0, 0, 1, 1], [0, 0, 1, 1]])
    out = multilabel_metrics(scores, targets, top_k=2)
    top = np.zeros_like(targets)
    np.put_along_axis(top, np.argsort(-scores, axis=1, kind="stable")[:, :2], 1, axis=1)
    assert top.tolist() == [[1, 1, 0, 0], [0, 1, 1, 0]]
    assert out["OP_top2"] == pytest.approx(precision_score(targets.ravel(), top.ravel()) * 100.0, abs=TOL)
    assert out["OP_top2"] == pytest.approx(25.0)
    none = multilabel_metrics(scores, top, top_k=0)  # any top-1 pick would be right here
    assert none["OP_top0"] == none["OR_top0"] == none["CP_top0"] == 0.0


def test_precision_and_recall_are_computed_in_float64() -> None:
    """Counts are divided in float64: the percentages equal scikit-learn's to 1e-9, beyond float32's reach."""
    scores, targets = _random_problem(7, n=999, n_labels=7, decimals=2)
    metrics = multilabel_metrics(scores, targets)
    for key, value in _sklearn_prf(scores >= 0.5, targets == 1).items():
        assert metrics[key] == pytest.approx(value, abs=1e-9, rel=0), key


def test_no_labels_at_all_gives_zero_precision_and_recall() -> None:
    metrics = multilabel_metrics(np.zeros((4, 0)), np.zeros((4, 0), dtype=np.int64))
    assert metrics["CP"] == metrics["CR"] == metrics["CF1"] == 0.0


def test_top_k_ties_among_many_labels_still_prefer_lower_label_index() -> None:
    """COCO has 80 labels: ties go to the lower label index in long rows too (unstable sorts reorder >16)."""
    scores, targets = _random_problem(5, n=40, n_labels=80, decimals=1)
    scores[0] = 0.9  # one image with all 80 labels tied: top-3 are labels 0, 1, 2
    targets[0] = 0
    targets[0, 3:] = 1  # any other pick would be a hit
    scored = np.ones_like(targets, dtype=bool)
    metrics = multilabel_metrics(scores, targets)
    top3 = _top_k_reference(scores, scored, 3) & (scores >= 0.5)
    assert top3[0].tolist() == [True] * 3 + [False] * 77
    want = {f"{k}_top3": v for k, v in _sklearn_prf(top3, targets == 1).items()}
    _assert_metrics_close(metrics, want)


def test_integer_mask_means_the_same_as_a_bool_mask() -> None:
    """A 0/1 integer mask (e.g. loaded from a file) selects the same scored entries as the bool mask."""
    scores, targets = _random_problem(2, n=50, n_labels=6, decimals=1)
    mask = np.random.default_rng(2).random(scores.shape) < 0.6
    int_mask = mask.astype(np.int64)  # (N, L) in {0, 1}
    assert multilabel_metrics(scores, targets, int_mask) == multilabel_metrics(scores, targets, mask)
    assert torch.equal(
        average_precision(scores, targets, torch.from_numpy(int_mask)).nan_to_num(-1),
        average_precision(scores, targets, mask).nan_to_num(-1),
    )
    np.testing.assert_array_equal(
        calibrate_thresholds(scores, targets, int_mask), calibrate_thresholds(scores, targets, mask)
    )


def test_calibrated_cut_of_a_single_positive_label_is_its_best_f1_cut_in_float64() -> None:
    """A rare label with one scored positive gets its own F1-optimal cut (not the default), as float64."""
    rng = np.random.default_rng(4)
    scores = rng.random((30, 3)).round(2).astype(np.float32)  # (N, L), float32 like model outputs
    targets = np.zeros((30, 3), dtype=np.int64)
    targets[7, 0] = 1  # label 0: exactly one positive, ranked below some negatives
    targets[:10, 1] = 1
    cuts = calibrate_thresholds(torch.from_numpy(scores), torch.from_numpy(targets), default=0.5)
    assert cuts.dtype == np.float64 and cuts.shape == (3,)
    assert cuts[2] == 0.5  # no positive: the default
    for label in (0, 1):
        s, y = scores[:, label].astype(np.float64), targets[:, label]
        f1s = {t: f1_score(y, s >= t, zero_division=0) for t in np.unique(s)}
        best = max(f1s.values())
        assert cuts[label] == max(t for t, f in f1s.items() if f == best)  # highest cut reaching the best F1
    assert cuts[0] == np.float64(scores[7, 0]) != 0.5


# ------------------------------------------------------------------------------------------ label chunks


@pytest.mark.parametrize("chunk", [1, 2, 5, 13])
def test_metrics_in_label_chunks_equal_the_whole_matrix_and_sklearn(chunk: int) -> None:
    """Chunked AP, threshold and top-k metrics and calibrated cuts are the unchunked ones (to the bit for
    everything but the float sums), and AP is sklearn's: chunks change memory, never numbers."""
    scores, targets = _random_problem(7, n=160, n_labels=13, decimals=1)
    rng = np.random.default_rng(7)
    targets = np.where(rng.random(targets.shape) < 0.2, -1, targets)
    mask = rng.random(targets.shape) < 0.7
    names = [f"l{i}" for i in range(13)]
    whole = multilabel_metrics(scores, targets, mask, top_k=3, label_names=names, label_chunk=13)
    chunked = multilabel_metrics(scores, targets, mask, top_k=3, label_names=names, label_chunk=chunk)
    assert chunked.keys() == whole.keys()
    for key, value in whole.items():
        assert chunked[key] == (pytest.approx(value, abs=1e-12) if isinstance(value, float) else value), key
    want = _sklearn_ap(scores, targets, mask & (targets != -1))
    got = average_precision(scores, targets, mask, label_chunk=chunk).numpy()
    np.testing.assert_allclose(got, want, atol=TOL, equal_nan=True)
    top3 = _top_k_reference(scores, mask & (targets != -1), 3) & (scores >= 0.5) & mask & (targets != -1)
    _assert_metrics_close(
        chunked, {f"{k}_top3": v for k, v in _sklearn_prf(top3, (targets == 1) & mask).items()}
    )
    np.testing.assert_array_equal(
        calibrate_thresholds(scores, targets, mask, label_chunk=chunk),
        calibrate_thresholds(scores, targets, mask, label_chunk=13),
    )


def test_top_k_across_chunks_prefers_the_lower_label_on_ties() -> None:
    """Tied scores in different chunks: the top k are the lowest labels, as in one sort over all labels."""
    scores = np.full((2, 6), 0.8)
    scores[1, 5] = 0.9  # image 1: label 5 first, then labels 0 and 1
    targets = np.ones((2, 6), dtype=np.int64)
    targets[1, 1] = 0
    for chunk in (1, 2, 4, 6):
        metrics = LabelChunkMetrics(2, 6, top_k=3)
        for start in range(0, 6, chunk):
            metrics.add(scores[:, start : start + chunk], targets[:, start : start + chunk])
        assert metrics.top_labels.tolist() == [[0, 1, 2], [5, 0, 1]], chunk
        assert metrics.result()["OP_top3"] == pytest.approx(100 * 5 / 6)


def test_label_chunk_metrics_refuse_missing_or_surplus_labels() -> None:
    metrics = LabelChunkMetrics(3, 4)
    metrics.add(np.zeros((3, 3)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="3 of 4 labels"):
        metrics.result()
    with pytest.raises(ValueError, match="does not fit"):
        metrics.add(np.zeros((3, 2)), np.zeros((3, 2)))


def test_chunks_follow_the_entry_budget() -> None:
    assert label_chunks(40_000, 10_000)[0] == slice(0, CHUNK_ENTRIES // 40_000)
    assert label_chunks(10, 16) == [slice(0, 16)] and label_chunks(0, 3) == [slice(0, 3)]
    assert label_chunks(5, 7, width=3) == [slice(0, 3), slice(3, 6), slice(6, 7)]
