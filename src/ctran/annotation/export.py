"""A library's answers as a dataset that ``ctran data check`` and ``ctran train`` read, and as sidecar tags.

Written to the export folder (``--format csv``, or ``jsonl`` with the same names)::

    train.csv, val.csv, test.csv  one row per answered image: a yes as ``name``, a no as ``-name``
    labels.txt, extras.txt        the vocabulary: the checkpoint's labels first, then the library's new ones
    ctran.yaml                    with a checkpoint: its recipe, reading this folder, started from it

A label a row does not name was never answered, and is *not annotated* (``unlisted=unknown``), not absent:
Label Mask Training never reveals it and the loss never scores it. ``ctran.yaml`` records that (and
``model.init_from``), so ``ctran train --config OUT/ctran.yaml --out RUN`` needs no other flag; ``ctran data
check --format csv --root OUT --option unlisted=unknown`` reads the folder as training will.

Which images validate is a stable hash of the image id, not a draw: an image stays on its side as the
library grows, so a later retrain never selects its model on images an earlier one was trained on.
``test.csv`` repeats the validation rows (``ctran train`` wants a test split; a library has no separate
one), so the final test metrics of a run on an export are validation metrics.

Sidecars: every image's *yes* answers are appended to its ``.txt`` caption or XMP sidecar with ``ctran
tag``'s writers (add mode, byte-preserving): a tag already there is never written twice and a user's own
tags are never removed, even one a later answer says no to (those are counted, and left as written).
"""

from __future__ import annotations

import copy
import csv
import hashlib
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ctran.annotation.library import Library
from ctran.config import Config, config_from_dict
from ctran.errors import CTranError
from ctran.files import atomic_write_bytes
from ctran.model.backbone import resolve_batchnorm
from ctran.tagging.matching import TagMatcher, normalise
from ctran.tagging.sidecars import tag_files

FORMATS = ("csv", "jsonl")
SIDECARS = ("txt", "xmp")
CONFIG_FILE = "ctran.yaml"
BACKBONE_LR_MULT = 0.1  # of the recipe's: fine-tuning on a library must not undo what the backbone knows


@dataclass
class Vocabulary:
    """The labels an export (and a model trained on it) has: targets, then extra (input-only) labels."""

    targets: list[str]
    extras: list[str]

    @property
    def names(self) -> list[str]:
        return self.targets + self.extras


@dataclass
class ExportSummary:
    """What an export wrote: image counts per split, answers, and the validation split's yes answers."""

    folder: Path
    train: int
    val: int
    answers: int
    val_positives: dict[str, int]  # target label -> yes answers on the validation images
    missing: list[str] = field(default_factory=list)  # answered images no longer in the folder: left out
    config: Path | None = None  # ctran.yaml, when written


def vocabulary(library: Library, checkpoint: dict | None = None) -> Vocabulary:
    """The checkpoint's labels in its order (so none is ever dropped), then the labels only the library has
    (added on the page); a name that is a target on one side and an extra label on the other is refused."""
    targets = list(checkpoint["target_names"]) if checkpoint else []
    extras = list(checkpoint.get("extra_names", [])) if checkpoint else []
    for name, kind, _ in library.store.labels():
        mine, other = (targets, extras) if kind == "target" else (extras, targets)
        if name in other:
            raise CTranError(
                f"label {name!r} is a {kind} label in the library but not in the checkpoint; "
                "rename one of them"
            )
        if name not in mine:
            mine.append(name)
    for name in targets + extras:
        _check_name(name)
    return Vocabulary(targets, extras)


def _check_name(name: str) -> None:
    """A name the CSV/JSON-lines readers read back as itself (``-x`` means "not x", ``;`` separates)."""
    if not name or name != name.strip() or name.startswith("-") or ";" in name or "\n" in name:
        raise CTranError(
            f"label {name!r} cannot be exported: a label name must not start with '-', hold ';' or a line "
            "break, or begin or end with a space"
        )


