"""Small argument checks shared by the command modules."""

from __future__ import annotations

from ctran.errors import CTranError


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
