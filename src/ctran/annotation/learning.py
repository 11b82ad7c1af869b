"""Learning from a library's answers: fine-tune its checkpoint on them and make the result its model.

``retrain`` exports the current answers into a state folder (``DIR/.ctran/retrain/N/data``, see
``ctran.annotation.export``), trains the checkpoint's own recipe on them from the checkpoint
(``model.init_from``: label rows matched by name, so the old labels keep their rows and a label added in
the library starts fresh), and writes the best weights to ``DIR/.ctran/retrain/N/ctran.pt`` (or ``out``)
atomically. Training is Label Mask Training on partial labels: a label never answered on an image is
unknown there, never revealed and never in the loss. The library then records the checkpoint as its
current model and its labels as trained, so reopening it uses the new model.

Thresholds: the run calibrates each target label's F1-best threshold on the validation answers. Where
those hold fewer than ``MIN_CALIBRATION_POSITIVES`` yes answers of a label, its calibration says little,
and an old label keeps the threshold the checkpoint had (calibrated on its full validation set); a new
label takes the run's (from the few positives there are, or 0.5 with none). ``thresholds`` in the result
says which each label got.

It runs in the caller's thread and reports through ``progress(event)``: ``{"stage": "export"}``, one
``{"stage": "train", "epoch", "epochs", "val_mAP", ...}`` per epoch, ``{"stage": "done", "checkpoint"}``;
a server runs it in a background thread and swaps its model on "done".
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ctran.annotation.export import export_answers
from ctran.annotation.library import STATE_FOLDER, Library
from ctran.errors import CTranError

MIN_CALIBRATION_POSITIVES = 5
RETRAIN_FOLDER = "retrain"
# The final test evaluation of a retrain scores what nothing told (test.csv repeats the validation rows).
QUICK_EVALUATION = ("eval.known_fractions=[]", "eval.known_positives=[]", "eval.extra=false")

Progress = Callable[[dict], None]


@dataclass
class RetrainResult:
    """What a retrain produced."""

    checkpoint: Path
    run: Path  # the ctran train folder (config.yaml, metrics.csv, best.pt ...)
    new_labels: list[str]  # labels the previous checkpoint did not have
    val_map: float  # best validation mAP over the labels with validation answers
    best_epoch: int
    thresholds: dict[str, str]  # target label -> "recalibrated", "kept" or "new"
    seconds: float


def retrain(
    library: Library,
    checkpoint: str | Path | None = None,
    out: str | Path | None = None,
    *,
    epochs: int | None = None,
    val_fraction: float = 0.1,
    overrides: Sequence[str] = (),
    progress: Progress | None = None,
) -> RetrainResult:
    """Fine-tune ``checkpoint`` (default: the library's current one) on the library's answers; returns the
    new checkpoint, now the library's current model. ``epochs`` defaults to the checkpoint's recipe."""
    from ctran.checkpoint import read_checkpoint
    from ctran.config import load_config
    from ctran.training.run import train_run

    notify = progress or (lambda event: None)
    start = time.perf_counter()
    checkpoint = checkpoint or library.store.current_checkpoint()
    if checkpoint is None:
        raise CTranError(f"{library.root} has no checkpoint yet: name the one to start from (--checkpoint)")
    checkpoint = Path(checkpoint).resolve()
    state = _new_state_folder(library)
    notify({"stage": "export", "folder": str(state)})
    items = [*QUICK_EVALUATION, *([f"train.epochs={epochs}"] if epochs else []), *overrides]
    summary = export_answers(
        library, state / "data", checkpoint=checkpoint, val_fraction=val_fraction, overrides=items
    )
    old = read_checkpoint(checkpoint)
    config = load_config(summary.config)  # the export's ctran.yaml: what is trained is what it says
    run = state / "run"

    def on_epoch(row: dict) -> None:
        notify({"stage": "train", **row})

    notify({"stage": "train", "epoch": 0, "epochs": config.train.epochs})
    metrics = train_run(config, run, progress=False, on_epoch=on_epoch)
    best = read_checkpoint(run / "best.pt")
    thresholds, sources = merged_thresholds(old, best, summary.val_positives)
    out = Path(out) if out is not None else state / "ctran.pt"
    _save(best, out, thresholds, {"checkpoint": str(checkpoint), "answers": summary.answers})
    new = [name for name in best["target_names"] + best["extra_names"] if name not in _names(old)]
    info = {
        "parent": str(checkpoint),
        "answers": summary.answers,
        "images": summary.train + summary.val,
        "new_labels": new,
        "val_mAP": metrics["best_val_mAP"],
    }
    library.store.record_checkpoint(out.resolve(), best["target_names"] + best["extra_names"], info)
    notify({"stage": "done", "checkpoint": str(out)})
    return RetrainResult(
        out,
        run,
        new,
        metrics["best_val_mAP"],
        metrics["best_epoch"],
        sources,
        time.perf_counter() - start,
    )


def merged_thresholds(old: dict, new: dict, val_positives: dict[str, int]) -> tuple[list[float], dict]:
    """Per target label of ``new``: its recalibrated threshold where the validation answers hold at least
    ``MIN_CALIBRATION_POSITIVES`` yes answers of it, else the old checkpoint's (an old label), else the
    run's own (a new label); and which of the three each label got."""
    fresh = new.get("thresholds") or [0.5] * len(new["target_names"])
    before = dict(zip(old["target_names"], old.get("thresholds") or [], strict=False))  # {} if it had none
    merged, sources = [], {}
    for name, value in zip(new["target_names"], fresh, strict=True):
        if name not in old["target_names"]:
            merged.append(float(value))
            sources[name] = "new"
        elif val_positives.get(name, 0) >= MIN_CALIBRATION_POSITIVES or name not in before:
            merged.append(float(value))
            sources[name] = "recalibrated"
        else:
            merged.append(float(before[name]))
            sources[name] = "kept"
    return merged, sources


def _names(payload: dict) -> set[str]:
    return set(payload["target_names"]) | set(payload.get("extra_names", []))


def _save(best: dict, out: Path, thresholds: list[float], parent: dict) -> None:
    """The run's best weights with the merged thresholds, written atomically (never half a file)."""
    from ctran.checkpoint import save_checkpoint
    from ctran.model import build_from_config

    meta = {k: v for k, v in best.items() if k not in {"format", "version", "checksum", "state_dict"}}
    model = build_from_config(meta["model_config"])
    model.load_state_dict(best["state_dict"])
    meta.update(thresholds=thresholds, retrained_from=parent)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, model, **meta)


def _new_state_folder(library: Library) -> Path:
    """``DIR/.ctran/retrain/N``, N one more than the last (created here, so two retrains never share one)."""
    base = library.root / STATE_FOLDER / RETRAIN_FOLDER
    base.mkdir(parents=True, exist_ok=True)
    number = max((int(p.name) for p in base.iterdir() if p.name.isdigit()), default=0) + 1
    while True:
        try:
            (base / str(number)).mkdir()
            return base / str(number)
        except FileExistsError:
            number += 1
