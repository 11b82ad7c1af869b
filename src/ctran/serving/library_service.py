"""What a library's routes call: its answers, the model conditioned on them, and which image to show next.

Every image's predictions are conditioned on its stored answers (``Predictor.condition``): the labels the
checkpoint knows become ``known``/``extra`` states; labels added in the library since (untrained) are stored
and shown, but never reach the model, which has no token for them. Features are cached per image id
(``FeatureCache``), so re-conditioning after an answer costs no backbone pass.

A background thread walks the library in folder order, encodes each image once and keeps a small summary:
the labels predicted above threshold (for the filters) and its uncertainty, the mean binary entropy of its
unknown labels (for "least certain next"). Images the walk has not reached yet come after the scored ones,
in folder order. The page also asks the thread to encode the image it will show next (``prefetch``), so
switching images finds its features cached.

One lock serialises the model calls (as in ``TaggingService``). A summary is read from the store and written
inside that lock, so the last one written always saw the latest answers.
"""

from __future__ import annotations

import io
import logging
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ctran.annotation.library import Library
from ctran.annotation.store import Answer
from ctran.data.images import DECODE_ERRORS
from ctran.data.transforms import load_image
from ctran.errors import CTranError
from ctran.inference import Features, Prediction, Predictor, Suggestion
from ctran.inference.suggest import binary_entropy
from ctran.serving.cache import FeatureCache
from ctran.serving.errors import ApiError
from ctran.tagging.matching import normalise

log = logging.getLogger("ctran.annotate")

PREVIEW_SIDE = 1600  # the longest side of the image the page shows
ASK_COUNT = 8  # suggestions sent with each view, so the page can skip through them without a request
ORDERS = ("folder", "uncertain")
SHOWS = ("all", "untouched", "answered")
MAX_NAME = 100


@dataclass(frozen=True)
class Summary:
    """What the image list needs of an image's predictions, kept for every image the thread has seen."""

    uncertainty: float = 0.0  # mean binary entropy of the unknown trained targets, bits; 0 when none left
    predicted: frozenset[str] = frozenset()  # unknown targets at or above threshold
    error: str | None = None  # why the image could not be read


@dataclass
class View:
    """One image as the page shows it."""

    image: str
    size: tuple[int, int]
    known: dict[str, bool]  # every current answer, untrained labels included
    prediction: Prediction  # the trained targets left unknown, conditioned on the answers
    ask: list[Suggestion]
    summary: Summary


