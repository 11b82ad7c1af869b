"""ctran: C-Tran multi-label image classification, conditioned on the labels you already know.

The public names are imported on first use (PEP 562), so ``import ctran`` and ``ctran --help`` do not pay
for torch; ``ctran.load``, ``ctran.load_model``, ``ctran.build_model`` and the state constants behave as
plain attributes. ``ctran.load(path)`` opens a checkpoint for prediction (a ``Predictor`` over a model fused
for inference); ``ctran.load_model(path)`` returns the trainable ``torch.nn.Module`` with its original layers.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"
__all__ = [
    "NEGATIVE",
    "POSITIVE",
    "UNKNOWN",
    "__version__",
    "build_baseline",
    "build_model",
    "load",
    "load_model",
]

_HOMES = {
    "load": "ctran.inference",
    "load_model": "ctran.checkpoint",
    "build_model": "ctran.model",
    "build_baseline": "ctran.model",
    "NEGATIVE": "ctran.states",
    "POSITIVE": "ctran.states",
    "UNKNOWN": "ctran.states",
}
_SUBMODULES = frozenset(
    ("checkpoint", "cli", "config", "data", "demo", "errors", "files", "inference", "metrics", "model")
    + ("report", "serving", "states", "training")
)


def __getattr__(name: str) -> object:
    """Import a public name's module (or a submodule: ``ctran.model``) the first time it is used."""
    if name in _SUBMODULES:
        return importlib.import_module(f"ctran.{name}")
    if name not in _HOMES:
        raise AttributeError(f"module 'ctran' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
