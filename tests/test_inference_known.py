"""Known/extra label specs: CLI parsing, states, and one clear error for each kind of mistake."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctran.errors import CTranError
from ctran.inference.known import label_states, parse_spec, unknown_label

TARGETS = ["person", "car", "bicycle", "dog"]
EXTRAS = ["context_beach", "context_street"]


def test_parse_spec_accepts_every_value_word_and_repeated_flags() -> None:
    spec = parse_spec(["person=1, car=0,bicycle=TRUE", "dog=no,a=+,b=-,c=Yes,d=false"])
    assert spec == {
        "person": True,
        "car": False,
        "bicycle": True,
        "dog": False,
        "a": True,
        "b": False,
        "c": True,
        "d": False,
    }
    assert parse_spec("person=1,person=yes") == {"person": True}  # same value twice is fine
    assert parse_spec(None) == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("person=1,person=0", "given twice with different values"),
        ("person", "NAME=VALUE"),
        ("=1", "NAME=VALUE"),
        ("person=maybe", "not one of"),
    ],
)
def test_parse_spec_errors(text: str, message: str) -> None:
    with pytest.raises(CTranError, match=message):
        parse_spec(text)


def test_states_follow_label_order_targets_then_extras() -> None:
    states = label_states(TARGETS, EXTRAS, {"car": True, "dog": False}, {"context_street": np.True_})
    assert states.tolist() == [-1, 1, -1, 0, -1, 1]
    assert states.dtype == torch.long
    assert label_states(TARGETS, EXTRAS).tolist() == [-1] * 6
    assert label_states(TARGETS, EXTRAS, {"person": 1, "car": 0.0}).tolist()[:2] == [1, 0]


def test_unknown_name_lists_closest_names() -> None:
    with pytest.raises(CTranError, match=r"unknown target label 'persn'; closest: person"):
        label_states(TARGETS, EXTRAS, {"persn": True})
    with pytest.raises(CTranError, match=r"unknown extra label 'context_beech'; closest: context_beach"):
        label_states(TARGETS, EXTRAS, extra={"context_beech": True})
    with pytest.raises(CTranError, match=r"target labels are: person, car, bicycle, dog"):
        label_states(TARGETS, EXTRAS, {"zzzzzz": True})


def test_labels_in_the_wrong_place_or_both_places() -> None:
    with pytest.raises(CTranError, match="'context_beach' is an extra .* give it as extra, not as known"):
        label_states(TARGETS, EXTRAS, {"context_beach": True})
    with pytest.raises(CTranError, match="'car' is a target label: give it as known, not as extra"):
        label_states(TARGETS, EXTRAS, extra={"car": True})
    with pytest.raises(CTranError, match="'car' is given both as known and as extra"):
        label_states(TARGETS, EXTRAS, {"car": True}, {"car": True})
    with pytest.raises(CTranError, match="this model has no extra labels"):
        label_states(TARGETS, [], extra={"context_beach": True})


@pytest.mark.parametrize("value", ["yes", 2, None, 0.5])
def test_values_must_be_booleans(value: object) -> None:
    with pytest.raises(CTranError, match="expected True/False"):
        label_states(TARGETS, EXTRAS, {"car": value})


def test_label_names_may_contain_equals_signs_and_errors_name_the_flag() -> None:
    """The value is after the *last* ``=``; errors name ``--known`` unless told another flag."""
    assert parse_spec("a=b=1") == {"a=b": True}
    with pytest.raises(CTranError, match="^--known expects NAME=VALUE"):
        parse_spec("person")
    with pytest.raises(CTranError, match="^--extra expects NAME=VALUE"):
        parse_spec("person", flag="--extra")


def test_unknown_label_without_close_names_previews_twelve_of_them() -> None:
    names = [f"label_{i:02d}" for i in range(13)]
    assert str(unknown_label("zzz", names[:12])).endswith("labels are: " + ", ".join(names[:12]))
    assert str(unknown_label("zzz", names)).endswith(", ".join(names[:12]) + ", ... (13 in all)")


def test_error_messages_name_the_label_the_flag_and_the_close_matches() -> None:
    with pytest.raises(CTranError, match=r"^--extra: value 'maybe' for label 'cat' is not one of 1/0"):
        parse_spec("cat=maybe", flag="--extra")
    with pytest.raises(CTranError, match=r"^label 'cat': expected True/False \(or 1/0\), got array"):
        label_states(["cat", "dog"], [], {"cat": np.array([1, 0])})
    with pytest.raises(CTranError, match="unknown target label 'cow'"):
        label_states(["cat", "dog"], [], {"dog": True, "cow": True})  # checked after a valid name too
    assert str(unknown_label("zzz", ["cat", "dog"])) == "unknown label 'zzz'; labels are: cat, dog"
    assert str(unknown_label("abcd", ["abxy"])) == "unknown label 'abcd'; closest: abxy"  # similarity 0.5
    many = [f"cat{i}" for i in range(7)]
    assert str(unknown_label("cat", many, "target")) == (
        "unknown target label 'cat'; closest: cat6, cat5, cat4, cat3, cat2"
    )


def test_label_states_are_long_integers() -> None:
    states = label_states(["cat", "dog"], ["indoor"], {"cat": True}, {"indoor": False})
    assert states.dtype == torch.long and states.tolist() == [1, -1, 0]
