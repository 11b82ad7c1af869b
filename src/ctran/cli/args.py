"""Small argument checks shared by the command modules."""

from __future__ import annotations

import argparse
import sys

from ctran.errors import CTranError

# The names of ctran.data.registry.REGISTRY (a test keeps them equal), here so that building the parser,
# and so ``--help``, does not import the readers and torch.
DATASET_FORMATS = ("voc", "coco", "vg500", "nuswide", "cub", "openimages", "csv", "jsonl", "digits", "shards")

# predict and serve share one default cut (Predictor.default_threshold); both --help texts say which.
THRESHOLD_DEFAULT = "default: the checkpoint's calibrated per-label thresholds when it has them, else 0.5"


def show_progress(quiet: bool) -> bool:
    """Progress bars only for a person watching: not with ``--quiet``, and only when stderr is a terminal.

    Redirected to a file or a CI log, a bar is hundreds of carriage-return updates, not information.
    """
    return not quiet and sys.stderr.isatty()


def add_quiet_flag(parser: argparse.ArgumentParser, epoch_lines: bool = False) -> None:
    """``--quiet``, saying what it hides (bars) and, for training, what it keeps (one line per epoch)."""
    kept = "; the one line per epoch stays" if epoch_lines else ""
    parser.add_argument(
        "--quiet",
        action="store_true",
        help=f"no progress bars{kept} (bars are shown only when stderr is a terminal)",
    )


def positive(value: int, flag: str) -> int:
    if value < 1:
        raise CTranError(f"{flag} must be a positive integer, got {value}")
    return value


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        sizes = []
    if len(sizes) != 3 or min(sizes) < 1:
        raise CTranError(f"--sizes expects three positive integers TRAIN,VAL,TEST, got {text!r}")
    return sizes


def dataset_options(pairs: list[str]) -> dict[str, str]:
    """``["difficult=negative"]`` -> ``{"difficult": "negative"}``."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise CTranError(f"--option expects KEY=VALUE, got {pair!r}")
        options[key.strip()] = value.strip()
    return options