def in_validation(image: str, fraction: float) -> bool:
    """Whether ``image`` is a validation image: its id's SHA-256 as a number in [0, 1) below ``fraction``."""
    value = int.from_bytes(hashlib.sha256(image.encode()).digest()[:8], "big") / 2**64
    return value < fraction


def export_answers(
    library: Library,
    out: str | Path,
    *,
    format: str = "csv",
    val_fraction: float = 0.1,
    checkpoint: str | Path | None = None,
    absolute: bool = False,
    overrides: Sequence[str] = (),
) -> ExportSummary:
    """Write the library's current answers (the last answer per image and label) as a dataset in ``out``;
    with a ``checkpoint``, also the ``ctran.yaml`` that fine-tunes it on them (``overrides`` applied)."""
    from ctran.checkpoint import read_checkpoint

    if format not in FORMATS:
        raise CTranError(f"export format must be csv or jsonl, got {format!r}")
    if not 0.0 < val_fraction < 1.0:
        raise CTranError(f"the validation fraction must be in (0, 1), got {val_fraction}")
    payload = read_checkpoint(checkpoint) if checkpoint is not None else None
    vocab = vocabulary(library, payload)
    states = library.store.states()
    found = set(library.images)  # as last scanned (the server rescans when it decides to)
    missing = sorted(image for image in states if image not in found)
    images = sorted(image for image in states if image in found)
    if len(images) < 2:
        raise CTranError(
            f"{library.root}: {len(images)} answered image(s); training needs at least two (one to "
            "learn from, one to validate on)"
        )
    train, val = split_images(images, val_fraction)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    extras = set(vocab.extras)
    rows = {name: [] for name in ("train", "val")}
    for image in images:
        path = library.path(image)
        where = str(path) if absolute else os.path.relpath(path, out.resolve())
        labels = [n if v else f"-{n}" for n, v in states[image].items() if n not in extras]
        extra = [n if v else f"-{n}" for n, v in states[image].items() if n in extras]
        rows["train" if image in train else "val"].append((Path(where).as_posix(), labels, extra))
    writer = _csv if format == "csv" else _jsonl
    for split, split_rows in (("train", rows["train"]), ("val", rows["val"]), ("test", rows["val"])):
        atomic_write_bytes(out / f"{split}.{format}", writer(split_rows))
    atomic_write_bytes(out / "labels.txt", "".join(f"{n}\n" for n in vocab.targets).encode())
    if vocab.extras:
        atomic_write_bytes(out / "extras.txt", "".join(f"{n}\n" for n in vocab.extras).encode())
    else:
        (out / "extras.txt").unlink(missing_ok=True)  # an earlier export's would name stale labels
    config = None
    if payload is not None:
        recipe = training_config(payload, checkpoint, out, format, overrides)
        config = write_config(recipe, out / CONFIG_FILE)
    else:
        (out / CONFIG_FILE).unlink(missing_ok=True)
    val_positives = {n: sum(bool(states[image].get(n)) for image in val) for n in vocab.targets}
    answers = sum(len(states[image]) for image in images)
    return ExportSummary(out, len(train), len(val), answers, val_positives, missing, config)


def split_images(images: Sequence[str], fraction: float) -> tuple[set[str], list[str]]:
    """(training images, validation images) by ``in_validation``; a library so small that the hash puts
    every image on one side still gets one validation image (the smallest hash) and trains on the rest."""
    val = [image for image in images if in_validation(image, fraction)]
    if not val or len(val) == len(images):
        val = [min(images, key=lambda image: hashlib.sha256(image.encode()).digest())]
    return set(images) - set(val), val


