"""A library's answers exported as a dataset and learned from: the export reads back as the answers (through
``ctran data check``), unanswered labels are unknown and out of the loss, the sidecars only gain yes tags,
and a retrain keeps the old labels' weights and thresholds, learns a new label and becomes the library's
model."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ctran
from ctran.annotation.export import export_answers, in_validation, write_sidecars
from ctran.annotation.learning import MIN_CALIBRATION_POSITIVES, merged_thresholds, retrain
from ctran.annotation.library import Library
from ctran.checkpoint import read_checkpoint, save_checkpoint
from ctran.cli import main
from ctran.config import load_config
from ctran.data import tabular
from ctran.errors import CTranError
from ctran.model import build_from_config
from ctran.states import UNKNOWN
from ctran.training.losses import bce_terms
from ctran.training.run import build_datasets, input_normalization, model_config

TARGETS, EXTRAS = ["cat", "dog", "car"], ["indoor"]
RECIPE = [
    "model.dim=16",
    "model.layers=1",
    "model.heads=2",
    "train.epochs=1",
    "train.batch_size=8",
    "eval.batch_size=32",
    "train.warmup_epochs=0",
]


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    """A tiny untrained C-Tran saved as ``ctran train`` saves one: with its recipe and thresholds."""
    config = load_config("digits-tiny", RECIPE)
    options = model_config(config, len(TARGETS) + len(EXTRAS))
    torch.manual_seed(0)
    model = build_from_config(options)
    return save_checkpoint(
        tmp_path / "base.pt",
        model,
        options,
        TARGETS,
        EXTRAS,
        image_size=48,
        scale_size=None,
        normalization=input_normalization(config).to_dict(),
        config=config.to_dict(),
        thresholds=[0.3, 0.4, 0.6],
    )


def _images(folder: Path, count: int, start: int = 0) -> list[str]:
    """Bright images for even numbers, dark for odd: a new label that follows brightness is learnable."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(start)
    names = []
    for i in range(start, start + count):
        base = 200 if i % 2 == 0 else 30
        pixels = np.clip(base + rng.integers(-20, 20, (48, 48, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i:03d}.png")
        names.append(f"img{i:03d}.png")
    return names


@pytest.fixture
def library(tmp_path: Path) -> Library:
    """40 images; cat answered on all, dog on a few, car never; a new label ``zebra`` (yes on the bright
    images) answered on the first 30; ``indoor`` (extra) on the first 5."""
    names = _images(tmp_path / "photos", 40)
    library = Library(tmp_path / "photos")
    library.store.add_labels(TARGETS)
    library.store.add_labels(EXTRAS, kind="extra")
    library.store.add_labels(["zebra"], trained=False)
    answers = [(name, "cat", i % 3 == 0) for i, name in enumerate(names)]
    answers += [(name, "dog", True) for name in names[:4]]
    answers += [(name, "zebra", i % 2 == 0) for i, name in enumerate(names[:30])]
    answers += [(name, "indoor", True) for name in names[:5]]
    library.store.answers(answers, "ann")
    library.store.answer(names[5], "dog", True, "ann")
    library.store.answer(names[5], "dog", None, "ann")  # cleared: unknown again, not in the export
    yield library
    library.close()


def _cli(*argv: str) -> int:
    """``ctran annotate ...`` as a user runs it (KEY=VALUE overrides after DIR; errors as exit code 2)."""
    return main(["annotate", *argv])


def _expected_states(library: Library, images: list[str], names: list[str]) -> np.ndarray:
    """(N, L) states the store says: 1 yes, 0 no, -1 never answered (or cleared)."""
    states = library.store.states()
    table = np.full((len(images), len(names)), UNKNOWN)
    for row, image in enumerate(images):
        for column, name in enumerate(names):
            if name in states.get(image, {}):
                table[row, column] = int(states[image][name])
    return table


# ------------------------------------------------------------------------------------------------ export


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_export_reads_back_as_the_answers_and_round_trips_through_data_check(
    library: Library, checkpoint: Path, tmp_path: Path, kind: str
) -> None:
    out = tmp_path / "export"
    root = str(library.root)
    assert _cli("export", root, "--out", str(out), "--format", kind,
                "--checkpoint", str(checkpoint)) == 0  # fmt: skip
    seen = []
    for split in ("train", "val"):
        data = tabular.load(out, split, kind=kind, unlisted="unknown")
        assert list(data.target_names) == [*TARGETS, "zebra"] and list(data.extra_names) == EXTRAS
        images = [(out / f).resolve().relative_to(library.root).as_posix() for f in data.files]
        assert np.array_equal(data.target_table.dense(), _expected_states(library, images, data.target_names))
        assert np.array_equal(data.extra_table.dense(), _expected_states(library, images, EXTRAS))
        seen += images
    assert sorted(seen) == library.images  # every answered image, once
    report = tmp_path / "check.json"
    argv = ["data", "check", "--format", kind, "--root", str(out), "--option", "unlisted=unknown"]
    assert main([*argv, "--split", "train", "--json", str(report), "--strict", "--quiet"]) == 0
    checked = json.loads(report.read_text())
    states = library.store.states()
    train = [i for i in library.images if not in_validation(i, 0.1)]
    assert checked["images"] == len(train) and not checked["missing_files"]
    expected = {n: sum(bool(states[i].get(n)) for i in train) for n in [*TARGETS, "zebra"]}
    assert {n: c for n, c in checked["label_counts"].items()} == expected


def test_unanswered_labels_are_unknown_for_training_and_out_of_the_loss(
    library: Library, checkpoint: Path, tmp_path: Path
) -> None:
    """The export's ctran.yaml trains the checkpoint (init_from) on the folder read with unlisted=unknown:
    the gradient of the loss is zero on every (image, label) nobody answered, and only there."""
    summary = export_answers(library, tmp_path / "export", checkpoint=checkpoint)
    config = load_config(summary.config)
    assert config.model.init_from == str(checkpoint.resolve()) and config.data.format == "csv"
    assert config.train.backbone_lr_mult == pytest.approx(0.1)  # a fine-tune: the backbone learns slowly
    train = build_datasets(config)["train"]
    truth = torch.from_numpy(train.target_table.dense()).long()  # (N, T)
    images = [(summary.folder / f).resolve().relative_to(library.root).as_posix() for f in train.files]
    assert np.array_equal(truth.numpy(), _expected_states(library, images, train.target_names))
    logits = torch.randn(truth.shape, requires_grad=True)
    loss, count = bce_terms(logits, truth, torch.full_like(truth, UNKNOWN))
    loss.backward()
    answered = truth != UNKNOWN
    assert count == answered.sum() and (logits.grad[~answered] == 0).all()
    assert (logits.grad[answered] != 0).all()


def test_the_validation_images_stay_validation_images_as_the_library_grows(
    library: Library, tmp_path: Path
) -> None:
    first = export_answers(library, tmp_path / "a", val_fraction=0.3)
    before = tabular.load(tmp_path / "a", "val").files.tolist()
    added = _images(library.root, 40, start=40)
    library.rescan()
    library.store.answers([(name, "cat", True) for name in added], "ann")
    second = export_answers(library, tmp_path / "b", val_fraction=0.3)
    after = {Path(f).name for f in tabular.load(tmp_path / "b", "val").files}
    assert {Path(f).name for f in before} <= after and second.val > first.val
    assert (
        tabular.load(tmp_path / "b", "test").files.tolist()
        == tabular.load(tmp_path / "b", "val").files.tolist()
    )


def test_an_answered_image_gone_from_the_folder_is_left_out(library: Library, tmp_path: Path) -> None:
    (library.root / "img039.png").unlink()
    library.rescan()
    summary = export_answers(library, tmp_path / "export")
    assert summary.missing == ["img039.png"] and summary.train + summary.val == 39
    assert "img039.png" not in (tmp_path / "export" / "train.csv").read_text()


def test_export_refuses_what_it_cannot_write(library: Library, tmp_path: Path) -> None:
    assert _cli("export", str(library.root)) == 2  # neither --out nor --sidecars
    library.store.add_labels(["-odd"])
    library.store.answer("img000.png", "-odd", True, "ann")
    with pytest.raises(CTranError, match="must not start with '-'"):
        export_answers(library, tmp_path / "x")


def test_sidecars_gain_the_yes_answers_and_keep_every_user_tag(library: Library) -> None:
    caption = library.root / "img000.txt"
    caption.write_bytes(b"Dog, sunset\n")  # dog is answered yes on img000: already there, not repeated
    library.store.answer("img003.png", "cat", False, "ann")  # was yes; the caption says cat
    (library.root / "img003.txt").write_bytes(b"cat")
    summary = write_sidecars(library, "txt")
    assert caption.read_bytes() == b"Dog, sunset, cat, indoor, zebra\n"
    assert (library.root / "img003.txt").read_bytes() == b"cat, dog, indoor"  # the user's "cat" stays
    assert (library.root / "img001.txt").read_bytes() == b"dog, indoor"  # a new caption
    assert summary.contradicted == 1
    again = write_sidecars(library, "txt")
    assert again.files_written == 0 and again.tags_added == 0  # idempotent
    assert write_sidecars(library, "xmp").files_written > 0
    assert _cli("export", str(library.root), "--sidecars", "txt") == 0  # no --out needed
    assert b"zebra" in (library.root / "img000.png.xmp").read_bytes()


# ----------------------------------------------------------------------------------------------- learning


def test_thresholds_are_recalibrated_only_where_the_validation_answers_can(checkpoint: Path) -> None:
    old = read_checkpoint(checkpoint)
    new = {"target_names": ["dog", "cat", "car", "zebra"], "thresholds": [0.9, 0.8, 0.7, 0.2]}
    enough = MIN_CALIBRATION_POSITIVES
    merged, sources = merged_thresholds(old, new, {"cat": enough, "dog": enough - 1, "zebra": 1})
    assert merged == [0.4, 0.8, 0.6, 0.2]  # dog and car kept (by name), cat recalibrated, zebra new
    assert sources == {"dog": "kept", "cat": "recalibrated", "car": "kept", "zebra": "new"}
    uncalibrated = {**old, "thresholds": None}  # nothing to keep: the run's own, however few the answers
    merged, sources = merged_thresholds(uncalibrated, new, {})
    assert merged == new["thresholds"] and set(sources.values()) == {"recalibrated", "new"}


def test_retrain_keeps_the_old_labels_weights_and_adds_the_new_label(
    library: Library, checkpoint: Path
) -> None:
    """With a learning rate of ~0 the retrained weights are the starting ones: the old labels' rows must
    be the checkpoint's (matched by name, not re-initialised), the new label gets a row, and the library
    records the new checkpoint and the label as trained."""
    events = []
    result = retrain(library, checkpoint, overrides=["train.lr=1e-12"], progress=events.append)
    assert [e["stage"] for e in events] == ["export", "train", "train", "done"]
    assert events[2]["epoch"] == 1 and "val_mAP" in events[2]
    new, old = read_checkpoint(result.checkpoint), read_checkpoint(checkpoint)
    names = [*TARGETS, "zebra", *EXTRAS]
    assert new["target_names"] + new["extra_names"] == names and result.new_labels == ["zebra"]
    before = [*old["target_names"], *old["extra_names"]]
    for key in ("label_embed.weight", "readout.weight", "readout.bias"):
        for row, name in enumerate(names):
            if name != "zebra":
                torch.testing.assert_close(
                    new["state_dict"][key][row], old["state_dict"][key][before.index(name)]
                )
    assert new["thresholds"][:3] == [0.3, 0.4, 0.6]  # too few validation answers to recalibrate
    assert library.store.current_checkpoint() == str(result.checkpoint.resolve())
    assert ("zebra", "target", True) in library.store.labels()
    predictor = ctran.load(library.store.current_checkpoint())
    assert "zebra" in predictor.target_names


def test_retrain_through_the_command_learns_the_new_label(library: Library, checkpoint: Path) -> None:
    """``ctran annotate retrain``: the new label, answered yes on the bright images only, is predicted
    higher on bright images than dark ones after training; a second retrain starts from the first."""
    root = str(library.root)
    library.close()
    argv = ["retrain", root, "--checkpoint", str(checkpoint), "--epochs", "6", "train.lr=3e-3"]
    assert _cli(*argv) == 0
    reopened = Library(root)
    current = reopened.store.current_checkpoint()
    predictor = ctran.load(current)
    unanswered = [reopened.path(name) for name in reopened.images[30:]]  # zebra never answered on these
    probs = [result.probs["zebra"] for result in predictor.predict(unanswered)]
    bright, dark = np.mean(probs[0::2]), np.mean(probs[1::2])
    assert bright > dark + 0.1, (bright, dark)
    reopened.close()
    assert _cli("retrain", root, "--epochs", "1") == 0  # from the current checkpoint
    again = Library(root)
    assert [info["parent"] for _, _, info in again.store.checkpoints()] == [str(checkpoint), current]
    again.close()


def test_retrain_needs_a_checkpoint(library: Library) -> None:
    with pytest.raises(CTranError, match="no checkpoint yet"):
        retrain(library)


def test_the_pages_retrain_runs_in_the_background_and_swaps_the_served_model(
    library: Library, checkpoint: Path
) -> None:
    """``POST /api/retrain``: annotating goes on while it runs; when done, the library is served by the new
    model, which predicts the label added in the library (untrained before)."""
    from fastapi.testclient import TestClient

    from ctran.serving.library_app import create_library_app

    app = create_library_app(library, ctran.load(checkpoint), checkpoint=str(checkpoint))
    image = library.images[35]  # zebra never answered here
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        assert client.get("/api/retrain").json()["state"] == "idle"
        before = client.get("/api/image", params={"id": image}).json()
        assert "zebra" in before["untrained"] and "zebra" not in before["predictions"]
        started = client.post("/api/retrain", json={"epochs": 1})
        assert started.status_code == 202 and started.json()["state"] == "running"
        assert client.post("/api/retrain", json={"epochs": 0}).status_code == 422
        answered = client.post(
            "/api/answers", json={"image": image, "label": "dog", "value": True, "annotator": "ann"}
        )
        assert answered.status_code == 200  # the old model keeps serving meanwhile
        deadline = time.monotonic() + 120
        while client.get("/api/retrain").json()["state"] == "running" and time.monotonic() < deadline:
            time.sleep(0.2)
        status = client.get("/api/retrain").json()
        assert status["state"] == "done", status
        assert status["new_labels"] == ["zebra"]
        after = client.get("/api/image", params={"id": image}).json()
        assert "zebra" in after["predictions"] and after["untrained"] == []
        assert after["known"]["dog"] is True
        labels = {row["name"]: row for row in client.get("/api/labels").json()["labels"]}
        assert labels["zebra"]["trained"] is True
        assert app.state.service.checkpoint == status["checkpoint"]
    reopened = Library(library.root)
    assert str(reopened.store.current_checkpoint()) == status["checkpoint"]  # the library opens with it
    reopened.close()
