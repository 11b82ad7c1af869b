"""calibrate_thresholds: per-label F1-optimal cuts, checked against a brute-force scikit-learn search."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from ctran.metrics import calibrate_thresholds


def _best_f1(scores: np.ndarray, truth: np.ndarray) -> float:
    """Brute force: sklearn F1 at every distinct score used as the cut ``score >= t``."""
    return max(f1_score(truth, scores >= t, zero_division=0) for t in np.unique(scores))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_thresholds_reach_the_best_f1_of_each_label(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, num_labels = 150, 7
    truth = (rng.random((n, num_labels)) < rng.uniform(0.05, 0.6, num_labels)).astype(np.int64)
    scores = np.clip(truth * rng.uniform(0.1, 0.5, num_labels) + rng.random((n, num_labels)) * 0.7, 0, 1)
    scores = scores.round(2)  # ties
    truth[rng.random((n, num_labels)) < 0.1] = -1  # not annotated: never scored
    mask = rng.random((n, num_labels)) < 0.8
    cuts = calibrate_thresholds(scores, truth, mask)
    assert cuts.shape == (num_labels,) and cuts.dtype == np.float64
    for label in range(num_labels):
        rows = mask[:, label] & (truth[:, label] != -1)
        s, y = scores[rows, label], truth[rows, label]
        ours = f1_score(y, s >= cuts[label], zero_division=0)
        assert ours == pytest.approx(_best_f1(s, y), abs=1e-12)
        # The highest cut reaching the best F1: one step up loses (or there is no higher score).
        higher = s[s > cuts[label]]
        if higher.size:
            assert f1_score(y, s >= higher.min(), zero_division=0) < ours


def test_label_without_positives_gets_the_default_and_empty_input_works() -> None:
    scores = np.array([[0.9, 0.2], [0.8, 0.7], [0.1, 0.4]])
    truth = np.array([[0, 1], [0, 1], [0, 0]])
    cuts = calibrate_thresholds(scores, truth, default=0.5)
    assert cuts[0] == 0.5
    assert cuts[1] == pytest.approx(0.2)  # keeps both positives: F1 = 0.8 beats 2/3 at 0.7
    assert calibrate_thresholds(np.zeros((0, 3)), np.zeros((0, 3))).tolist() == [0.5] * 3
