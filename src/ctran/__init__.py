"""ctran: C-Tran multi-label image classification, conditioned on the labels you already know."""

from ctran.inference import load
from ctran.model import build_baseline, build_model
from ctran.states import NEGATIVE, POSITIVE, UNKNOWN

__version__ = "0.1.0"
__all__ = ["NEGATIVE", "POSITIVE", "UNKNOWN", "__version__", "build_baseline", "build_model", "load"]
