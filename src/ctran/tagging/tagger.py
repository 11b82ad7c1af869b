"""``ctran tag``'s loop: a library's images and their tags in, the tags the model adds out.

Each image's existing tags are *known labels* for the model, not text merged afterwards: a present tag is
positive, a ``-tag`` or a ``--exclude``d one negative, so the labels that go with them move too. Images and
tag files are read in DataLoader workers and decoded while the model runs on the batch before (one backbone
pass per image whatever it is told); results are written batch by batch, so memory does not grow with the
library. The manifest (``ctran.tagging.manifest``) makes a killed run resume and a repeated one a no-op.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ctran.errors import CTranError
from ctran.files import atomic_write_bytes, read_if_exists
from ctran.inference.predictor import Predictor
from ctran.states import UNKNOWN
from ctran.tagging.captions import caption_path
from ctran.tagging.manifest import Manifest, Record, digest, file_digest
from ctran.tagging.matching import Matched, TagMatcher, normalise
from ctran.tagging.options import TagOptions
from ctran.tagging.report import Summary
from ctran.tagging.sidecars import TagFile, tag_files
from ctran.tagging.xmp import XMP_SUFFIX

BACKUP_SUFFIX = ".bak"


@dataclass
class Item:
    """An image still to tag, and the original bytes of files a killed run had already written."""

    image: Path
    originals: dict[str, bytes | None] = field(default_factory=dict)
    ours: list[str] = field(default_factory=list)  # tags an earlier run added (replace mode re-decides them)


@dataclass
class Sample:
    """What a worker hands over for one image: pixels and tag files, or why it cannot be tagged."""

    item: Item
    pixels: torch.Tensor | None = None  # (3, S, S)
    files: list[TagFile] = field(default_factory=list)
    problem: str | None = None  # the skip reason
    error: str | None = None


class LibraryImages(Dataset):
    """Decodes an image and reads its tag files, in a DataLoader worker."""

    def __init__(self, items: Sequence[Item], predictor: Predictor, options: TagOptions) -> None:
        self.items, self.predictor, self.options = items, predictor, options

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample:
        item, options = self.items[index], self.options
        try:
            files = tag_files(item.image, options.reads, options.writes, options.separator, item.originals)
        except CTranError as err:
            return Sample(item, problem="unreadable tag file", error=str(err))
        try:
            pixels = self.predictor.read(item.image)[0]  # as predict decodes it (big JPEGs at a fraction)
        except CTranError as err:
            return Sample(item, problem="unreadable image", error=str(err))
        return Sample(item, pixels, files)


def tag_library(
    predictor: Predictor,
    images: Sequence[Path],
    options: TagOptions,
    state: Path | None,
    checkpoint_id: str,
    jsonl: Path | None = None,
    progress: bool = False,
    out: TextIO | None = None,
) -> Summary:
    """Tag ``images`` starting from their own tags; the manifest lives in ``state`` (None: no resume).

    In dry-run mode nothing is written (not the manifest either): what would change is printed to ``out``
    (stdout by default).
    """
    matcher = TagMatcher(predictor.target_names, predictor.extra_names, options.aliases)
    excluded = [matcher.resolve(name, "--exclude label") for name in options.exclude]
    cuts = predictor.cutoffs(options.threshold)  # (T,)
    fingerprint = _fingerprint(checkpoint_id, options, excluded, cuts)
    manifest = _open_manifest(state, options)
    summary = Summary(images=len(images))
    try:
        todo = _due(images, manifest, fingerprint, options, summary)
        step = _Step(
            predictor, matcher, options, excluded, cuts, fingerprint, manifest, summary, out or sys.stdout
        )
        with _jsonl(jsonl, None if options.mode == "dry-run" else manifest, fingerprint) as lines:
            step.lines = lines
            loader = DataLoader(
                LibraryImages(todo, predictor, options),
                batch_size=predictor.batch_size,
                num_workers=options.workers,
                collate_fn=list,
            )
            with tqdm(total=len(todo), unit="img", desc="tag", disable=not progress) as bar:
                for batch in loader:
                    step(batch)
                    bar.update(len(batch))
    finally:
        if manifest is not None:
            manifest.close()
    return summary


def manifest_path(state: Path) -> Path:
    return state / "tag.sqlite"


def _open_manifest(state: Path | None, options: TagOptions) -> Manifest | None:
    """The manifest, opened for writing; a dry run only reads an existing one (it writes nothing)."""
    if state is None:
        return None
    path = manifest_path(state)
    if options.mode == "dry-run" and not path.exists():
        return None
    return Manifest(path)


def _fingerprint(checkpoint_id: str, options: TagOptions, excluded: list[str], cuts: np.ndarray) -> str:
    """Everything that decides an image's new tags: same fingerprint and same files -> nothing to do."""
    settings = {
        "checkpoint": checkpoint_id,
        "reads": sorted(options.reads),
        "writes": sorted(options.writes),
        "mode": "add" if options.mode == "dry-run" else options.mode,  # a dry run previews an add
        "separator": options.separator,
        "aliases": sorted(options.aliases.items()),
        "exclude": sorted(excluded),
        "extra": sorted(options.extra.items()),
        "cuts": hashlib.sha256(np.asarray(cuts, dtype=np.float64).tobytes()).hexdigest(),
        "max_tags": options.max_tags,
        "min_prob": options.min_prob,
    }
    return hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:16]


