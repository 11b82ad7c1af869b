"""Working on one's own data: fine-tuning from a checkpoint, the baseline through ``ctran train``, training
with missing labels (``data.keep_annotations``, ``train.missing``) and label-order matching."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ctran
from ctran.checkpoint import init_from_checkpoint, read_checkpoint, save_checkpoint
from ctran.config import load_config
from ctran.data.digit_scenes import CONTEXT_NAMES, DIGIT_NAMES, TAG_NAMES, load_digit_scenes
from ctran.data.partial import PartialAnnotations, in_label_order
from ctran.errors import CTranError
from ctran.states import UNKNOWN
from ctran.training.run import build_datasets
from test_user_paths import TINY_RUN

LABELS = list(DIGIT_NAMES + TAG_NAMES + CONTEXT_NAMES)
SMALL = {"kind": "ctran", "backbone": "small_cnn", "dim": 32, "layers": 1, "heads": 2}


def _ctran(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "ctran", *args], env=env, capture_output=True, text=True, timeout=600
    )


def _source_checkpoint(path: Path, names: list[str], seed: int = 1) -> Path:
    torch.manual_seed(seed)
    model = ctran.build_model(len(names), backbone="small_cnn", dim=32, layers=1, heads=2)
    config = {**SMALL, "num_labels": len(names)}
    return save_checkpoint(path, model, config, names[:-4], names[-4:], image_size=48)


# ------------------------------------------------------------------------ fine-tuning


def test_init_from_matches_label_rows_by_name(tmp_path: Path) -> None:
    """Shared labels get the checkpoint's rows whatever its order, new labels keep fresh rows, and every
    other tensor is the checkpoint's."""
    source_names = [*reversed(LABELS[2:]), "zebra", "kite"]  # two labels gone, order reversed, two new
    path = _source_checkpoint(tmp_path / "src.pt", source_names)
    source = read_checkpoint(path)["state_dict"]
    torch.manual_seed(0)
    model = ctran.build_model(len(LABELS), backbone="small_cnn", dim=32, layers=1, heads=2)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    transfer = init_from_checkpoint(model, path, LABELS)
    assert sorted(transfer.new) == sorted(LABELS[:2]) and sorted(transfer.dropped) == ["kite", "zebra"]
    state = model.state_dict()
    for i, name in enumerate(LABELS):
        for key in ("label_embed.weight", "readout.weight", "readout.bias"):
            expected = fresh[key][i] if name in transfer.new else source[key][source_names.index(name)]
            assert torch.equal(state[key][i], expected), (name, key)
    assert torch.equal(state["encoder.layers.0.linear1.weight"], source["encoder.layers.0.linear1.weight"])
    assert torch.equal(state["state_embed.weight"], source["state_embed.weight"])


def test_init_from_a_different_architecture_names_the_tensors(tmp_path: Path) -> None:
    path = _source_checkpoint(tmp_path / "src.pt", LABELS)
    model = ctran.build_model(len(LABELS), backbone="small_cnn", dim=32, layers=2, heads=2)
    with pytest.raises(CTranError, match="encoder.layers.1"):
        init_from_checkpoint(model, path, LABELS)


