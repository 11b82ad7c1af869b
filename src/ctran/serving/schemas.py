"""The JSON shapes of the HTTP API (pydantic models): they validate requests and document the API."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, WithJsonSchema

from ctran.inference.known import FALSE_WORDS, TRUE_WORDS, bool_word


def _spelled_bool(value: object) -> object:
    """The command line's spellings of a label value (1/0, "yes"/"no", "+"/"-", ...) as a bool.

    Anything else is passed on unchanged for ``StrictBool`` to refuse (422), never guessed at: Python's
    truthiness would read "no" as present.
    """
    if isinstance(value, str):
        parsed = bool_word(value)
        return value if parsed is None else parsed
    if type(value) is int and value in (0, 1):
        return bool(value)
    return value


LABEL_VALUE_SCHEMA = {
    "anyOf": [
        {"type": "boolean"},
        {"type": "integer", "enum": [0, 1]},
        {"type": "string", "enum": sorted(TRUE_WORDS | FALSE_WORDS)},
    ],
    "description": "present or absent: true/false, 1/0, or the strings of the CLI (1/0, true/false, yes/no, "
    "y/n, +/-, pos/neg, positive/negative; any case)",
}
LabelValue = Annotated[StrictBool, BeforeValidator(_spelled_bool), WithJsonSchema(LABEL_VALUE_SCHEMA)]


class ConditionRequest(BaseModel):
    """What is known about the image: target labels (then not predicted) and extra, input-only labels."""

    model_config = ConfigDict(extra="forbid")

    known: dict[str, LabelValue] = Field(default_factory=dict, examples=[{"digit_3": True, "tag_sun": "no"}])
    extra: dict[str, LabelValue] = Field(default_factory=dict, examples=[{"context_beach": 1}])


class Change(BaseModel):
    """One unknown target label's probability without and with what was told."""

    label: str
    p_without: float
    p_with: float
    delta: float = Field(description="p_with - p_without")


class MovedByKnown(BaseModel):
    """How much the known labels moved the others (``ctran.inference.influence``), largest changes first."""

    overall: list[Change] = Field(description="nothing known -> everything known")
    by_label: dict[str, list[Change]] = Field(
        description="per known label, its own effect given the others: all known but it -> all known"
    )


class Predictions(BaseModel):
    """Probabilities of the target labels left unknown (in label order) and those at or above threshold."""

    predictions: dict[str, float]
    predicted: list[str] = Field(description="labels at or above their threshold, most probable first")
    known: dict[str, bool] = Field(description="the known target and extra labels the prediction used")
    moved_by_known: MovedByKnown | None = Field(
        default=None, description="how much the known labels moved the others (null when nothing is known)"
    )


class ImageResult(Predictions):
    """An encoded image: its id for later requests, and its predictions with nothing known."""

    id: str = Field(description="random id of the cached image features")
    name: str = Field(description="the uploaded file's name, for display")
    width: int
    height: int


class Suggestion(BaseModel):
    """An unknown target label worth asking about, and why (``ctran.inference.suggest``)."""

    label: str
    probability: float = Field(description="the model's probability that the label is present, now")
    uncertainty: float = Field(description="the label's own binary entropy, bits (1 at probability 0.5)")
    information: float | None = Field(
        description="expected entropy reduction of the other unknown labels once it is known, bits "
        "(null for method=uncertainty)"
    )


class Suggestions(BaseModel):
    """The labels to ask about next, best first (empty once every target label is known)."""

    method: str = Field(description="information (the others' expected uncertainty drop) or uncertainty")
    suggestions: list[Suggestion]


class Labels(BaseModel):
    targets: list[str] = Field(description="labels the model predicts")
    extras: list[str] = Field(description="input-only labels (metadata), never predicted")
    thresholds: dict[str, float] = Field(description="the probability at which each target counts as present")


class Examples(BaseModel):
    examples: list[str] = Field(description="names of the example images the server offers")


class Health(BaseModel):
    status: str
    targets: int
    extras: int
    cached_images: int


class ErrorBody(BaseModel):
    error: str = Field(description="what was wrong with the request, in one line")
