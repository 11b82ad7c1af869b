"""Told vs not told on the same entries (``untold_mAP``, ``gain``) and the known-positives setting.

A told setting is scored on the entries left unknown, a different subset from regular's, so its mAP mixes
what being told does with which entries are scored. ``untold_mAP`` scores the regular probabilities on
exactly the told setting's entries; these tests fail if it is computed on other entries, from other
probabilities, or if ``--known-positives`` ever tells the model a negative or an unannotated label.
"""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score

import ctran
from ctran.checkpoint import load_checkpoint
from ctran.cli import main
from ctran.metrics import label_chunks
from ctran.states import POSITIVE, UNKNOWN, unknown_states
from ctran.training.evaluation import REGULAR, EvalScores, Setting
from ctran.training.label_mask import evaluation_states, positive_states
from ctran.training.loaders import eval_loader

SIZE = 64


def _sklearn_map(probs: np.ndarray, truth: np.ndarray, scored: np.ndarray) -> float:
    """scikit-learn's AP per label over the scored entries, averaged over labels with a scored positive."""
    aps = [
        average_precision_score(truth[scored[:, j], j], probs[scored[:, j], j])
        for j in range(truth.shape[1])
        if (truth[scored[:, j], j] == 1).any()
    ]
    return 100.0 * float(np.mean(aps))


# ------------------------------------------------------------------------------- untold_mAP by hand


def test_untold_map_is_the_regular_probabilities_on_the_told_settings_entries() -> None:
    """Hand-made scores: told and regular probabilities differ, some truth is missing, and every positive
    of label 3 is revealed (so label 3 leaves both means). ``untold_mAP`` is scikit-learn's mAP of the
    regular probabilities over exactly the told setting's scored entries, read one label block at a time,
    and differs from the regular mAP (a "regular mAP" shortcut fails) and from the told mAP."""
    rng = np.random.default_rng(0)
    n, num_labels = 40, 5
    truth = rng.choice([UNKNOWN, 0, POSITIVE], size=(n, num_labels), p=[0.15, 0.5, 0.35]).astype(np.int64)
    regular = rng.random((n, num_labels)).astype(np.float32)
    told = rng.random((n, num_labels)).astype(np.float32)
    revealed = rng.random((n, num_labels)) < 0.3
    revealed[:, 3] = truth[:, 3] == POSITIVE
    setting = Setting(known_fraction=0.5)
    scores = EvalScores([REGULAR, setting], n, num_labels, label_chunks(n, num_labels, 2))
    for rows in (slice(0, 17), slice(17, n)):  # two batches
        scores.append(
            torch.arange(n)[rows],
            torch.from_numpy(truth[rows]),
            {
                REGULAR: (torch.from_numpy(regular[rows]), torch.from_numpy(np.zeros_like(revealed[rows]))),
                setting: (torch.from_numpy(told[rows]), torch.from_numpy(revealed[rows])),
            },
        )
    metrics = scores.metrics()
    scored = (truth != UNKNOWN) & ~revealed
    untold = _sklearn_map(regular, truth, scored)
    assert metrics[setting]["untold_mAP"] == pytest.approx(untold, abs=1e-9)
    assert metrics[setting]["mAP"] == pytest.approx(_sklearn_map(told, truth, scored), abs=1e-9)
    assert metrics[setting]["gain"] == pytest.approx(metrics[setting]["mAP"] - untold, abs=1e-9)
    assert abs(untold - metrics[REGULAR]["mAP"]) > 1.0  # the entries matter
    assert abs(metrics[setting]["gain"]) > 1.0  # and so do the probabilities
    assert "untold_mAP" not in metrics[REGULAR] and "gain" not in metrics[REGULAR]


# ------------------------------------------------------------------------------- known positives


@settings(max_examples=60, deadline=None)
@given(
    key=st.integers(0, 2**32 - 1),
    rows=st.integers(1, 12),
    labels=st.integers(1, 30),
    fraction=st.sampled_from([0.1, 0.25, 0.5, 0.75, 1.0]),
)
def test_known_positives_reveal_only_present_labels_exactly_int_f_p_per_image(key, rows, labels, fraction):
    """Over random truths with missing entries: only present labels are told (never a negative or an
    unannotated one), int(f * P_i) of each image's P_i, and the draw depends on (seed, index) alone: the
    same for any batch order or split, and another seed draws other labels."""
    rng = np.random.default_rng(key)
    truth = torch.from_numpy(rng.choice([UNKNOWN, 0, POSITIVE], size=(rows, labels)))
    indices = torch.from_numpy(rng.choice(10**6, size=rows, replace=False))
    seed = int(rng.integers(0, 1000))
    states = positive_states(truth, indices, fraction, seed)
    told = states != UNKNOWN
    assert (truth[told] == POSITIVE).all() and (states[told] == POSITIVE).all()
    present = (truth == POSITIVE).sum(1).tolist()
    assert told.sum(1).tolist() == [int(fraction * p) for p in present]
    order = torch.from_numpy(rng.permutation(rows))
    assert torch.equal(positive_states(truth[order], indices[order], fraction, seed), states[order])
    for row in range(rows):
        alone = positive_states(truth[row : row + 1], indices[row : row + 1], fraction, seed)
        assert torch.equal(alone, states[row : row + 1])