@pytest.mark.slow
def test_train_init_from_keeps_shared_labels_and_learns_new_ones(tmp_path: Path) -> None:
    """``ctran train --init-from``: the summary names what was kept and what is new; with the shared part
    frozen at lr 0 (backbone multiplier 0 and a frozen backbone do not touch the label rows), training moves
    the new labels' rows."""
    source_names = [name for name in LABELS if name != "digit_0"]
    path = _source_checkpoint(tmp_path / "src.pt", source_names)
    out = tmp_path / "run"
    run = _ctran(
        "train", "--config", "digits-tiny", "--out", str(out), "--quiet", f"model.init_from={path}",
        *TINY_RUN, "model.dim=32", "model.heads=2",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "19 labels kept" in run.stdout and "1 new labels (fresh rows): digit_0" in run.stdout
    trained = read_checkpoint(out / "last.pt")["state_dict"]
    source = read_checkpoint(path)["state_dict"]
    row = LABELS.index("digit_1")
    initial_shared = source["readout.weight"][source_names.index("digit_1")]
    assert (trained["readout.weight"][row] - initial_shared).abs().max() < 0.05  # started from it
    torch.manual_seed(0)
    fresh = ctran.build_model(len(LABELS), backbone="small_cnn", dim=32, layers=1, heads=2)
    assert not torch.equal(trained["readout.weight"][0], fresh.state_dict()["readout.weight"][0])


# ------------------------------------------------------------------------ the baseline through ctran train


@pytest.mark.slow
def test_baseline_trains_and_evaluates_through_the_cli(tmp_path: Path) -> None:
    out = tmp_path / "baseline"
    run = _ctran(
        "train", "--config", "digits-tiny", "--out", str(out), "--quiet", "model.kind=baseline", *TINY_RUN
    )
    assert run.returncode == 0, run.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["settings"].keys() == {"regular", "partial", "positives"}  # a plain CNN takes no extras
    for told in [*metrics["settings"]["partial"].values(), *metrics["settings"]["positives"].values()]:
        assert told["gain"] == pytest.approx(0.0, abs=1e-9)  # and ignores what it is told
    payload = read_checkpoint(out / "best.pt")
    assert payload["model_config"]["kind"] == "baseline" and payload["model_config"]["num_labels"] == 16
    report = tmp_path / "eval.json"
    evaluated = _ctran(
        "evaluate", "--checkpoint", str(out / "best.pt"), "--size", "32", "--json", str(report)
    )
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(report.read_text())["mAP"] == pytest.approx(metrics["mAP"], abs=1e-6)


def test_baseline_is_never_told_labels_in_training() -> None:
    config = load_config("digits-tiny", ["data.sizes={train: 32, val: 16, test: 16}", "model.kind=baseline"])
    data = build_datasets(config)
    from ctran.training.trainer import Trainer

    torch.manual_seed(0)
    model = ctran.build_baseline(16, backbone="small_cnn")
    trainer = Trainer(model, data["train"], data["val"], config, progress=False)
    trainer.epoch = 1
    _, targets, extras, indices = next(iter(trainer.train_loader))
    truth = torch.cat([targets, extras], dim=1)
    assert torch.all(trainer._training_states(truth, 16, indices) == UNKNOWN)


# ------------------------------------------------------------------------ missing labels


def test_keep_annotations_drops_the_stated_fraction_reproducibly() -> None:
    base = load_digit_scenes("val", 0, 400)
    kept = PartialAnnotations(base, 0.3, seed=0)
    again = PartialAnnotations(base, 0.3, seed=0)
    other = PartialAnnotations(base, 0.3, seed=1)
    targets = torch.stack([kept[i].targets for i in range(len(base))])  # (400, 16)
    assert (targets != UNKNOWN).float().mean() == pytest.approx(0.3, abs=0.02)
    original = torch.stack([base[i].targets for i in range(len(base))])
    assert torch.equal(targets[targets != UNKNOWN], original[targets != UNKNOWN])  # kept ones unchanged
    assert torch.equal(targets, torch.stack([again[i].targets for i in range(len(base))]))
    assert not torch.equal(targets, torch.stack([other[i].targets for i in range(len(base))]))
    assert torch.equal(kept[3].extras, base[3].extras)  # extra labels are inputs, never dropped


def test_keep_annotations_applies_to_train_and_val_not_test() -> None:
    config = load_config(
        "digits-tiny", ["data.sizes={train: 64, val: 64, test: 64}", "data.keep_annotations=0.5"]
    )
    data = build_datasets(config)
    for role, expected in (("train", 0.5), ("val", 0.5), ("test", 1.0)):
        targets = torch.stack([data[role][i].targets for i in range(64)])
        assert (targets != UNKNOWN).float().mean() == pytest.approx(expected, abs=0.08), role


@pytest.mark.parametrize("missing", ["ignore", "negative"])
def test_dropped_labels_never_reach_the_loss_unless_taken_as_negatives(missing: str) -> None:
    """``missing=ignore``: a dropped label's logit gets no gradient (and is never revealed); ``negative``:
    it is trained towards 0."""
    from test_user_paths import _trainer

    trainer, recorder = _trainer(["data.keep_annotations=0.4", f"train.missing={missing}"])
    trainer.epoch = 1
    batch = next(iter(trainer.train_loader))
    trainer._accumulate([trainer._prepare(batch)])
    states, logits = recorder.calls[-1]
    dropped = batch[1] == UNKNOWN  # (B, 16)
    assert dropped.float().mean() == pytest.approx(0.6, abs=0.1)
    grad = logits.grad[:, :16]
    if missing == "ignore":
        assert torch.all(grad[dropped] == 0) and torch.all(states[:, :16][dropped] == UNKNOWN)
    else:
        unknown = dropped & (states[:, :16] == UNKNOWN)
        assert torch.all(grad[unknown] > 0)  # d BCE / d logit = sigmoid(logit) - 0 > 0: pushed to negative


# ------------------------------------------------------------------------ label order


def test_a_dataset_in_another_label_order_is_presented_in_the_models() -> None:
    base = load_digit_scenes("test", 0, 8)
    targets = list(reversed(base.target_names))
    view = in_label_order(base, targets, list(base.extra_names))
    assert list(view.target_names) == targets
    assert torch.equal(view[2].targets, base[2].targets.flip(0))
    assert in_label_order(base, base.target_names, base.extra_names) is base


def test_a_real_vocabulary_mismatch_names_both_sides() -> None:
    base = load_digit_scenes("test", 0, 8)
    wanted = [*base.target_names[1:], "zebra"]
    with pytest.raises(
        CTranError, match=r"the checkpoint has target labels the dataset lacks: zebra.*digit_0"
    ):
        in_label_order(base, wanted, base.extra_names)


def _permuted_copy(path: Path, out: Path, order: list[int]) -> Path:
    """The same model with its target rows stored in ``order`` (names too): an equivalent checkpoint."""
    payload = read_checkpoint(path)
    state = payload["state_dict"]
    rows = order + list(range(len(order), state["readout.bias"].shape[0]))
    model = ctran.build_model(len(rows), backbone="small_cnn", dim=32, layers=1, heads=2)
    model.load_state_dict({k: v[rows] if k in model.label_parameters else v for k, v in state.items()})
    names = [payload["target_names"][i] for i in order]
    return save_checkpoint(out, model, payload["model_config"], names, payload["extra_names"], image_size=48)


def test_evaluate_matches_labels_by_name(tmp_path: Path, capsys) -> None:
    """A checkpoint whose labels are the dataset's in another order scores exactly like the same model in
    the dataset's order (label by label); a vocabulary that really differs is named. (Partial settings
    reveal labels by position, so their known sets follow the checkpoint's order.)"""
    from ctran.cli import main

    original = _source_checkpoint(tmp_path / "a.pt", LABELS)
    permuted = _permuted_copy(original, tmp_path / "b.pt", list(reversed(range(16))))
    scores = []
    for path in (original, permuted):
        report = tmp_path / f"{path.stem}.json"
        argv = ["evaluate", "--checkpoint", str(path), "--size", "48", "--quiet"]
        assert main([*argv, "--json", str(report)]) == 0
        scores.append(json.loads(report.read_text()))
    assert scores[0]["mAP"] == pytest.approx(scores[1]["mAP"], abs=1e-4)
    ap = [{name: row["AP"] for name, row in score["per_label"].items()} for score in scores]
    assert ap[0].keys() == ap[1].keys() and all(
        ap[0][name] == pytest.approx(ap[1][name], abs=1e-4) for name in ap[0] if ap[0][name] is not None
    )
    other = _source_checkpoint(tmp_path / "c.pt", ["zebra", *LABELS[1:]])
    assert main(["evaluate", "--checkpoint", str(other), "--size", "8", "--quiet"]) == 2
    error = capsys.readouterr().err
    assert "zebra" in error and "digit_0" in error
