"""Datasets: every reader yields ``Sample(image, targets, extras, index)`` and names its labels."""

from ctran.data.base import LabeledImages, Sample
from ctran.data.digit_scenes import DigitScenesDataset, load_digit_scenes

__all__ = [
    "DigitScenesDataset",
    "LabeledImages",
    "Sample",
    "load_digit_scenes",
]
