"""The one metrics module for multi-label classification: mAP and the C-Tran precision/recall/F1 family.

Conventions
-----------
* ``scores`` is ``(N, L)``: N images, L labels, higher = more positive (probabilities for thresholding).
* ``targets`` is ``(N, L)`` in ``{-1, 0, 1}`` (see :mod:`ctran.states`): ``1`` positive, ``0`` negative,
  ``-1`` ground truth unknown.
* ``mask`` is an optional ``(N, L)`` bool, True = this entry is scored. An entry is *scored* iff
  ``targets != -1`` and (``mask is None`` or ``mask``). Partial-label evaluation passes a mask that is False
  on the labels revealed to the model: those are given, not predicted, so scoring them would inflate every
  metric. Unknown ground truth (``-1``) cannot be right or wrong, so it is never scored either.
* Unscored entries are invisible: they are neither predicted nor true, never enter a ranking, and changing
  their score or target changes no metric.
* Inputs may be numpy arrays or torch tensors (any device); everything is computed in float64, vectorised
  over images and labels (COCO's 40,000 x 80 takes about 0.3 s on two CPU cores), one chunk of labels at a
  time (:func:`label_chunks`), so the float64 temporaries stay near ``CHUNK_ENTRIES`` entries each whatever
  N x L is. Every metric is per label or a sum over labels, except top-k, whose running per-image top k
  is merged chunk by chunk (:class:`LabelChunkMetrics`); the results do not depend on the chunking.

Average precision
-----------------
Per-label AP is the *non-interpolated* AP of scikit-learn's ``average_precision_score``:
``AP = sum_n (R_n - R_{n-1}) P_n`` over distinct score thresholds, computed on the scored entries of that
label only. Tied scores form one threshold, so every positive in a tie group gets the precision at the end of
the group (no optimistic ordering inside ties). A label with no scored positive has undefined AP (NaN) and is
left out of the mAP, which is the mean over the remaining labels, in percent.

Threshold and top-k metrics (C-Tran convention)
-----------------------------------------------
* Threshold predictions: ``score >= threshold``.
* Top-k predictions: per image, the k highest-scoring *scored* entries (ties broken by lower label index),
  which must also pass ``score >= threshold``, as in the C-Tran paper's code.
* ``CP``/``CR`` are per-class precision/recall averaged over all L labels, with 0 for a label with no
  predicted (resp. true) positives, i.e. scikit-learn's macro average with ``zero_division=0``.
* ``CF1 = 2 CP CR / (CP + CR)``: the F1 of the averaged precision and recall (the C-Tran/ML-GCN convention),
  *not* the mean of per-class F1s; 0 when both are 0.
* ``OP``/``OR``/``OF1`` are overall (micro) precision/recall/F1 over all scored entries.
All of these are reported in percent (0-100).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from ctran.states import POSITIVE, UNKNOWN

__all__ = [
    "CHUNK_ENTRIES",
    "METRIC_KEYS",
    "LabelChunkMetrics",
    "average_precision",
    "calibrate_thresholds",
    "label_chunks",
    "mean_ap_percent",
    "mean_average_precision",
    "multilabel_metrics",
]

METRIC_KEYS: tuple[str, ...] = (
    "mAP",
    "CP",
    "CR",
    "CF1",
    "OP",
    "OR",
    "OF1",
    "CP_top3",
    "CR_top3",
    "CF1_top3",
    "OP_top3",
    "OR_top3",
    "OF1_top3",
)
"""The 13 metric names of :func:`multilabel_metrics` with the default ``top_k=3``, in report-table order."""

ArrayLike = np.ndarray | torch.Tensor

CHUNK_ENTRIES = 1 << 22
"""Entries (images x labels) in one label chunk: each (N, chunk) float64 temporary stays near 32 MiB."""


def label_chunks(num_images: int, num_labels: int, width: int | None = None) -> list[slice]:
    """Consecutive ranges of ``width`` labels covering all labels (None: ``CHUNK_ENTRIES / num_images``)."""
    width = width or max(1, CHUNK_ENTRIES // max(1, num_images))
    return [slice(start, min(start + width, num_labels)) for start in range(0, num_labels, width)]


def _as_matrices(
    scores: ArrayLike, targets: ArrayLike, mask: ArrayLike | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The inputs as tensors of one (N, L) shape, not yet copied or converted (chunks are, one at a time)."""
    s = torch.as_tensor(scores)
    t = torch.as_tensor(targets, device=s.device)
    if s.dim() != 2:
        raise ValueError(f"scores must have shape (N, L), got {tuple(s.shape)}")
    if t.shape != s.shape:
        raise ValueError(f"targets must have the shape of scores {tuple(s.shape)}, got {tuple(t.shape)}")
    m = None if mask is None else torch.as_tensor(mask, device=s.device)
    if m is not None and m.shape != s.shape:
        raise ValueError(f"mask must have the shape of scores {tuple(s.shape)}, got {tuple(m.shape)}")
    return s, t, m


