"""Evaluate a model in the inference settings, running the backbone once per image.

A ``Setting`` says which labels the model is told: ``regular`` (none), ``partial_P`` (a fraction P of each
image's annotated target labels, chosen per image from the seed: the paper's protocol), ``positives_P`` (a
fraction P of its present labels: what a tagged library knows), ``extra`` (all extra labels) and
``partial_P+extra`` / ``positives_P+extra`` (both). Each batch is encoded once and only the label tokens +
transformer + readout run again per setting, so scoring several settings in one call gives exactly the
numbers of one call per setting.

Told vs not told on the same entries: a told setting is scored on the entries left unknown, a different
subset from regular's (revealing labels removes test positives; a rare label can drop out of the mean), so
its mAP mixes what being told does with which entries are scored. Every told setting therefore also reports
``untold_mAP``, the regular (nothing told) probabilities scored on exactly its entries, and ``gain``, its
mAP minus that: the effect of being told alone. The regular pass always runs for it.

Memory: what a pass keeps (``EvalScores``) lives in temporary files laid out in label blocks, truth once as
int8 and, per setting, float32 probabilities and the revealed labels; metrics read one block of labels of
every image at a time. Resident memory then follows images x block, not images x labels x settings (Open
Images' 41,620 x 9,605 in four settings is 6.4 GB of probabilities alone); the files sit in the OS page
cache or on the temporary disk (``TMPDIR``). Under torchrun only rank 0 receives the shards, block by block.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ctran.errors import CTranError
from ctran.metrics import (
    LabelChunkMetrics,
    average_precision,
    calibrate_thresholds,
    label_chunks,
    mean_ap_percent,
)
from ctran.report import add_setting, mark_not_scored, setting_name
from ctran.states import UNKNOWN
from ctran.training.distributed import DistContext, broadcast_from_main, gather_to_main
from ctran.training.label_mask import evaluation_states, positive_states
from ctran.training.loaders import dataset_size
from ctran.training.precision import autocast


@dataclass(frozen=True)
class Setting:
    """What is revealed at inference: a fraction of the targets, either of every annotated one
    (``known_fraction``, the paper's protocol) or of the present ones (``known_positives``), and/or every
    extra label."""

    known_fraction: float = 0.0
    reveal_extras: bool = False
    known_positives: float = 0.0

    def __post_init__(self) -> None:
        if self.known_fraction and self.known_positives:
            raise ValueError("a setting knows a fraction of all labels or of the present ones, not both")

    @property
    def name(self) -> str:
        """``regular``, ``partial_0.5``, ``positives_0.5``, ``extra``, ``partial_0.5+extra`` ..."""
        return setting_name(self.known_fraction, self.reveal_extras, self.known_positives)

    @property
    def reveals_targets(self) -> bool:
        """Whether some target labels are told (so the scored entries differ from regular's)."""
        return self.known_fraction > 0 or self.known_positives > 0


REGULAR = Setting()


def standard_settings(
    fractions: Iterable[float] = (0.25, 0.5, 0.75),
    extra: bool = True,
    positives: Iterable[float] = (0.25, 0.5, 0.75),
) -> list[Setting]:
    """Regular, each partial fraction, each fraction of the present labels, and (when the dataset has extra
    labels) extra."""
    settings = [REGULAR] + [Setting(known_fraction=f) for f in fractions if f > 0]
    settings += [Setting(known_positives=f) for f in positives if f > 0]
    return [*settings, Setting(reveal_extras=True)] if extra else settings


def with_regular(settings: list[Setting]) -> list[Setting]:
    """The settings plus the regular one when absent: every told setting's ``untold_mAP`` reads it."""
    return settings if REGULAR in settings else [*settings, REGULAR]


def input_states(
    setting: Setting, targets: torch.Tensor, extras: torch.Tensor, indices: torch.Tensor, seed: int
) -> torch.Tensor:
    """The (B, T + E) states fed to the model for one setting."""
    if setting.known_positives:
        known_targets = positive_states(targets, indices, setting.known_positives, seed)
    else:
        known_targets = evaluation_states(targets, indices, setting.known_fraction, seed)
    known_extras = extras if setting.reveal_extras else torch.full_like(extras, UNKNOWN)
    return torch.cat([known_targets, known_extras], dim=1)


def _write_all(fd: int, values: np.ndarray, offset: int) -> None:
    """Write an array's bytes at ``offset`` (``pwrite`` may write less than asked: loop)."""
    view = memoryview(np.ascontiguousarray(values)).cast("B")
    try:
        while view:
            written = os.pwrite(fd, view, offset)
            view, offset = view[written:], offset + written
    except OSError as err:
        raise CTranError(
            f"evaluation scratch file in {tempfile.gettempdir()}: {err.strerror}; set TMPDIR to a disk with "
            "room for about 4 bytes per image, target label and setting"
        ) from err


def _read_all(fd: int, out: np.ndarray, offset: int) -> np.ndarray:
    """Fill ``out`` with the bytes at ``offset`` (``preadv`` may read less than asked: loop)."""
    view = memoryview(out).cast("B")
    while view:
        got = os.preadv(fd, [view], offset)
        if got == 0:
            raise CTranError("an evaluation scratch file ended early (was it removed?)")
        view, offset = view[got:], offset + got
    return out


class LabelBlockFile:
    """A (rows, L) matrix of one dtype in an unnamed temporary file, stored one block of labels at a time.

    The block of labels ``[a, b)`` holds ``max_rows`` x (b - a) values row-major from element
    ``a * max_rows``, so appending a batch is one write per block and reading a block of every row is one
    contiguous read. Written values sit in the OS page cache (or on disk), not in this process's memory;
    the file disappears with the object.
    """

    def __init__(self, max_rows: int, dtype: np.dtype, blocks: list[slice]) -> None:
        self.max_rows, self.dtype, self.blocks = max_rows, np.dtype(dtype), blocks
        self.rows = 0
        self._file = tempfile.TemporaryFile(prefix="ctran-eval-")  # noqa: SIM115 (lives as long as self)

    def _offset(self, block: slice, row: int) -> int:
        return (block.start * self.max_rows + row * (block.stop - block.start)) * self.dtype.itemsize

    def append(self, rows: np.ndarray) -> None:
        """Write (B, L) rows after the ones written so far."""
        if self.rows + len(rows) > self.max_rows:
            raise ValueError(f"more than the {self.max_rows} rows this file was made for")
        for block in self.blocks:
            _write_all(self._file.fileno(), rows[:, block].astype(self.dtype), self._offset(block, self.rows))
        self.rows += len(rows)

    def write_block(self, block: slice, values: np.ndarray) -> None:
        """Write one block of labels of all ``max_rows`` rows: (max_rows, block width)."""
        if values.shape != (self.max_rows, block.stop - block.start):
            raise ValueError(f"block of shape {values.shape} for {self.max_rows} rows, labels {block}")
        _write_all(self._file.fileno(), values.astype(self.dtype), self._offset(block, 0))
        self.rows = self.max_rows

    def read(self, block: slice) -> np.ndarray:
        """One block of labels of every row written: (rows, block width)."""
        out = np.empty((self.rows, block.stop - block.start), self.dtype)
        return _read_all(self._file.fileno(), out, self._offset(block, 0))


class EvalScores(Mapping):
    """What one evaluation pass keeps, in label-block files: image indices (N,), the truth once (int8) and,
    per setting, target probabilities (float32) and the labels revealed to the model (settings that reveal
    targets).

    An entry is scored iff annotated and not revealed (``label_mask.scored_mask``). Metrics read one block
    of labels at a time (``metrics``, ``map_and_thresholds``); ``scores[setting]`` gives the whole
    (probs (N, T) float32, truth (N, T) int64, scored (N, T) bool, indices (N,)) tensors, for small
    evaluations and tests.
    """

    def __init__(
        self, settings: Iterable[Setting], max_rows: int, num_labels: int, blocks: list[slice]
    ) -> None:
        self.settings, self.num_labels, self.blocks = list(settings), num_labels, blocks
        self._indices: list[np.ndarray] = []
        self.truth = LabelBlockFile(max_rows, np.int8, blocks)
        self.probs = {s: LabelBlockFile(max_rows, np.float32, blocks) for s in self.settings}
        self.revealed = {
            s: LabelBlockFile(max_rows, np.bool_, blocks) for s in self.settings if s.reveals_targets
        }

    @property
    def indices(self) -> np.ndarray:
        """(N,) image index of every row."""
        return np.concatenate(self._indices) if self._indices else np.zeros(0, dtype=np.int64)

    @property
    def rows(self) -> int:
        return self.truth.rows

    def append(self, indices: torch.Tensor, truth: torch.Tensor, rows: dict[Setting, tuple]) -> None:
        """One batch: (B,) indices, (B, T) truth, and per setting (B, T) probabilities and revealed mask."""
        self._indices.append(torch.as_tensor(indices).numpy().astype(np.int64))
        self.truth.append(truth.numpy())
        for setting, (probs, revealed) in rows.items():
            self.probs[setting].append(probs.numpy())
            if setting in self.revealed:
                self.revealed[setting].append(revealed.numpy())

    def _mask(self, setting: Setting, block: slice) -> np.ndarray | None:
        """(N, width) True where the entry was not revealed (None: nothing was)."""
        return ~self.revealed[setting].read(block) if setting in self.revealed else None

    def blocks_of(self, setting: Setting) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
        """(probs, truth, not-revealed mask) of every label block in turn, each (N, width)."""
        for block in self.blocks:
            yield self.probs[setting].read(block), self.truth.read(block), self._mask(setting, block)

    def metrics(
        self, label_names: Sequence[str] | None = None, settings: Sequence[Setting] | None = None
    ) -> dict[Setting, dict]:
        """``multilabel_metrics`` of ``settings`` (None: every one kept), one label block at a time (truth
        and the regular probabilities read once a block).

        When the regular probabilities were kept, every other setting also gets ``untold_mAP``, their mAP
        over exactly this setting's scored entries, and ``gain``, its mAP minus that (percent points).
        """
        settings = self.settings if settings is None else settings
        totals = {s: LabelChunkMetrics(self.rows, self.num_labels) for s in settings}
        untold = {s: [] for s in settings if s != REGULAR} if REGULAR in self.probs else {}
        for block in self.blocks:
            truth = self.truth.read(block)
            regular = self.probs[REGULAR].read(block) if REGULAR in self.probs else None
            for setting, total in totals.items():
                mask = self._mask(setting, block)
                probs = regular if setting == REGULAR else self.probs[setting].read(block)
                total.add(probs, truth, mask)
                if setting in untold:
                    untold[setting].append(average_precision(regular, truth, mask))  # (width,)
        results = {setting: total.result(label_names) for setting, total in totals.items()}
        for setting, ap in untold.items():
            results[setting] = _with_untold(results[setting], mean_ap_percent(torch.cat(ap)))
        return results

    def map_and_thresholds(self, setting: Setting) -> tuple[float, list[float]]:
        """mAP (percent) and per-label F1-best thresholds of one setting, one label block at a time."""
        ap, cuts = [], []
        for probs, truth, mask in self.blocks_of(setting):
            ap.append(average_precision(probs, truth, mask))
            cuts.append(calibrate_thresholds(probs, truth, mask))
        return mean_ap_percent(torch.cat(ap)), np.concatenate(cuts).tolist()

    def gathered(self, ctx: DistContext | None) -> EvalScores | None:
        """Every process's rows in image-index order on rank 0 (None on the others), one block at a time."""
        if ctx is None or not ctx.enabled:
            return self
        shards = gather_to_main((self.indices,), ctx)
        merged, order = None, None
        if shards is not None:
            indices = np.concatenate([shard[0] for shard in shards])
            order = np.argsort(indices, kind="stable")
            merged = EvalScores(self.settings, len(indices), self.num_labels, self.blocks)
            merged._indices = [indices[order]]
        for block in self.blocks:
            parts = gather_to_main(tuple(file.read(block) for file in self._files()), ctx)
            if merged is not None:
                for file, column in zip(merged._files(), zip(*parts, strict=True), strict=True):
                    file.write_block(block, np.concatenate(column)[order])
        return merged

    def _files(self) -> list[LabelBlockFile]:
        """Every file, in one fixed order (the order shards are sent and received in)."""
        return [self.truth, *self.probs.values(), *self.revealed.values()]

    def __getitem__(self, setting: Setting) -> tuple[torch.Tensor, ...]:
        probs = np.concatenate([p for p, _, _ in self.blocks_of(setting)], axis=1)
        truth = torch.from_numpy(np.concatenate([self.truth.read(b) for b in self.blocks], axis=1)).long()
        revealed = (
            torch.from_numpy(np.concatenate([self.revealed[setting].read(b) for b in self.blocks], axis=1))
            if setting in self.revealed
            else torch.zeros_like(truth, dtype=torch.bool)
        )
        return torch.from_numpy(probs), truth, (truth != UNKNOWN) & ~revealed, torch.from_numpy(self.indices)

    def __iter__(self) -> Iterator[Setting]:
        return iter(self.settings)

    def __len__(self) -> int:
        return len(self.settings)


def _with_untold(metrics: dict, untold_map: float) -> dict:
    """A told setting's metrics with ``untold_mAP`` and ``gain`` right after its mAP."""
    return {"mAP": metrics["mAP"], "untold_mAP": untold_map, "gain": metrics["mAP"] - untold_map, **metrics}


@torch.inference_mode()
def collect_scores(
    model: torch.nn.Module,
    loader: DataLoader,
    settings: list[Setting],
    seed: int = 0,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    progress: bool = False,
) -> EvalScores:
    """Target probabilities of this process's images in every setting, with their truth and image indices."""
    model.eval()
    scores = None
    for batch in tqdm(loader, desc="evaluate", disable=not progress, leave=False):
        if batch is None:  # every image of the batch was unreadable and skipped
            continue
        images, targets, extras, indices = batch
        num_targets = targets.shape[1]
        if scores is None:
            total = dataset_size(loader)
            scores = EvalScores(settings, total, num_targets, label_chunks(total, num_targets))
        images, targets, extras = images.to(device), targets.to(device), extras.to(device)
        rows = {}
        with autocast(device, precision):
            tokens = model.encode(images)
            for setting in settings:
                states = input_states(setting, targets, extras, indices, seed)
                logits = model.decode(tokens, states)[:, :num_targets]  # (B, T)
                revealed = states[:, :num_targets] != UNKNOWN  # (B, T)
                rows[setting] = (logits.float().sigmoid().cpu(), revealed.cpu())
        scores.append(indices, targets.cpu(), rows)
    if scores is None:
        raise CTranError("no images to evaluate: the dataset is empty or every image was unreadable")
    return scores


def evaluate(
    model: torch.nn.Module,
    loader: DataLoader,
    settings: list[Setting] | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    progress: bool = False,
    ctx: DistContext | None = None,
    label_names: Sequence[str] | None = None,
) -> dict:
    """Metrics (percent) per setting, nested by kind (``ctran.report.iter_settings`` reads them back):
    ``{"regular": {...}, "partial": {"0.5": {...}}, "positives": {"0.5": {...}}, "extra": {...},
    "partial_extra": {"0.5": {...}}, "positives_extra": {"0.5": {...}}}``.

    Each setting's metrics hold ``per_label`` AP and positives, named by ``label_names`` (default: the
    loader's dataset's ``target_names``); a setting with nothing to score says so (``not_scored``) instead
    of holding NaN. Every setting but regular also holds ``untold_mAP`` and ``gain`` (see the module's
    docstring): the regular pass runs for them even when regular is not asked for, and is then not reported.
    Under torchrun each process scores its shard, rank 0 gathers the rows and computes the metrics, and
    every process returns them.
    """
    settings = settings or standard_settings()
    names = label_names if label_names is not None else getattr(loader.dataset, "target_names", None)
    scores = collect_scores(model, loader, with_regular(settings), seed, device, precision, progress)
    scores = scores.gathered(ctx)
    results = None
    if scores is not None:
        results = {}
        for setting, metrics in scores.metrics(names, settings).items():
            known, extra, positives = setting.known_fraction, setting.reveal_extras, setting.known_positives
            add_setting(results, known, extra, mark_not_scored(metrics), positives)
    return broadcast_from_main(results, ctx) if ctx is not None else results
