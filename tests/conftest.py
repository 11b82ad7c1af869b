"""Shared fixtures: a tiny C-Tran checkpoint built (not trained) in a temporary folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import ctran
from ctran.checkpoint import save_checkpoint

TINY_TARGETS = ("cat", "dog", "person", "car")
TINY_EXTRAS = ("indoor", "outdoor")
TINY_CONFIG = {"kind": "ctran", "backbone": "small_cnn", "dim": 32, "layers": 2, "heads": 2, "num_labels": 6}


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer C-Tran on the small CNN (48 x 48 inputs, a 6 x 6 token grid), 4 targets + 2 extra labels.

    The weights are random but fixed (seed 0); the checkpoint also stores calibrated thresholds.
    """
    torch.manual_seed(0)
    options = {k: v for k, v in TINY_CONFIG.items() if k != "kind"}
    model = ctran.build_model(**options)
    path = tmp_path_factory.mktemp("tiny") / "tiny.pt"
    thresholds = [0.3, 0.5, 0.6, 0.7]
    return save_checkpoint(
        path, model, TINY_CONFIG, TINY_TARGETS, TINY_EXTRAS, image_size=48, thresholds=thresholds
    )


@pytest.fixture(scope="session")
def digits_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained checkpoint with the digit scenes' 16 targets and 4 extra labels (48 x 48 inputs)."""
    from ctran.data.digit_scenes import CONTEXT_NAMES, DIGIT_NAMES, TAG_NAMES

    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    config = {"kind": "ctran", "num_labels": 20, "backbone": "small_cnn", "dim": 16, "layers": 1, "heads": 2}
    torch.manual_seed(0)
    model = ctran.model.build_from_config(config)
    save_checkpoint(path, model, config, DIGIT_NAMES + TAG_NAMES, CONTEXT_NAMES, image_size=48)
    return path