def _prepare(
    scores: ArrayLike, targets: ArrayLike, mask: ArrayLike | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate inputs and reduce them to (float64 scores, bool positives, bool scored), all (N, L).

    Every public function goes through here (one label chunk at a time) so that "what is scored" has
    exactly one definition.
    """
    s, t, m = _as_matrices(scores, targets, mask)
    s = s.to(torch.float64)
    if t.numel() and not ((t == UNKNOWN) | (t == 0) | (t == POSITIVE)).all():
        raise ValueError("targets must be -1 (unknown), 0 (negative) or 1 (positive)")
    scored = t != UNKNOWN  # (N, L) bool
    if m is not None:
        scored = scored & m.to(torch.bool)
    # As in scikit-learn, a NaN/inf score has no place in a ranking; unscored entries may hold anything.
    if not torch.isfinite(s[scored]).all():
        raise ValueError("scores of scored entries must be finite")
    positive = scored & (t == POSITIVE)  # (N, L) bool
    return s, positive, scored


def _average_precision(s: torch.Tensor, positive: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
    """Exact sklearn AP for every column at once, from prepared (N, L) tensors; returns (L,) float64.

    Unscored entries become (score=-inf, y=0): they sort after every real entry, in a tie group of their own,
    and since they are not positive they add nothing to the sum. Work is done in (L, N) layout so that sorts
    and cumulative sums run along contiguous memory.
    """
    n = s.shape[0]
    s_lt = torch.where(scored, s, -torch.inf).T.contiguous()  # (L, N)
    y_lt = positive.T.to(torch.float64)  # (L, N)
    s_sorted, order = torch.sort(s_lt, dim=1, descending=True)  # (L, N)
    y_sorted = y_lt.gather(1, order)  # (L, N)
    tp = y_sorted.cumsum(dim=1)  # (L, N) true positives among the top i+1

    # Last index of each tie group: sklearn evaluates precision only at distinct thresholds.
    is_end = torch.ones_like(s_sorted, dtype=torch.bool)  # (L, N)
    is_end[:, :-1] = s_sorted[:, 1:] != s_sorted[:, :-1]
    idx = torch.arange(n, device=s.device).expand_as(s_sorted)  # (L, N)
    # For each position, the first group end at or after it: a reverse running minimum.
    end = torch.where(is_end, idx, n).flip(1).cummin(dim=1).values.flip(1)  # (L, N)
    precision_at = tp.gather(1, end) / (end + 1).to(torch.float64)  # (L, N)

    npos = y_sorted.sum(dim=1)  # (L,)
    ap = (y_sorted * precision_at).sum(dim=1) / npos  # (L,)
    return torch.where(npos > 0, ap, torch.nan)


def _chunked(scores: ArrayLike, targets: ArrayLike, mask: ArrayLike | None, label_chunk: int | None):
    """(scores, targets, mask) of each label chunk, in label order; ``label_chunk`` labels each (None: from
    ``CHUNK_ENTRIES``)."""
    s, t, m = _as_matrices(scores, targets, mask)
    for labels in label_chunks(*s.shape, label_chunk):
        yield s[:, labels], t[:, labels], None if m is None else m[:, labels]


def average_precision(
    scores: ArrayLike, targets: ArrayLike, mask: ArrayLike | None = None, label_chunk: int | None = None
) -> torch.Tensor:
    """Per-label AP, (L,) float64; NaN for labels with no (scored) positive.

    Equals ``sklearn.metrics.average_precision_score`` per label on that label's scored entries (ties
    included), as a fraction in [0, 1]. NaN rather than 0 for labels without positives, so that callers
    cannot silently average an undefined value into the mAP.
    """
    parts = [
        _average_precision(*_prepare(*chunk)).cpu() for chunk in _chunked(scores, targets, mask, label_chunk)
    ]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)


def mean_ap_percent(ap: torch.Tensor) -> float:
    """Mean of the defined APs in percent; NaN if no label has a scored positive (nothing to average)."""
    defined = ~torch.isnan(ap)
    if not defined.any():
        return float("nan")
    return float(ap[defined].mean()) * 100.0


def mean_average_precision(scores: ArrayLike, targets: ArrayLike, mask: ArrayLike | None = None) -> float:
    """Mean over labels with at least one scored positive, in percent.

    Returns NaN when no label has a scored positive.
    """
    return mean_ap_percent(average_precision(scores, targets, mask))


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den with 0 where den == 0 (scikit-learn's ``zero_division=0``)."""
    return torch.where(den > 0, num / den.clamp(min=1), torch.zeros_like(num))


