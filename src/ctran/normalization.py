"""Input normalisation: the per-channel mean/std a backbone's weights were trained with.

A backbone's pretrained weights only work on images prepared the way they were trained: ImageNet mean/std
for torchvision's ResNets, mean = std = 0.5 for the TF-ported EfficientNets. The model side decides
(``ctran.model.backbone_normalization``), the checkpoint stores it, and every image path (training,
evaluation, ``predict``, ``serve``, ``export``) prepares pixels with the stored values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch


class Normalization(NamedTuple):
    """Per-channel (R, G, B) mean and standard deviation of pixels in [0, 1]."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}


IMAGENET = Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def as_normalization(value: Normalization | dict | Sequence | None) -> Normalization:
    """A ``Normalization`` from one, a ``{"mean", "std"}`` dict (checkpoints), a pair, or None (ImageNet:
    what checkpoints written before normalisation was stored were trained with)."""
    if value is None:
        return IMAGENET
    if isinstance(value, dict):
        value = (value["mean"], value["std"])
    mean, std = value
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"normalisation needs 3 means and 3 positive stds, got {mean!r} / {std!r}")
    return Normalization(tuple(float(m) for m in mean), tuple(float(s) for s in std))


def normalize(images: torch.Tensor, norm: Normalization = IMAGENET) -> torch.Tensor:
    """Float RGB in [0, 1], (..., 3, H, W) -> normalised with ``norm``."""
    mean = torch.tensor(norm.mean, dtype=images.dtype, device=images.device).view(3, 1, 1)
    std = torch.tensor(norm.std, dtype=images.dtype, device=images.device).view(3, 1, 1)
    return (images - mean) / std


def denormalize(pixels: torch.Tensor, norm: Normalization = IMAGENET) -> torch.Tensor:
    """The inverse of ``normalize``, clamped to [0, 1] (for showing an image)."""
    mean = torch.tensor(norm.mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(norm.std, dtype=torch.float32).view(3, 1, 1)
    return (pixels.detach().cpu().float() * std + mean).clamp(0, 1)
