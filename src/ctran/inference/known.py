"""What the user already knows about an image, turned into the model's label states.

The API takes ``{name: bool}`` dicts: ``known`` for target labels (then returned as inputs, not predicted) and
``extra`` for input-only labels (metadata such as place or weather). The CLI writes the same as
``person=1,car=0``. Every mistake (a misspelt name, a label in the wrong place, a contradiction) is a
``CTranError`` that names the label and, for a misspelling, the closest valid names.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence

import torch

from ctran.errors import CTranError
from ctran.states import NEGATIVE, POSITIVE, UNKNOWN

TRUE_WORDS = frozenset({"1", "true", "yes", "y", "+", "pos", "positive"})
FALSE_WORDS = frozenset({"0", "false", "no", "n", "-", "neg", "negative"})

LabelSpec = Mapping[str, bool]


def parse_spec(texts: str | Sequence[str] | None, flag: str = "--known") -> dict[str, bool]:
    """``"person=1,car=0"`` (or several such strings, as repeated flags give) -> ``{"person": True, ...}``.

    Values are 1/0, true/false, yes/no or +/- (any case). A label given twice must get the same value.
    """
    if texts is None:
        return {}
    spec: dict[str, bool] = {}
    for text in [texts] if isinstance(texts, str) else texts:
        for item in filter(None, (part.strip() for part in text.split(","))):
            name, sep, word = (piece.strip() for piece in item.rpartition("="))
            if not sep or not name:
                raise CTranError(f"{flag} expects NAME=VALUE pairs separated by commas, got {item!r}")
            value = _parse_value(word, name, flag)
            if spec.get(name, value) != value:
                raise CTranError(f"{flag}: label {name!r} is given twice with different values")
            spec[name] = value
    return spec


def bool_word(word: str) -> bool | None:
    """``"yes"`` -> True, ``"0"`` -> False (the CLI's spellings, any case and spacing); None otherwise.

    One list of spellings for the command line and the JSON API, so a value means the same in both.
    """
    lowered = word.strip().lower()
    if lowered in TRUE_WORDS:
        return True
    if lowered in FALSE_WORDS:
        return False
    return None


def _parse_value(word: str, name: str, flag: str) -> bool:
    value = bool_word(word)
    if value is not None:
        return value
    raise CTranError(f"{flag}: value {word!r} for label {name!r} is not one of 1/0, true/false, yes/no, +/-")


def label_states(
    target_names: Sequence[str],
    extra_names: Sequence[str],
    known: LabelSpec | None = None,
    extra: LabelSpec | None = None,
) -> torch.Tensor:
    """States (L,) over targets then extras: the given labels positive/negative, every other one unknown."""
    known, extra = dict(known or {}), dict(extra or {})
    both = sorted(known.keys() & extra.keys())
    if both:
        raise CTranError(f"label {both[0]!r} is given both as known and as extra; give it once")
    _check_names(known, target_names, extra_names, "known", "extra")
    _check_names(extra, extra_names, target_names, "extra", "known")
    index = {name: i for i, name in enumerate([*target_names, *extra_names])}
    states = torch.full((len(index),), UNKNOWN, dtype=torch.long)  # (L,)
    for name, value in {**known, **extra}.items():
        states[index[name]] = POSITIVE if _as_bool(value, name) else NEGATIVE
    return states


def _check_names(
    spec: dict, allowed: Sequence[str], elsewhere: Sequence[str], kind: str, other_kind: str
) -> None:
    """Every name must be one of ``allowed``; say so precisely when it belongs to the other kind."""
    for name in spec:
        if name in allowed:
            continue
        if name in elsewhere:
            what = "a target label" if kind == "extra" else "an extra (input-only) label"
            raise CTranError(f"label {name!r} is {what}: give it as {other_kind}, not as {kind}")
        category = "target" if kind == "known" else "extra"
        if not allowed:
            raise CTranError(f"this model has no {category} labels, but {kind} label {name!r} was given")
        raise unknown_label(name, allowed, category)


def unknown_label(name: str, allowed: Sequence[str], kind: str = "") -> CTranError:
    """The error for a name that is not a label, listing the closest valid names (or a preview of all)."""
    close = difflib.get_close_matches(name, allowed, n=5, cutoff=0.5)
    what = f"{kind} label" if kind else "label"
    hint = f"closest: {', '.join(close)}" if close else f"{what}s are: {_preview(allowed)}"
    return CTranError(f"unknown {what} {name!r}; {hint}")


def _preview(names: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown}, ... ({len(names)} in all)"


def _as_bool(value: object, name: str) -> bool:
    """Accept bools and 0/1 (Python, numpy or torch); anything else is a mistake, not a truthiness test."""
    try:
        boolean = value in (True, False)  # compares by value, so 1, 0.0 and np.True_ pass and "yes" does not
    except (ValueError, RuntimeError):  # an array or tensor of several values has no single truth value
        boolean = False
    if boolean:
        return bool(value)
    raise CTranError(f"label {name!r}: expected True/False (or 1/0), got {value!r}")