def _f1(p: float, r: float) -> float:
    """Harmonic mean, 0 when both are 0 (nothing predicted and nothing found)."""
    return 2.0 * p * r / (p + r) if p + r > 0 else 0.0


def _prf(counts: torch.Tensor, suffix: str) -> dict[str, float]:
    """Per-class (C*) and overall (O*) precision/recall/F1 in percent from per-label counts (3, L): true
    positives, predicted positives and positives, each over scored entries only."""
    tp_l, pred_l, pos_l = counts.to(torch.float64)  # (L,) each
    cp = float(_ratio(tp_l, pred_l).mean()) * 100.0 if tp_l.numel() else 0.0
    cr = float(_ratio(tp_l, pos_l).mean()) * 100.0 if tp_l.numel() else 0.0
    tp, n_pred, n_pos = tp_l.sum(), pred_l.sum(), pos_l.sum()
    op = float(_ratio(tp, n_pred)) * 100.0
    o_r = float(_ratio(tp, n_pos)) * 100.0
    return {
        f"CP{suffix}": cp,
        f"CR{suffix}": cr,
        f"CF1{suffix}": _f1(cp, cr),
        f"OP{suffix}": op,
        f"OR{suffix}": o_r,
        f"OF1{suffix}": _f1(op, o_r),
    }


