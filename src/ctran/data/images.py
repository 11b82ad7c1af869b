"""Datasets of image files: a file list, compact label tables, the transform, and the bad-image policy.

Every publisher reader (VOC, COCO, ...) parses its annotation files into an ``ImageFileDataset``. Labels are
stored as small integer tables, never as float tensors: a dense ``int8`` matrix when the vocabulary is small
(VOC, COCO, CUB) and CSR-like index arrays when it is large and sparsely annotated (Open Images: millions of
rows over ~10,000 classes, where an absent entry means "not annotated"). Values follow ``ctran.states``:
``1`` positive, ``0`` negative, ``-1`` not annotated (never revealed, never scored).

Bad images: with ``on_bad_image="skip"`` an unreadable file makes ``__getitem__`` return ``None`` (recorded in
``bad_images`` and warned about) and ``collate_samples`` drops it from the batch; with ``"fail"`` it raises a
``CTranError`` naming the file. Missing files are found once, at construction, by listing each image folder,
and left out of the dataset there (``missing_files`` lists them; ``"fail"`` makes them an error): a file that
was never there never costs a batch its place, nor leaves a process of a multi-GPU run without images.
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import default_collate

from ctran.data.base import LabeledImages, Sample
from ctran.data.transforms import eval_transform, load_image
from ctran.errors import CTranError

ON_BAD_IMAGE = ("skip", "fail")
DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
"""What PIL raises for missing, truncated, corrupt or oversized files."""


class DenseLabels:
    """An (N, L) ``int8`` state matrix: 1 positive, 0 negative, -1 not annotated."""

    def __init__(self, matrix: np.ndarray) -> None:
        matrix = np.asarray(matrix)
        if matrix.ndim != 2:
            raise ValueError(f"a label matrix must be 2-D (N, L), got shape {matrix.shape}")
        self.matrix = matrix.astype(np.int8, copy=False)

    @property
    def num_labels(self) -> int:
        return self.matrix.shape[1]

    def __len__(self) -> int:
        return self.matrix.shape[0]

    def row(self, index: int) -> np.ndarray:
        return self.matrix[index]

    def rows(self, start: int, stop: int, columns: np.ndarray | None = None) -> np.ndarray:
        """Rows ``start:stop`` as a dense (n, K) block, optionally only the given label columns."""
        block = self.matrix[start:stop]
        return block if columns is None else block[:, columns]

    def take(self, indices: np.ndarray) -> DenseLabels:
        return DenseLabels(self.matrix[indices])

    def counts(self, value: int) -> np.ndarray:
        """(L,) number of images whose state for each label equals ``value``."""
        return (self.matrix == value).sum(axis=0, dtype=np.int64)

    def per_image(self, value: int) -> np.ndarray:
        """(N,) number of labels of each image whose state equals ``value``."""
        return (self.matrix == value).sum(axis=1, dtype=np.int64)

    def dense(self) -> np.ndarray:
        return self.matrix


class SparseLabels:
    """Annotated entries only, row by row (CSR): everything not stored is ``fill`` (not annotated).

    ``indptr`` (N + 1,) int64 delimits each image's entries in ``columns`` (int32 label ids, sorted within a
    row) and ``values`` (int8 states). Memory is O(annotations), not O(images x labels).
    """

    def __init__(
        self, indptr: np.ndarray, columns: np.ndarray, values: np.ndarray, num_labels: int, fill: int = -1
    ) -> None:
        self.indptr = np.asarray(indptr, dtype=np.int64)
        self.columns = np.asarray(columns, dtype=np.int32)
        self.values = np.asarray(values, dtype=np.int8)
        self._num_labels = num_labels
        self.fill = fill

    @classmethod
    def from_entries(
        cls, rows: np.ndarray, columns: np.ndarray, values: np.ndarray, num_rows: int, num_labels: int
    ) -> SparseLabels:
        """Build from unordered (row, column, value) triples; a repeated entry keeps its largest value.

        Open Images lists some (image, class) pairs more than once (several verification sources); a
        positive verdict from any source wins.
        """
        rows = np.asarray(rows, dtype=np.int64)
        columns = np.asarray(columns, dtype=np.int32)
        values = np.asarray(values, dtype=np.int8)
        order = np.lexsort((-values.astype(np.int16), columns, rows))  # by row, column, largest value first
        rows, columns, values = rows[order], columns[order], values[order]
        first = np.ones(len(rows), dtype=bool)
        first[1:] = (rows[1:] != rows[:-1]) | (columns[1:] != columns[:-1])
        rows, columns, values = rows[first], columns[first], values[first]
        indptr = np.zeros(num_rows + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=num_rows), out=indptr[1:])
        return cls(indptr, columns, values, num_labels)

    @property
    def num_labels(self) -> int:
        return self._num_labels

    def __len__(self) -> int:
        return len(self.indptr) - 1

    def row(self, index: int) -> np.ndarray:
        out = np.full(self._num_labels, self.fill, dtype=np.int8)
        lo, hi = self.indptr[index], self.indptr[index + 1]
        out[self.columns[lo:hi]] = self.values[lo:hi]
        return out

    def rows(self, start: int, stop: int, columns: np.ndarray | None = None) -> np.ndarray:
        """Rows ``start:stop`` densified to (n, K); ``columns`` selects K label ids (all labels if None)."""
        lo, hi = self.indptr[start], self.indptr[stop]
        cols, vals = self.columns[lo:hi], self.values[lo:hi]
        local_rows = np.repeat(np.arange(stop - start), np.diff(self.indptr[start : stop + 1]))
        if columns is not None:
            position = np.full(self._num_labels, -1, dtype=np.int64)
            position[columns] = np.arange(len(columns))
            cols = position[cols]
            keep = cols >= 0
            local_rows, cols, vals = local_rows[keep], cols[keep], vals[keep]
        width = self._num_labels if columns is None else len(columns)
        block = np.full((stop - start, width), self.fill, dtype=np.int8)
        block[local_rows, cols] = vals
        return block

    def take(self, indices: np.ndarray) -> SparseLabels:
        indices = np.asarray(indices, dtype=np.int64)
        starts, lengths = self.indptr[indices], np.diff(self.indptr)[indices]
        indptr = np.zeros(len(indices) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        gather = np.repeat(starts - indptr[:-1], lengths) + np.arange(indptr[-1])
        return SparseLabels(indptr, self.columns[gather], self.values[gather], self._num_labels, self.fill)

    def counts(self, value: int) -> np.ndarray:
        if value == self.fill:
            return len(self) - np.bincount(self.columns, minlength=self._num_labels).astype(np.int64)
        return np.bincount(self.columns[self.values == value], minlength=self._num_labels).astype(np.int64)

    def per_image(self, value: int) -> np.ndarray:
        if value == self.fill:
            return self._num_labels - np.diff(self.indptr)
        running = np.concatenate([[0], np.cumsum(self.values == value, dtype=np.int64)])
        return running[self.indptr[1:]] - running[self.indptr[:-1]]

    def dense(self) -> np.ndarray:
        """The full (N, L) matrix: only for small datasets (Open Images train would need ~60 GB)."""
        return self.rows(0, len(self))


LabelTable = DenseLabels | SparseLabels


def find_missing(image_dir: Path, files: np.ndarray) -> np.ndarray:
    """Positions of ``files`` (paths relative to ``image_dir``) that do not exist, listing each folder once.

    One directory listing per folder is far cheaper than one ``stat`` per file on large datasets.
    """
    heads, _, tails = np.char.rpartition(files.astype(str), "/").T
    missing = np.zeros(len(files), dtype=bool)
    for head in np.unique(heads):
        in_folder = heads == head
        try:
            listing = np.array(os.listdir(image_dir / head), dtype=str)
        except (OSError, ValueError):  # no such folder, or a name the OS cannot hold (NUL byte)
            missing[in_folder] = True
            continue
        missing[in_folder] = ~np.isin(tails[in_folder], listing)
    return np.flatnonzero(missing)


class BadImagePolicy:
    """``on_bad_image`` for a reader: skip an unreadable image (listed, warned about, logged) or fail."""

    on_bad_image: str = "skip"
    bad_images: list[tuple[str, str]]
    bad_image_log: Path | None = None  # set by a training run to list skips in its folder

    def _bad_image(self, where: str | Path, err: Exception) -> None:
        """None (the sample is dropped from its batch), or a ``CTranError`` naming ``where``."""
        reason = f"{type(err).__name__}: {err}"
        if self.on_bad_image == "fail":
            raise CTranError(
                f"cannot read image {where}: {reason} (on_bad_image='skip' skips such files)"
            ) from err
        self.bad_images.append((str(where), reason))
        warnings.warn(f"skipping unreadable image {where}: {reason}", stacklevel=3)
        if self.bad_image_log is not None:  # one JSON line per skip; appends from worker processes are safe
            with open(self.bad_image_log, "a") as log:
                log.write(json.dumps({"path": str(where), "reason": reason}) + "\n")
        return None


class ImageFileDataset(BadImagePolicy, LabeledImages):
    """Images on disk with target (and extra) label tables; yields ``Sample`` or ``None`` for a bad image.

    ``files`` are paths relative to ``image_dir`` (``suffix`` appended, so Open Images can store bare ids);
    ``image_id(i)`` returns ``files[i]``. CUB-style datasets also carry ``extra_groups`` (lists of extra-label
    indices revealed together) and ``extra_certainty`` ((N, E) annotator certainty, 1 = "not visible").
    ``decode_side`` (set by ``registry.build_dataset``): the side the transform resizes to, so that large
    JPEGs are decoded at a reduced size (``transforms.load_image``). ``missing``: the positions of the files
    absent on disk, where a reader cached an earlier listing of the folder (Open Images' 9M files).
    """

    decode_side: int | None = None

    def __init__(
        self,
        image_dir: str | Path,
        files: Sequence[str] | np.ndarray,
        targets: LabelTable,
        target_names: Sequence[str],
        *,
        extras: LabelTable | None = None,
        extra_names: Sequence[str] = (),
        suffix: str = "",
        transform=None,
        on_bad_image: str = "skip",
        drop_missing: bool = False,
        notes: Sequence[str] = (),
        extra_groups: Sequence[Sequence[int]] = (),
        extra_certainty: np.ndarray | None = None,
        missing: np.ndarray | None = None,
    ) -> None:
        if on_bad_image not in ON_BAD_IMAGE:
            raise CTranError(f"on_bad_image must be 'skip' or 'fail', got {on_bad_image!r}")
        self.image_dir = Path(image_dir)
        self.files = np.asarray(files, dtype=str)
        self.suffix = suffix
        self.target_table = targets
        self.extra_table = extras if extras is not None else DenseLabels(np.zeros((len(self.files), 0)))
        self.target_names = tuple(target_names)
        self.extra_names = tuple(extra_names)
        self.transform = transform or eval_transform()
        self.on_bad_image = on_bad_image
        self.notes = list(notes)
        self.extra_groups = [list(group) for group in extra_groups]
        self.extra_certainty = extra_certainty
        self.bad_images: list[tuple[str, str]] = []
        self.dropped_files: list[str] = []
        self._check_shapes()
        self._drop_missing(warn=not drop_missing, missing=missing)

    def _check_shapes(self) -> None:
        """Catch reader bugs early: every table has one row per file and one column per name."""
        n = len(self.files)
        for table, names in ((self.target_table, self.target_names), (self.extra_table, self.extra_names)):
            if len(table) != n or table.num_labels != len(names):
                raise ValueError(
                    f"a ({len(table)}, {table.num_labels}) label table for {n} files and {len(names)} names"
                )

    def _drop_missing(self, warn: bool, missing: np.ndarray | None = None) -> None:
        """Leave out the listed files that are not on disk, or fail (policy "fail", unless ``warn`` is off:
        NUS-WIDE, whose listings name images the publisher never shipped, drops them quietly). ``missing``:
        their positions as a reader cached them from an earlier listing (None: the folders are listed)."""
        if not self.image_dir.is_dir():
            raise CTranError(f"image folder {self.image_dir} does not exist")
        names = np.char.add(self.files, self.suffix) if self.suffix else self.files
        if missing is None:
            missing = find_missing(self.image_dir, names) if len(names) else np.zeros(0, dtype=np.int64)
        if not len(missing):
            return
        example = self.image_dir / names[missing[0]]
        count = f"{len(missing)} of {len(names)} listed images"
        if warn and self.on_bad_image == "fail":
            raise CTranError(
                f"{count} are missing on disk, e.g. {example} (use on_bad_image='skip' to go on without them)"
            )
        self.dropped_files = [str(self.image_dir / names[i]) for i in missing]
        self._select(np.setdiff1d(np.arange(len(self.files)), missing))
        self.notes.append(f"{count} are missing on disk and were skipped")
        if warn:
            warnings.warn(f"{count} are missing on disk, e.g. {example}; they are left out", stacklevel=3)

    @property
    def missing_files(self) -> list[str]:
        """Paths listed by the annotations but absent on disk, left out at construction (a split held out
        of another, ``subset``, reports those of the listing it came from)."""
        return list(self.dropped_files)

    def _select(self, indices: np.ndarray) -> None:
        """Keep only the given rows, in place (files, label tables, certainties)."""
        self.files = self.files[indices]
        self.target_table = self.target_table.take(indices)
        self.extra_table = self.extra_table.take(indices)
        if self.extra_certainty is not None:
            self.extra_certainty = self.extra_certainty[indices]

    def subset(self, indices: Sequence[int] | np.ndarray, transform=None) -> ImageFileDataset:
        """A new dataset of the given rows (a held-out split), optionally with another transform."""
        indices = np.asarray(indices, dtype=np.int64)
        part = copy.copy(self)
        part.bad_images = []
        part._select(indices)
        if transform is not None:
            part.transform = transform
        return part

    def __len__(self) -> int:
        return len(self.files)

    def path(self, index: int) -> Path:
        return self.image_dir / (self.files[index] + self.suffix)

    def image_id(self, index: int) -> str:
        return str(self.files[index])

    def targets_matrix(self) -> np.ndarray:
        """(N, T) int8 target states, without decoding any image."""
        return self.target_table.dense()

    def extras_matrix(self) -> np.ndarray:
        """(N, E) int8 extra-label states."""
        return self.extra_table.dense()

    def __getitem__(self, index: int) -> Sample | None:
        path = self.path(index)
        try:
            image = load_image(path, self.decode_side)
        except DECODE_ERRORS as err:
            return self._bad_image(path, err)
        targets = torch.from_numpy(self.target_table.row(index).astype(np.int64))  # (T,)
        extras = torch.from_numpy(self.extra_table.row(index).astype(np.int64))  # (E,)
        return Sample(self.transform(image), targets, extras, index)

    def encoded_image(self, index: int) -> tuple[bytes, str]:
        """The image file's bytes as stored and its lower-case extension (``ctran data pack``)."""
        path = self.path(index)
        return path.read_bytes(), path.suffix.lower().lstrip(".")


def collate_samples(batch: list[Sample | None]) -> Sample | None:
    """``default_collate`` over the readable samples of a batch (the ``None`` of skipped images dropped).

    Returns ``None`` when every image of the batch was unreadable; training and evaluation loops skip it.
    """
    samples = [sample for sample in batch if sample is not None]
    return default_collate(samples) if samples else None