def watched_files(image: Path, options: TagOptions) -> dict[str, str | None]:
    """The image (by size and time) and every tag file its result depends on (by content hash)."""
    stat = image.stat()
    files: dict[str, str | None] = {str(image): f"stat:{stat.st_size}:{stat.st_mtime_ns}"}
    kinds = set(options.reads) | set(options.writes)
    paths = [caption_path(image)] if "txt" in kinds else []
    if "xmp" in kinds:
        paths += [image.with_name(image.name + XMP_SUFFIX), image.with_suffix(XMP_SUFFIX)]
    files.update({str(path): file_digest(path) for path in paths})
    return files


def _due(
    images: Sequence[Path], manifest: Manifest | None, fingerprint: str, options: TagOptions, summary: Summary
) -> list[Item]:
    """The images still to tag: not done with these settings, or done but their files changed since."""
    todo = []
    for image in images:
        entry = None if manifest is None else manifest.entry(str(image.resolve()))
        if entry is None:
            todo.append(Item(image))
            continue
        try:
            now = watched_files(image, options)
        except OSError:
            todo.append(Item(image))  # gone or unreadable: the worker reports it
            continue
        if (
            entry.status == "done"
            and entry.fingerprint == fingerprint
            and now == entry.files
            and not options.force
        ):
            summary.done_before += 1
            continue
        landed = {p: b for p, b in entry.originals.items() if now.get(p) == entry.files.get(p)}
        todo.append(Item(image, landed if entry.status == "pending" else {}, entry.ours))
    return todo


