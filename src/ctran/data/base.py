"""The one sample structure every dataset yields."""

from __future__ import annotations

from typing import NamedTuple

import torch


class Sample(NamedTuple):
    """One image with its annotation; ``default_collate`` batches each field."""

    image: torch.Tensor  # (3, H, W) float, normalised
    targets: torch.Tensor  # (T,) long states {-1, 0, 1}: labels to predict (-1: not annotated)
    extras: torch.Tensor  # (E,) long states {-1, 0, 1}: input-only labels (metadata)
    index: int  # position in the dataset; seeds the deterministic known-label sets of evaluation


class LabeledImages(torch.utils.data.Dataset):
    """Interface of every ctran dataset: a sequence of ``Sample`` plus its label names."""

    target_names: tuple[str, ...]
    extra_names: tuple[str, ...] = ()

    @property
    def label_names(self) -> tuple[str, ...]:
        """Targets then extras: the order of the model's label tokens."""
        return tuple(self.target_names) + tuple(self.extra_names)

    def __getitem__(self, index: int) -> Sample:
        raise NotImplementedError