class LabelChunkMetrics:
    """:func:`multilabel_metrics` fed one chunk of labels at a time, so that memory follows N x chunk.

    Feed every label once, in order, with :meth:`add`; :meth:`result` then gives exactly what
    ``multilabel_metrics`` gives on the whole matrix. AP and the threshold counts are per label; top-k keeps
    each image's k best scored entries so far (score, label, positive) and merges every chunk into them
    with a stable sort, which breaks ties by lower label index as the whole-matrix sort does (earlier
    labels come first in the merge).
    """

    def __init__(self, num_images: int, num_labels: int, threshold: float = 0.5, top_k: int = 3) -> None:
        self.num_images, self.num_labels = num_images, num_labels
        self.threshold, self.top_k = threshold, top_k
        self.done = 0  # labels added so far
        self.ap = torch.full((num_labels,), torch.nan, dtype=torch.float64)
        self.counts = torch.zeros(3, num_labels, dtype=torch.int64)  # tp, predicted, positives at threshold
        self.scored_images = torch.zeros(num_images, dtype=torch.bool)
        self.entries = 0
        k = max(0, min(top_k, num_labels))
        self.top_scores = torch.full((num_images, k), -torch.inf, dtype=torch.float64)  # (N, k)
        self.top_labels = torch.zeros(num_images, k, dtype=torch.int64)  # (N, k)
        self.top_positive = torch.zeros(num_images, k, dtype=torch.bool)  # (N, k)

    def add(self, scores: ArrayLike, targets: ArrayLike, mask: ArrayLike | None = None) -> None:
        """Score the next chunk of labels: (N, C) scores, targets and optional mask."""
        s, positive, scored = _prepare(scores, targets, mask)
        if s.shape[0] != self.num_images or self.done + s.shape[1] > self.num_labels:
            raise ValueError(
                f"chunk of shape {tuple(s.shape)} after {self.done} labels does not fit "
                f"({self.num_images}, {self.num_labels})"
            )
        s, positive, scored = s.cpu(), positive.cpu(), scored.cpu()
        labels = slice(self.done, self.done + s.shape[1])
        self.ap[labels] = _average_precision(s, positive, scored)
        above = scored & (s >= self.threshold)  # (N, C) threshold predictions
        self.counts[:, labels] = torch.stack([(above & positive).sum(0), above.sum(0), positive.sum(0)])
        self.scored_images |= scored.any(dim=1)
        self.entries += int(scored.sum())
        self._merge_top_k(s, positive, scored, labels.start)
        self.done = labels.stop

    def _merge_top_k(self, s: torch.Tensor, positive: torch.Tensor, scored: torch.Tensor, first: int) -> None:
        """Keep each image's k best scored entries among the old ones and this chunk's (unscored: -inf)."""
        k = self.top_scores.shape[1]
        labels = torch.arange(first, first + s.shape[1]).expand_as(s)  # (N, C)
        scores = torch.cat([self.top_scores, torch.where(scored, s, -torch.inf)], dim=1)  # (N, k + C)
        order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]  # (N, k)
        self.top_scores = scores.gather(1, order)
        self.top_labels = torch.cat([self.top_labels, labels], dim=1).gather(1, order)
        self.top_positive = torch.cat([self.top_positive, positive], dim=1).gather(1, order)

    def _top_k_counts(self) -> torch.Tensor:
        """(3, L) tp / predicted / positives of the top-k predictions (scored, in the top k, >= threshold)."""
        chosen = torch.isfinite(self.top_scores) & (self.top_scores >= self.threshold)  # (N, k)
        tp = torch.bincount(self.top_labels[chosen & self.top_positive], minlength=self.num_labels)
        predicted = torch.bincount(self.top_labels[chosen], minlength=self.num_labels)
        return torch.stack([tp, predicted, self.counts[2]])

    def result(self, label_names: Sequence[str] | None = None) -> dict:
        """The metrics of every label added (see :func:`multilabel_metrics`)."""
        if self.done != self.num_labels:
            raise ValueError(f"{self.done} of {self.num_labels} labels were added")
        out: dict = {"mAP": mean_ap_percent(self.ap)}
        out.update(_prf(self.counts, ""))
        out.update(_prf(self._top_k_counts(), f"_top{self.top_k}"))
        out["n_images"] = int(self.scored_images.sum())
        out["n_labels_scored"] = int((~torch.isnan(self.ap)).sum())
        out["n_entries"] = self.entries
        if label_names is not None:
            out["per_label"] = _per_label(self.ap, self.counts[2], label_names)
        return out