class _Step:
    """One batch: predict given each image's tags, decide what to add, write it."""

    def __init__(
        self,
        predictor: Predictor,
        matcher: TagMatcher,
        options: TagOptions,
        excluded: list[str],
        cuts: np.ndarray,
        fingerprint: str,
        manifest: Manifest | None,
        summary: Summary,
        out: TextIO,
    ) -> None:
        self.predictor, self.matcher, self.options = predictor, matcher, options
        self.excluded, self.cuts, self.fingerprint = excluded, cuts, fingerprint
        self.manifest, self.summary, self.out = manifest, summary, out
        self.lines: _Lines | None = None

    def __call__(self, batch: list[Sample]) -> None:
        ready = []
        for sample in batch:
            if sample.problem is None:
                ready.append(sample)
            else:
                self._skip(sample.problem, sample.error)
        if not ready:
            return
        told = [self._told(sample) for sample in ready]
        features = self.predictor.encode(
            torch.stack([s.pixels for s in ready]), names=[str(s.item.image) for s in ready]
        )
        states = self.predictor.states([m.known for m in told], [m.extra for m in told], len(ready))  # (B, L)
        probs = self.predictor.target_probabilities(features, states, given_others=self.lines is not None)
        results = [
            self._result(sample, matched, p, s)
            for sample, matched, p, s in zip(ready, told, probs, states, strict=True)
        ]
        self._write(results)

    def _skip(self, reason: str, message: str) -> None:
        """An image left as it is: counted under ``reason``, ``message`` (naming the file) on stderr."""
        self.summary.skipped[reason] += 1
        self.summary.errors.append(message)
        tqdm.write(f"ctran tag: {message}", file=sys.stderr)

    def _told(self, sample: Sample) -> Matched:
        """The image's tags as known labels: its files', the run's ``--extra``, then the ``--exclude``d as
        negatives where the image itself does not say they are present."""
        ours = set(sample.item.ours) if self.options.mode == "replace" else set()
        present = [t for f in sample.files if f.told for t in f.present if t not in ours]
        absent = [t for f in sample.files if f.told for t in f.absent]
        matched = self.matcher.match(present, absent)
        for name, value in self.options.extra.items():
            matched.extra.setdefault(name, value)
        for name in self.excluded:
            side = matched.known if name in self.matcher.target_names else matched.extra
            side.setdefault(name, False)
        self.summary.tags_read += len(present) + len(absent)
        self.summary.tags_matched += matched.matched
        self.summary.tags_unmatched += len(present) + len(absent) - matched.matched
        self.summary.conflicts += len(matched.conflicts)
        for tag in matched.unmatched:
            if tag in self.summary.unmatched or len(self.summary.unmatched) < Summary.UNMATCHED_KEPT:
                self.summary.unmatched[tag] += 1
        return matched

    def _result(self, sample: Sample, matched: Matched, probs: torch.Tensor, states: torch.Tensor) -> _Result:
        """The labels to add: unknown, at or above their cut and ``--min-prob``, most probable first."""
        names = self.predictor.target_names
        p = probs.numpy()  # (T,)
        unknown = states[: len(names)].numpy() == UNKNOWN  # (T,)
        passing = np.flatnonzero(unknown & (p >= self.cuts) & (p >= self.options.min_prob))
        passing = passing[np.argsort(-p[passing], kind="stable")][: self.options.max_tags]
        every = dict(zip(names, p.tolist(), strict=True)) if self.lines is not None else {}
        return _Result(sample, matched, [names[j] for j in passing], every)

    def _write(self, results: list[_Result]) -> None:
        plans = []
        for result in results:
            try:
                plans.append((result, self._plan(result)))
            except CTranError as err:  # e.g. an XMP sidecar whose dc:subject is not a list
                self._skip("tag file it cannot write into", str(err))
        if self.options.mode == "dry-run":
            for result, changes in plans:
                self._show(result, changes)
                self._count(result)
            return
        records = [self._record(r, c) for r, c in plans] if self.manifest is not None else [None] * len(plans)
        if self.manifest is not None:
            self.manifest.pending(self.fingerprint, records)
        kept = []
        for (result, changes), record in zip(plans, records, strict=True):
            if self._apply(result, changes):
                self._count(result)
                kept.append((result, record))
        if self.lines is not None:
            self.lines.write([r.line() for r, _ in kept])
        if self.manifest is not None:  # the files as the pending records expected them, now written
            self.manifest.done(
                self.fingerprint, [r for _, r in kept], self.lines.path if self.lines else None
            )

    def _plan(self, result: _Result) -> dict[Path, tuple[TagFile, bytes]]:
        """Per written file, its new bytes (only files that change)."""
        ours = set(result.sample.item.ours) if self.options.mode == "replace" else set()
        told = [t for f in result.sample.files if f.told for t in f.present if t not in ours]
        wanted = list(dict.fromkeys([*told, *result.added]))
        changes = {}
        for file in result.sample.files:
            if not file.written:
                continue
            if self.options.mode == "replace":
                own = [t for t in file.present if t not in ours] + [f"-{t}" for t in file.absent]
                have = {self._key(t.lstrip("-")) for t in own}
                tags = own + [t for t in wanted if self._key(t) not in have]
                if file.kind == "xmp":
                    tags = [t for t in tags if not t.startswith("-")]
                new = file.updated(tags, self.options.separator, replace=True)
            else:
                have = {self._key(t) for t in file.present + file.absent}
                new = file.updated(
                    [t for t in wanted if self._key(t) not in have], self.options.separator, False
                )
            if new != file.raw:
                changes[file.path] = (file, new)
        return changes

    def _key(self, tag: str) -> str:
        """Two tags are the same when they name the same label, or read the same once normalised."""
        return self.matcher.label(tag) or normalise(tag)

    def _apply(self, result: _Result, changes: dict[Path, tuple[TagFile, bytes]]) -> bool:
        """Write an image's files atomically; an image whose file changed since it was read is skipped."""
        for path, (file, _) in changes.items():
            if read_if_exists(path) != file.raw and not result.sample.item.originals:
                self._skip("tag file changed during the run", f"{path}: changed during the run; left as is")
                return False
        for path, (file, new) in changes.items():
            if self.options.backup and file.raw is not None:
                backup = path.with_name(path.name + BACKUP_SUFFIX)
                if not backup.exists():
                    atomic_write_bytes(backup, file.raw)
            atomic_write_bytes(path, new)
            self.summary.files_written += 1
        return True

    def _record(self, result: _Result, changes: dict[Path, tuple[TagFile, bytes]]) -> Record:
        """What the manifest keeps of an image: its files as they will be once ``changes`` are written
        (hashed from the new bytes, not read back) and the originals of those it changes."""
        image = result.sample.item.image
        files = watched_files(image, self.options)
        files.update({str(p): digest(new) for p, (_, new) in changes.items()})
        originals = {str(p): f.raw for p, (f, _) in changes.items()}
        present = {t for f in result.sample.files if f.written for t in f.present}
        earlier = (
            [] if self.options.mode == "replace" else [t for t in result.sample.item.ours if t in present]
        )
        return Record(str(image.resolve()), files, originals, list(dict.fromkeys(earlier + result.added)))

    def _count(self, result: _Result) -> None:
        self.summary.tagged += 1
        self.summary.tags_added += len(result.added)
        self.summary.added.update(result.added)

    def _show(self, result: _Result, changes: dict[Path, tuple[TagFile, bytes]]) -> None:
        """Dry run: one line per file that would change, with the tags it would get."""
        if not changes:
            print(f"{result.sample.item.image}: no change", file=self.out)
        for path in changes:
            print(f"{path}: + {', '.join(result.added) or '(tags from other files)'}", file=self.out)