def _csv(rows: list[tuple[str, list[str], list[str]]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image", "labels", "extra"])
    writer.writerows((image, ";".join(labels), ";".join(extra)) for image, labels, extra in rows)
    return buffer.getvalue().encode()


def _jsonl(rows: list[tuple[str, list[str], list[str]]]) -> bytes:
    lines = [
        json.dumps({"image": image, "labels": labels, "extra": extra}, ensure_ascii=False) + "\n"
        for image, labels, extra in rows
    ]
    return "".join(lines).encode()


def training_config(
    checkpoint: dict, path: str | Path, root: str | Path, format: str = "csv", overrides: Sequence[str] = ()
) -> Config:
    """The checkpoint's own training recipe, fine-tuning it (``model.init_from``) on the export in ``root``
    read with ``unlisted=unknown``, the backbone at ``BACKBONE_LR_MULT`` times the recipe's learning rate;
    ``overrides`` (``train.epochs=5`` ...) last.

    The backbone learns slowly because a library is usually far smaller than what the checkpoint was
    trained on: at the full rate, 3 epochs on 200 digit scenes undid part of the demo model (the annotator
    benchmark's answers per scene 4.13 -> 5.17; 4.20 at a tenth), while the transformer and the label rows
    at the full rate still learn a new label (``benchmarks/new_label.py``). The backbone's BatchNorm mode
    is resolved before the pretrained weights are switched off (the weights come from the checkpoint), so
    it trains as it did."""
    recipe = checkpoint.get("config")
    if not recipe:
        raise CTranError(
            f"{path} records no training config (a converted official checkpoint?): export without "
            "--checkpoint and train with ctran train --config ... --init-from"
        )
    data = copy.deepcopy(recipe)
    model = data.setdefault("model", {})
    model["batchnorm"] = resolve_batchnorm(
        model.get("batchnorm", "auto"), model.get("pretrained", True), model.get("backbone_weights")
    )
    model.update(init_from=str(Path(path).resolve()), pretrained=False, backbone_weights=None)
    data["data"] = {
        **data.get("data", {}),
        "format": format,
        "root": str(Path(root).resolve()),
        "options": {"unlisted": "unknown"},  # a label a row does not name was never answered
        "train_split": None,
        "val_split": None,
        "test_split": None,
        "sizes": None,
        "keep_annotations": 1.0,
    }
    train = data.setdefault("train", {})
    train.update(device="auto", backbone_lr_mult=train.get("backbone_lr_mult", 1.0) * BACKBONE_LR_MULT)
    return config_from_dict(data, list(overrides))


def write_config(config: Config, path: Path) -> Path:
    """``ctran.yaml`` with the command that trains from it."""
    header = f"# Written by ctran annotate export. Train: ctran train --config {path.resolve()} --out RUN\n"
    atomic_write_bytes(path, (header + yaml.safe_dump(config.to_dict(), sort_keys=False)).encode())
    return path


@dataclass
class SidecarSummary:
    """What writing the yes answers into the sidecars did."""

    files_written: int = 0
    tags_added: int = 0
    contradicted: int = 0  # tags in the files a later "no" answer contradicts (left as written)
    problems: list[str] = field(default_factory=list)  # files that could not be read: left alone


def write_sidecars(library: Library, kind: str = "txt", separator: str = ",") -> SidecarSummary:
    """Append each answered image's yes labels to its caption (``txt``) or XMP sidecar (``xmp``)."""
    if kind not in SIDECARS:
        raise CTranError(f"sidecars are txt or xmp, got {kind!r}")
    labels = library.store.labels()
    matcher = TagMatcher(
        [n for n, k, _ in labels if k == "target"], [n for n, k, _ in labels if k == "extra"]
    )
    order = [name for name, _, _ in labels]  # tags are added in the library's label order
    summary = SidecarSummary()
    found = set(library.images)  # as last scanned (the server rescans when it decides to)
    for image, state in library.store.states().items():
        if image not in found:
            continue
        try:
            files = tag_files(library.path(image), (), (kind,), separator)
        except CTranError as err:
            summary.problems.append(str(err))
            continue
        for file in files:
            if not file.written:
                continue
            have = {matcher.label(tag) or normalise(tag) for tag in file.present + file.absent}
            new = [name for name in order if state.get(name) and name not in have]
            summary.contradicted += sum(state.get(matcher.label(tag) or "") is False for tag in file.present)
            if not new:
                continue
            atomic_write_bytes(file.path, file.updated(new, separator, replace=False))
            summary.files_written += 1
            summary.tags_added += len(new)
    return summary