class LibraryService:
    """A library's answers and the model in the loop; safe to call from many threads at once."""

    def __init__(
        self,
        library: Library,
        predictor: Predictor,
        cache_size: int = 256,
        threshold: float | None = None,
        suggest_method: str = "information",
        suggest_candidates: int | None = 16,
        checkpoint: str | None = None,
    ) -> None:
        self.library = library
        self.store = library.store
        self.suggest_method, self.suggest_candidates = suggest_method, suggest_candidates
        self.cache: FeatureCache[tuple[Predictor, Features]] = FeatureCache(cache_size)
        self._threshold = threshold
        self._summaries: dict[str, Summary] = {}
        self._model_lock = threading.Lock()
        self._set_model(predictor, checkpoint)
        self._summary_lock = threading.Lock()
        self._prefetch: deque[str] = deque(maxlen=8)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _set_model(self, predictor: Predictor, checkpoint: str | None) -> None:
        self.predictor, self.checkpoint = predictor, checkpoint
        self.threshold = predictor.default_threshold if self._threshold is None else self._threshold
        self.cutoffs = predictor.cutoffs(self.threshold)  # (T,) validates a given threshold too
        self.store.add_labels(predictor.target_names, "target", trained=True)
        self.store.add_labels(predictor.extra_names, "extra", trained=True)

    def use(self, predictor: Predictor, checkpoint: str | None = None) -> None:
        """Serve with another model (a retrain's): what the old one computed is dropped and the background
        pass starts over, so every prediction shown from now on is the new model's."""
        running = self._thread is not None and self._thread.is_alive()
        if running:
            self.stop()
        with self._model_lock:
            self._set_model(predictor, checkpoint)
            self.cache.clear()
            with self._summary_lock:
                self._summaries.clear()
        if running:
            self.start()

    # ----------------------------------------------------------------------------------- background
    def start(self) -> None:
        """Start the background walk (the app's startup does it)."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._walk, name="ctran-annotate-walk", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def prefetch(self, image: str) -> None:
        """Have the background thread encode this image next (the one the page will show after this)."""
        self._prefetch.append(image)
        self._wake.set()

    def _walk(self) -> None:
        pending = iter(self.library.images)
        while not self._stop.is_set():
            if self._prefetch:
                image = self._prefetch.popleft()
                if self.cache.get(image) is None or image not in self._summaries:
                    self._refresh(image, keep=True)
                continue
            image = next(pending, None)
            if image is None:  # every image summarised: wait for prefetch requests
                self._wake.wait(timeout=1.0)
                self._wake.clear()
            elif image not in self._summaries:
                self._refresh(image, keep=False)

    def _refresh(self, image: str, keep: bool) -> None:
        """Encode (when not cached) and summarise one image; a broken file is summarised as its error."""
        try:
            self._condition(image, ask=False, keep=keep)
        except ApiError as err:
            self._set_summary(image, Summary(error=err.message))
        except Exception as err:  # the walk goes on whatever one image does; the page shows the reason
            log.exception("summarising %s failed", image)
            self._set_summary(image, Summary(error=f"{type(err).__name__}: {err}"))

    # ------------------------------------------------------------------------------------------ model
    def features(self, image: str, keep: bool = True) -> tuple[Predictor, Features]:
        """The image's cached features and the model that made them, encoded now when not cached (one
        backbone pass). With ``keep`` False (the background pass) they are cached only while the cache has
        room, so walking a large library never evicts the images the page is showing. Features are only
        ever used with the model that made them: one replaced meanwhile (a retrain) means encode again."""
        while True:
            predictor = self.predictor
            cached = self.cache.get(image)
            if cached is not None and cached[0] is predictor:
                return cached
            path = self.file(image)
            try:
                pixels, _, size = predictor.read(path)  # (3, S, S), decoded outside the model lock
            except CTranError as err:
                raise ApiError(422, f"cannot read the image {image!r}: {err}") from err
            with self._model_lock:
                if predictor is not self.predictor:
                    continue
                features = predictor.encode(pixels[None], names=[image])  # tokens (1, T, D)
                features.sizes = [size]
                if keep or len(self.cache) < self.cache.capacity:
                    self.cache.put(image, (predictor, features))
            return predictor, features

    def view(self, image: str) -> View:
        """The image's answers, predictions conditioned on them, and what to ask next."""
        return self._condition(image, ask=True)

    def _condition(self, image: str, ask: bool, keep: bool = True) -> View:
        while True:
            model, features = self.features(image, keep)
            with self._model_lock:
                if model is not self.predictor:  # replaced since: the features are the old model's
                    continue
                known = self.store.state(image)
                targets, extras = set(model.target_names), set(model.extra_names)
                told = {label: value for label, value in known.items() if label in targets}
                extra = {label: value for label, value in known.items() if label in extras}
                prediction = model.condition(features, told, extra, threshold=self.threshold)[0]
                suggestions = (
                    model.suggest(
                        features, told, extra, ASK_COUNT, self.suggest_method, self.suggest_candidates
                    )[0]
                    if ask and prediction.probs
                    else []
                )
                summary = summarise(prediction)
                self._set_summary(image, summary)
            return View(image, features.sizes[0], known, prediction, suggestions, summary)

    def _set_summary(self, image: str, summary: Summary) -> None:
        with self._summary_lock:
            self._summaries[image] = summary

    def summaries(self) -> dict[str, Summary]:
        with self._summary_lock:
            return dict(self._summaries)

    # ---------------------------------------------------------------------------------------- answers
    def answer(self, image: str, label: str, value: bool | None, annotator: str) -> tuple[Answer, View]:
        """Record one answer (durable once this returns) and the image's view knowing it."""
        self._check_label(label)
        self.features(image)  # an image that cannot be shown is not answered (404 or 422 first)
        recorded = self.store.answer(image, label, value, check_name(annotator, "annotator"))
        return recorded, self.view(image)

    def accept(self, image: str, annotator: str) -> tuple[list[Answer], View]:
        """Every trained target still unknown answered as predicted (yes at or above threshold, else no)."""
        current = self.view(image)
        predicted = set(current.prediction.predicted)
        items = [(image, label, label in predicted) for label in current.prediction.probs]
        recorded = self.store.answers(items, check_name(annotator, "annotator"), source="accepted")
        return recorded, self.view(image)

    def undo(self, annotator: str, image: str | None = None) -> tuple[Answer | None, View | None]:
        """Undo the annotator's last answer (on ``image`` if given) and the view of the image it was on."""
        if image is not None:
            self.file(image)
        undone = self.store.undo(check_name(annotator, "annotator"), image)
        return undone, None if undone is None else self.view(undone.image)

    def history(self, image: str, limit: int) -> list[Answer]:
        self.file(image)
        return self.store.history(image, limit)

    # ----------------------------------------------------------------------------------------- labels
    def labels(self) -> list[tuple[str, str, bool, float | None]]:
        """(name, kind, trained, threshold) of every library label; trained: the checkpoint has it."""
        cuts = dict(zip(self.predictor.target_names, self.cutoffs.tolist(), strict=True))
        known = set(self.predictor.label_names)
        return [(name, kind, name in known, cuts.get(name)) for name, kind, _ in self.store.labels()]

    def add_label(self, name: str, kind: str = "target") -> str:
        """A new label, unknown on every image until answered; the model cannot predict it before a
        retrain. Names must be usable as caption tags: no commas, not starting with '-' (a negation)."""
        name = check_name(name, "label")
        if "," in name or name.startswith("-"):
            raise ApiError(
                422, f"label {name!r}: no commas, and no leading '-' (captions read it as 'absent')"
            )
        clash = [n for n, _, _ in self.store.labels() if normalise(n) == normalise(name)]
        if clash:
            raise ApiError(409, f"the library already has the label {clash[0]!r}")
        self.store.add_labels([name], kind, trained=False)
        return name

    def _check_label(self, label: str) -> None:
        if label not in {name for name, _, _ in self.store.labels()}:
            raise ApiError(404, f"no label {label!r} in the library; add it first (POST /api/labels)")

    # ----------------------------------------------------------------------------------------- images
    def file(self, image: str) -> Path:
        """The file of an image id found by the library's scan; anything else is a 404."""
        try:
            path = self.library.path(image)
        except CTranError as err:
            raise ApiError(404, str(err)) from err
        if not path.is_file():
            raise ApiError(404, f"the image {image!r} is no longer in the library folder")
        return path

    def preview(self, image: str) -> tuple[bytes, str]:
        """The image as the page shows it: upright RGB, at most ``PREVIEW_SIDE`` pixels a side; PNG when
        small (exact pixels), else JPEG. Re-encoding means any format Pillow reads (TIFF too) displays."""
        path = self.file(image)
        try:
            picture = load_image(path, min_side=PREVIEW_SIDE)
        except DECODE_ERRORS as err:
            raise ApiError(422, f"cannot read the image {image!r}: {type(err).__name__}: {err}") from err
        picture.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
        buffer = io.BytesIO()
        small = max(picture.size) <= 512
        picture.save(buffer, format="PNG" if small else "JPEG", quality=90)
        return buffer.getvalue(), "image/png" if small else "image/jpeg"

    def listing(self, label: str | None, show: str, order: str) -> tuple[list[str], dict[str, int]]:
        """The images that pass the filters, in ``order``, and the library's progress counts.

        ``label``: images where it is answered yes, or unknown and predicted above threshold; ``show``:
        all, untouched (no current answer) or answered images.
        """
        if label is not None:
            self._check_label(label)
        states, summaries = self.store.states(), self.summaries()
        images = self.library.images

        def keep(image: str) -> bool:
            answers = states.get(image, {})
            if (show == "untouched" and answers) or (show == "answered" and not answers):
                return False
            if label is None:
                return True
            summary = summaries.get(image)
            return answers.get(label, summary is not None and label in summary.predicted) is True

        matched = [image for image in images if keep(image)]
        if order == "uncertain":
            matched = by_uncertainty(matched, summaries)
        answered = sum(1 for image in images if states.get(image))
        progress = {
            "total": len(images),
            "answered": answered,
            "untouched": len(images) - answered,
            "scored": sum(1 for image in images if image in summaries),
            "matched": len(matched),
        }
        return matched, progress

    def next_image(
        self, after: str | None, order: str, label: str | None, show: str, skip: Sequence[str] = ()
    ) -> str | None:
        """The image to show after ``after``: the next one in folder order (wrapping), or the least certain
        one not in ``skip`` (the page's recent images) with unknown labels left; then queued for encoding."""
        matched, _ = self.listing(label, show, "folder")
        chosen = None
        if order == "uncertain":
            summaries, skipped = self.summaries(), {after, *skip}
            open_ = [
                image
                for image in by_uncertainty(matched, summaries)
                if image not in skipped and (image not in summaries or summaries[image].uncertainty > 0)
            ]
            chosen = open_[0] if open_ else None
        if chosen is None:
            chosen = after_in_folder(matched, self.library.images, after)
        if chosen is not None:
            self.prefetch(chosen)
        return chosen