def test_known_positives_are_their_own_draw_and_follow_the_seed() -> None:
    """Where every label is present the uniform protocol and the positives draw choose from the same pool:
    they must still choose differently (a key numpy pads to the uniform one would not), and the choice
    moves with the seed and the image index."""
    truth = torch.ones(200, 12, dtype=torch.long)
    indices = torch.arange(200)
    drawn = positive_states(truth, indices, 0.5, seed=0)
    assert ((drawn != UNKNOWN).sum(1) == 6).all()
    assert not torch.equal(drawn, evaluation_states(truth, indices, 0.5, seed=0))
    assert not torch.equal(drawn, positive_states(truth, indices, 0.5, seed=1))
    assert not torch.equal(drawn, positive_states(truth, indices + 200, 0.5, seed=0))
    assert torch.equal(drawn, positive_states(truth, indices, 0.5, seed=0))


# ------------------------------------------------------------------------------- through the CLI


def test_evaluate_reports_untold_and_gain_for_each_told_setting(digits_checkpoint, tmp_path) -> None:
    """``ctran evaluate --known 0.5 --known-positives 0.5``: metrics.json has both settings, each with
    ``untold_mAP`` equal to scikit-learn's mAP of the model's nothing-told probabilities over exactly that
    setting's scored entries, and ``gain``; the printed table has the untold and gain columns (regular
    was not asked for: it runs for the untold mAP but is neither printed nor written)."""
    report = tmp_path / "metrics.json"
    argv = ["evaluate", "--checkpoint", str(digits_checkpoint), "--size", str(SIZE), "--json", str(report)]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main([*argv, "--known", "0.5", "--known-positives", "0.5", "--quiet"]) == 0
    written = json.loads(report.read_text())
    assert list(written["settings"]) == ["partial", "positives"]
    assert written["setting"] == "partial_0.5" and written["known_positives"] == 0.0

    model, _ = load_checkpoint(digits_checkpoint)
    images, truth, _, indices = next(iter(eval_loader(ctran.data.load_digit_scenes("test", 0, SIZE), SIZE)))
    with torch.inference_mode():
        untold_probs = model(images, unknown_states(SIZE, 20))[:, :16].sigmoid().numpy()
    for kind, draw in (("partial", evaluation_states), ("positives", positive_states)):
        metrics = written["settings"][kind]["0.5"]
        scored = ((truth != UNKNOWN) & (draw(truth, indices, 0.5, 0) == UNKNOWN)).numpy()
        assert metrics["untold_mAP"] == pytest.approx(
            _sklearn_map(untold_probs, truth.numpy(), scored), abs=1e-4
        )
        assert metrics["gain"] == pytest.approx(metrics["mAP"] - metrics["untold_mAP"], abs=1e-9)

    table = printed.getvalue()
    assert "| setting | images | labels | mAP | untold | gain | CP |" in table
    assert "untold: mAP of the same entries with nothing told" in table
    for name, kind in (("partial_0.5", "partial"), ("positives_0.5", "positives")):
        metrics = written["settings"][kind]["0.5"]
        cells = f"| {metrics['mAP']:.1f} | {metrics['untold_mAP']:.1f} | {metrics['gain']:+.1f} |"
        assert f"| {name} | {SIZE} | {metrics['n_labels_scored']} {cells}" in table
    assert "| regular |" not in table


def test_train_reports_positives_settings_with_their_gain(tmp_path) -> None:
    """``ctran train``'s final evaluation scores the positives settings by default, each told setting
    with its gain; the extra setting scores regular's entries, so its untold mAP is the regular mAP."""
    out = tmp_path / "run"
    argv = [
        "train",
        "--config",
        "digits-tiny",
        "--out",
        str(out),
        "--quiet",
        "model.dim=16",
        "model.layers=1",
    ]
    argv += [
        "model.heads=2",
        "train.epochs=1",
        "train.batch_size=16",
        "data.sizes={train: 32, val: 16, test: 48}",
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(argv) == 0
    results = json.loads((out / "metrics.json").read_text())["settings"]
    assert list(results) == ["regular", "partial", "positives", "extra"]
    assert list(results["positives"]) == ["0.25", "0.5", "0.75"]
    told = [*results["partial"].values(), *results["positives"].values(), results["extra"]]
    for metrics in told:
        assert metrics["gain"] == pytest.approx(metrics["mAP"] - metrics["untold_mAP"], abs=1e-9)
    assert results["extra"]["untold_mAP"] == results["regular"]["mAP"]
    assert "gain" not in results["regular"]
