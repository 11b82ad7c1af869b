"""Every config value is checked at load, with a one-line error naming the key (exit code 2), before any
dataset or model is built: ranges and choices sit next to each field in ``ctran.config``."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from ctran.config import CHOICES, Config, ModelConfig, Range, field_marks, load_config
from ctran.errors import CTranError


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("eval.known_fractions=[2.0]", "eval.known_fractions[0] must be in [0, 1), got 2.0"),
        ("data.crop_sizes=[a,1.5]", "data.crop_sizes[0] must be int, got 'a'"),
        ("train.lr=-1", "train.lr must be > 0, got -1.0"),
    ],
)
def test_the_issues_bad_values_stop_ctran_train_at_once(tmp_path: Path, override: str, message: str) -> None:
    """The three values of issue 21 once trained to the end (or crashed with exit code 1 in the optimiser)."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "ctran", "train", "--config", "digits-tiny", "--out", str(out), override]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    seconds = time.perf_counter() - start
    assert done.returncode == 2, done.stderr
    assert done.stderr == f"ctran train: error: {message}\n"
    assert not out.exists()  # nothing written: it failed before any work
    assert seconds < 20  # no dataset, no model (about 0.3 s; generous for a loaded machine)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.crop_sizes=[576,1.5]", "data.crop_sizes[1] must be int, got 1.5"),
        ("data.crop_sizes=[576,0]", "data.crop_sizes[1] must be > 0, got 0"),
        ("data.keep_annotations=0", "data.keep_annotations must be in (0, 1], got 0.0"),
        ("train.max_known_fraction=1.5", "train.max_known_fraction must be in [0, 1], got 1.5"),
        ("eval.known_fractions=[0.5,1]", "eval.known_fractions[1] must be in [0, 1), got 1.0"),
        ("train.ema_decay=1", "train.ema_decay must be in [0, 1), got 1.0"),
        ("train.epochs=0", "train.epochs must be > 0, got 0"),
        ("data.num_workers=-1", "data.num_workers must be >= 0, got -1"),
        ("model.ffn_dim=0", "model.ffn_dim must be > 0, got 0"),
        ("data.sizes={train: 0}", "data.sizes.train must be > 0, got 0"),
        ("data.std=[0.2,0.2,0]", "data.std[2] must be > 0, got 0.0"),
        ("train.lr=.nan", "train.lr must be > 0, got nan"),
        ("train.label_tokens=-1", "train.label_tokens must be >= 0, got -1"),
        ("seed=-1", "seed must be in [0, 9223372036854775808), got -1"),
        (f"seed={2**64}", f"seed must be in [0, 9223372036854775808), got {2**64}"),
        ("train.epochs=-" + "9" * 400, "train.epochs must be > 0, got -" + "9" * 400),
        ("model.batchnorm=none", "model.batchnorm must be one of auto, frozen, live, sync, got 'none'"),
        ("model.dim=30", "model.dim (30) must be divisible by model.heads (4)"),
        (
            "data.image_size=700",
            "data.scale_size (640) must be at least data.image_size (700), or null for a plain resize",
        ),
        (
            "data.mean=[0.5,0.5,0.5]",
            "set both data.mean and data.std, or neither (the backbone's own are used)",
        ),
    ],
)
def test_out_of_range_values_name_their_key(override: str, message: str) -> None:
    with pytest.raises(CTranError) as refused:
        load_config(None, [override])
    assert str(refused.value) == message


def test_in_range_values_and_yaml_floats_load() -> None:
    config = load_config(
        "digits-tiny",
        [
            "train.lr=3e-4",
            "eval.known_fractions=[0, 0.5]",
            "model.ffn_dim=null",
            "data.scale_size=null",
            "train.ema_decay=0.9997",
            "data.keep_annotations=1",
            "train.label_tokens=0",
            "model.batchnorm=frozen",
        ],
    )
    assert config.train.lr == 3e-4 and config.eval.known_fractions == [0.0, 0.5]
    assert config.train.ema_decay == 0.9997 and config.model.batchnorm == "frozen"


def test_every_default_and_shipped_config_is_in_range() -> None:
    """The defaults pass their own marks, so the marks describe what the project itself uses."""
    for name in ("coco80", "cub312", "digits", "digits-tiny", "nuswide", "own-cpu", "vg500", "voc2007"):
        load_config(name)
    defaults = Config().to_dict()
    for key, marks in field_marks().items():
        value = defaults
        for part in key.split("."):
            value = value[part]
        for mark in marks:
            if value is not None:
                mark.check(key, value)


def test_every_choice_field_is_listed_and_bounds_read_as_written() -> None:
    assert CHOICES["model.batchnorm"] == ("auto", "frozen", "live", "sync")
    assert CHOICES["train.schedule"] == ("plateau", "cosine", "onecycle")
    assert [Range(gt=0).describe(), Range(ge=0, lt=1).describe(), Range(gt=0, le=1).describe()] == [
        "> 0",
        "in [0, 1)",
        "in (0, 1]",
    ]
    assert Range(le=2.5).describe() == "<= 2.5"
    assert ModelConfig().batchnorm == "auto"