def summarise(prediction: Prediction) -> Summary:
    """The mean binary entropy of the unknown labels' probabilities, and those predicted present."""
    probs = torch.tensor(list(prediction.probs.values()), dtype=torch.float64)  # (U,)
    uncertainty = float(binary_entropy(probs).mean()) if len(probs) else 0.0
    return Summary(uncertainty, frozenset(prediction.predicted))


def by_uncertainty(images: list[str], summaries: dict[str, Summary]) -> list[str]:
    """Least certain first; images not summarised yet (or unreadable) after them, in folder order."""
    rank = {image: i for i, image in enumerate(images)}

    def key(image: str) -> tuple[int, float, int]:
        summary = summaries.get(image)
        if summary is None or summary.error is not None:
            return (1, 0.0, rank[image])
        return (0, -summary.uncertainty, rank[image])

    return sorted(images, key=key)


def after_in_folder(matched: list[str], images: list[str], after: str | None) -> str | None:
    """The first of ``matched`` after ``after`` in the library's folder order, wrapping round; None when
    ``matched`` holds nothing else."""
    if after is None or after not in images:
        return matched[0] if matched else None
    position = {image: i for i, image in enumerate(images)}
    start = position[after]
    later = [image for image in matched if position[image] > start]
    earlier = [image for image in matched if position[image] < start]
    return (later + earlier or [None])[0]


def check_name(text: str, what: str) -> str:
    """An annotator or label name: trimmed, 1 to ``MAX_NAME`` printable characters."""
    name = text.strip()
    if not name or len(name) > MAX_NAME or not name.isprintable():
        raise ApiError(422, f"{what} name must be 1 to {MAX_NAME} printable characters, got {text!r}")
    return name