def multilabel_metrics(
    scores: ArrayLike,
    targets: ArrayLike,
    mask: ArrayLike | None = None,
    threshold: float = 0.5,
    top_k: int = 3,
    label_names: Sequence[str] | None = None,
    label_chunk: int | None = None,
) -> dict:
    """All report metrics in percent: mAP, CP/CR/CF1/OP/OR/OF1 at ``threshold`` and their ``_top{k}`` forms.

    Also returns ``n_images`` (images with at least one scored entry), ``n_labels_scored`` (labels with
    at least one scored positive, i.e. those entering the mAP) and ``n_entries`` (scored entries), so a
    report can say what was averaged over. Key order follows :data:`METRIC_KEYS` (with ``top_k`` in the
    names), then the counts. With ``label_names``, ``per_label`` maps each label to its AP (percent; None
    when it has no scored positive, so the JSON holds no NaN) and its number of scored positives: a mean
    hides which labels fail. Labels are scored ``label_chunk`` at a time (None: from ``CHUNK_ENTRIES``).
    """
    shape = _as_matrices(scores, targets, mask)[0].shape
    metrics = LabelChunkMetrics(*shape, threshold=threshold, top_k=top_k)
    for chunk in _chunked(scores, targets, mask, label_chunk):
        metrics.add(*chunk)
    return metrics.result(label_names)


def _per_label(ap: torch.Tensor, positives: torch.Tensor, names: Sequence[str]) -> dict[str, dict]:
    """``{name: {"AP": percent or None, "positives": scored positives}}`` in label order."""
    if len(names) != ap.numel():
        raise ValueError(f"{len(names)} label names for {ap.numel()} labels")
    return {
        name: {"AP": None if math.isnan(value) else value * 100.0, "positives": int(count)}
        for name, value, count in zip(names, ap.tolist(), positives.tolist(), strict=True)
    }


def calibrate_thresholds(
    scores: ArrayLike,
    targets: ArrayLike,
    mask: ArrayLike | None = None,
    default: float = 0.5,
    label_chunk: int | None = None,
) -> np.ndarray:
    """Per-label decision thresholds that maximise each label's F1 on held-out data: (L,) float64.

    One 0.5 cut suits few labels (rare labels want a lower one, confusable ones a higher one). For each
    label, every distinct scored value is a candidate cut (predict ``score >= t``); the one with the best F1
    over that label's scored entries wins, the highest cut on ties (fewest positive predictions). A label
    without a scored positive has F1 0 at every cut and gets ``default``.
    """
    parts = [_calibrate(*_prepare(*chunk), default) for chunk in _chunked(scores, targets, mask, label_chunk)]
    return np.concatenate(parts) if parts else np.zeros(0)


def _calibrate(s: torch.Tensor, positive: torch.Tensor, scored: torch.Tensor, default: float) -> np.ndarray:
    """F1-best thresholds of prepared (N, L) tensors, (L,) float64 (see :func:`calibrate_thresholds`)."""
    n, num_labels = s.shape
    if n == 0:
        return np.full(num_labels, default)
    s_lt = torch.where(scored, s, -torch.inf).T.contiguous()  # (L, N); unscored entries sort last
    s_sorted, order = torch.sort(s_lt, dim=1, descending=True)  # (L, N)
    y_sorted = positive.T.gather(1, order).to(torch.float64)  # (L, N)
    tp = y_sorted.cumsum(dim=1)  # (L, N): true positives when the cut keeps the top i+1
    npos = y_sorted.sum(dim=1, keepdim=True)  # (L, 1)
    kept = torch.arange(1, n + 1, device=s.device, dtype=torch.float64)  # (N,)
    f1 = 2 * tp / (kept + npos)  # (L, N)
    # A cut keeps a whole tie group, so only the last entry of each group (and only scored ones) is a cut.
    is_end = torch.ones_like(s_sorted, dtype=torch.bool)  # (L, N)
    is_end[:, :-1] = s_sorted[:, 1:] != s_sorted[:, :-1]
    f1 = torch.where(is_end & torch.isfinite(s_sorted), f1, -1.0)
    best = f1.argmax(dim=1, keepdim=True)  # (L, 1): the first maximum is the highest cut
    thresholds = s_sorted.gather(1, best).squeeze(1)  # (L,)
    return torch.where(npos.squeeze(1) > 0, thresholds, default).cpu().numpy()
