"""``ctran serve``: an interactive tagging page and a JSON API over a trained C-Tran.

An annotator marks some labels present or absent and watches every other probability update: the image is
encoded once, each change re-runs only the label side of the model (``Predictor.condition``).
"""

from ctran.serving.app import create_app
from ctran.serving.server import BackgroundServer

__all__ = ["BackgroundServer", "create_app"]
