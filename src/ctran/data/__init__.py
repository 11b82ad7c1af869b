"""Datasets: every reader yields ``Sample(image, targets, extras, index)`` and names its labels."""

from ctran.data.base import IMAGENET_MEAN, IMAGENET_STD, LabeledImages, Sample, normalize
from ctran.data.digit_scenes import DigitScenesDataset, load_digit_scenes

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DigitScenesDataset",
    "LabeledImages",
    "Sample",
    "load_digit_scenes",
    "normalize",
]
