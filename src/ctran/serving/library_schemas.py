"""The JSON shapes of a library's HTTP API (``ctran annotate``): they validate requests and document the API.

Image ids are the images' paths relative to the library folder (``trip/IMG_1.jpg``), sent as a query
parameter or a body field, never as part of the URL path.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ctran.serving.schemas import LabelValue, Suggestion

ANNOTATOR = Field(
    description="who answers: a name the page keeps in the browser's localStorage", min_length=1
)


class LabelInfo(BaseModel):
    name: str
    kind: Literal["target", "extra"] = Field(description="target: predicted; extra: input-only metadata")
    trained: bool = Field(
        description="the checkpoint knows the label; false: added in the library, not "
        "predicted until a retrain"
    )
    threshold: float | None = Field(description="where a trained target counts as present; null otherwise")


class LibraryLabels(BaseModel):
    labels: list[LabelInfo]


class NewLabel(BaseModel):
    """A label to add to the library: unknown on every image until answered."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(examples=["zebra"])
    kind: Literal["target", "extra"] = "target"


class Answer(BaseModel):
    """One row of the answer history (the store's)."""

    id: int
    image: str
    label: str
    value: bool | None = Field(description="yes, no, or null: cleared (unknown again)")
    source: str = Field(description="human, imported (a caption or XMP), accepted (a prediction) or undo")
    annotator: str
    time: float = Field(description="seconds since the epoch")
    undoes: int | None = Field(description="for an undo: the id of the answer it undid")


class ImageView(BaseModel):
    """One image: its current answers, the trained labels' predictions given them, and what to ask next."""

    id: str
    index: int = Field(description="position in folder order")
    width: int
    height: int
    known: dict[str, bool] = Field(description="the current answers (last one wins), every label")
    predictions: dict[str, float] = Field(description="trained target labels left unknown -> probability")
    predicted: list[str] = Field(description="those at or above threshold, most probable first")
    untrained: list[str] = Field(description="library labels the checkpoint does not know: no probability")
    uncertainty: float = Field(description="mean binary entropy of the unknown predictions, bits")
    ask: list[Suggestion] = Field(description="the labels most worth answering next, best first")
    history: list[Answer] = Field(description="the image's latest answers, newest first")


class ImageEntry(BaseModel):
    id: str
    answers: int = Field(description="labels answered yes or no now")
    uncertainty: float | None = Field(description="null until the background pass has reached the image")
    error: str | None = Field(default=None, description="why the image could not be read")


class ImageList(BaseModel):
    """The images that pass the filters (a page of them), and the library's progress."""

    total: int = Field(description="images in the library")
    answered: int = Field(description="images with at least one answer")
    untouched: int = Field(description="images with none")
    scored: int = Field(description="images the background pass has predicted so far")
    matched: int = Field(description="images that pass the filters")
    offset: int
    images: list[ImageEntry]


class AnswerRequest(BaseModel):
    """Answer one label of one image: yes, no, or null to clear it."""

    model_config = ConfigDict(extra="forbid")

    image: str = Field(examples=["trip/IMG_1.jpg"])
    label: str
    value: LabelValue | None
    annotator: str = ANNOTATOR


class AnswerResult(BaseModel):
    answer: Answer
    image: ImageView


class AcceptRequest(BaseModel):
    """Answer every trained label still unknown as predicted (source ``accepted``)."""

    model_config = ConfigDict(extra="forbid")

    image: str
    annotator: str = ANNOTATOR


class AcceptResult(BaseModel):
    answers: list[Answer]
    image: ImageView


class UndoRequest(BaseModel):
    """Undo the annotator's last answer not yet undone (on one image, if given)."""

    model_config = ConfigDict(extra="forbid")

    annotator: str = ANNOTATOR
    image: str | None = None


class UndoResult(BaseModel):
    answer: Answer | None = Field(description="the row that undid it; null when nothing was left to undo")
    image: ImageView | None = Field(description="the image it was on, as it is now")


class History(BaseModel):
    answers: list[Answer]


class NextImage(BaseModel):
    id: str | None = Field(description="the image to show next; null when no image passes the filters")


class LibraryHealth(BaseModel):
    status: str
    images: int
    scored: int
    targets: int
    extras: int
    labels: int


class RetrainRequest(BaseModel):
    """Retrain the library's model on its answers."""

    model_config = ConfigDict(extra="forbid")

    epochs: int | None = Field(default=None, ge=1, le=1000, description="default: the checkpoint's recipe")


class RetrainStatus(BaseModel):
    state: Literal["idle", "running", "done", "failed"]
    stage: str | None = Field(default=None, description="export, train, loading, done or failed")
    epoch: int | None = None
    epochs: int | None = None
    val_map: float | None = Field(default=None, description="the latest epoch's (or the best, when done)")
    checkpoint: str | None = None
    new_labels: list[str] | None = None
    seconds: float | None = None
    error: str | None = None
    started: float | None = None