@dataclass
class _Result:
    sample: Sample
    matched: Matched
    added: list[str]
    probs: dict[str, float]

    def line(self) -> str:
        """The ``--jsonl`` record: what the model was told, every target's probability, what was added."""
        known = {name: int(value) for name, value in {**self.matched.known, **self.matched.extra}.items()}
        record = {
            "image": str(self.sample.item.image),
            "known": known,
            "probs": {name: round(p, 6) for name, p in self.probs.items()},
            "added": self.added,
            "unmatched": self.matched.unmatched,
        }
        return json.dumps(record, ensure_ascii=False)


class _Lines:
    """The ``--jsonl`` file, appended batch by batch and flushed to disk before the manifest records it."""

    def __init__(self, path: Path, keep: int) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        mode = "r+b" if keep and path.exists() else "wb"
        self._handle = open(path, mode)  # noqa: SIM115 - closed by __exit__
        self._handle.truncate(keep if mode == "r+b" else 0)
        self._handle.seek(0, 2)

    def write(self, lines: list[str]) -> None:
        if lines:
            self._handle.write("".join(f"{line}\n" for line in lines).encode("utf-8"))
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def __enter__(self) -> _Lines:
        return self

    def __exit__(self, *_: object) -> None:
        self._handle.close()


def _jsonl(path: Path | None, manifest: Manifest | None, fingerprint: str) -> _Lines | nullcontext:
    """The ``--jsonl`` file: continued where a killed run with the same settings left it, else new."""
    if path is None:
        return nullcontext()
    keep = (manifest.output_size(path, fingerprint) if manifest is not None else None) or 0
    return _Lines(path, keep)
