"""Dataset views that change a dataset's annotations, not its images.

- ``PartialAnnotations``: the standard protocol for training with missing labels (SST, SARB, HST, DualCoOp):
  keep a seeded random fraction of the (image, target label) annotations and mark the rest not annotated
  (-1), so that they are never revealed and, by default, never scored.
- ``ReorderedLabels``: a dataset whose label vocabulary is a checkpoint's in another order, presented in the
  checkpoint's order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ctran.data.base import LabeledImages, Sample
from ctran.errors import CTranError
from ctran.states import UNKNOWN


class _View(LabeledImages):
    """A wrapped dataset; attributes it does not override (ids, label tables, groups) are the base's."""

    def __init__(self, base: LabeledImages) -> None:
        self.base = base
        self.target_names, self.extra_names = tuple(base.target_names), tuple(base.extra_names)

    def __len__(self) -> int:
        return len(self.base)

    def __getattr__(self, name: str) -> object:
        if name == "base":  # not set yet (unpickling in a loader worker)
            raise AttributeError(name)
        return getattr(self.base, name)

    @property
    def bad_image_log(self) -> object:
        return getattr(self.base, "bad_image_log", None)

    @bad_image_log.setter
    def bad_image_log(self, path: object) -> None:
        """A training run names its skip log on the dataset; the reader that skips is the base."""
        self.base.bad_image_log = path


class PartialAnnotations(_View):
    """Each target annotation kept with probability ``fraction``, drawn from (seed, image index) alone."""

    def __init__(self, base: LabeledImages, fraction: float, seed: int) -> None:
        if not 0.0 < fraction <= 1.0:
            raise CTranError(f"data.keep_annotations must be in (0, 1], got {fraction}")
        super().__init__(base)
        self.fraction, self.seed = fraction, seed

    def kept(self, index: int) -> torch.Tensor:
        """(T,) bool: which target annotations of image ``index`` are kept."""
        draw = np.random.default_rng([self.seed, index, 0x6B656570]).random(len(self.target_names))
        return torch.from_numpy(draw < self.fraction)

    def __getitem__(self, index: int) -> Sample | None:
        sample = self.base[index]  # a position, or a shard record (whose image index is sample.index)
        if sample is None or self.fraction == 1.0:
            return sample
        kept = self.kept(sample.index)
        targets = torch.where(kept, sample.targets, torch.full_like(sample.targets, UNKNOWN))
        return sample._replace(targets=targets)


def label_order(
    have: Sequence[str], want: Sequence[str], kind: str, where: str, model: str
) -> list[int] | None:
    """Positions of ``want`` in ``have`` (None when already in order); an error naming each side's extras."""
    if list(have) == list(want):
        return None
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    if missing or extra or len(have) != len(want):
        parts = []
        if missing:
            parts.append(f"{model} has {kind} labels {where} lacks: {', '.join(missing[:10])}")
        if extra:
            parts.append(f"{where} has {kind} labels {model} lacks: {', '.join(extra[:10])}")
        raise CTranError("; ".join(parts) or f"{where} repeats {kind} label names")
    position = {name: i for i, name in enumerate(have)}
    return [position[name] for name in want]


class ReorderedLabels(_View):
    """``base`` with its targets and extras permuted into ``targets`` and ``extras`` order (same sets)."""

    def __init__(self, base: LabeledImages, target_order: list[int] | None, extra_order: list[int] | None):
        super().__init__(base)
        self.target_order, self.extra_order = target_order, extra_order
        if target_order is not None:
            self.target_names = tuple(base.target_names[i] for i in target_order)
        if extra_order is not None:
            self.extra_names = tuple(base.extra_names[i] for i in extra_order)

    def __getitem__(self, index: int) -> Sample | None:
        sample = self.base[index]
        if sample is None:
            return None
        targets = sample.targets if self.target_order is None else sample.targets[self.target_order]
        extras = sample.extras if self.extra_order is None else sample.extras[self.extra_order]
        return sample._replace(targets=targets, extras=extras)


def in_label_order(
    dataset: LabeledImages, targets: Sequence[str], extras: Sequence[str], model: str = "the checkpoint"
) -> LabeledImages:
    """``dataset`` presented with a model's label order; the same sets in another order are fine."""
    where = "the dataset"
    target_order = label_order(dataset.target_names, targets, "target", where, model)
    extra_order = label_order(dataset.extra_names, extras, "extra", where, model)
    if target_order is None and extra_order is None:
        return dataset
    return ReorderedLabels(dataset, target_order, extra_order)
