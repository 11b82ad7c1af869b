"""What the HTTP routes call: a ``Predictor`` behind a lock, and the cache of encoded images.

Uploading an image runs the backbone once (``Predictor.encode``) and caches its features; every change of
the known labels afterwards only re-runs the label side of the model (``condition``): the label tokens,
transformer and readout, or with a one-way checkpoint only the label rows of the transformer; so does
showing how far the known labels moved the others (``influence``, K + 2 more state rows in one batch).
Suggesting the next label to ask (``suggest``) re-conditions on both answers for every candidate in one
batch. Routes run in a thread pool, so model calls are serialised by one lock (one forward pass at a time,
as on a single device); decoding and resizing happen outside it. Heat-maps are drawn with ``ctran explain``'s
plotting, whose pyplot state is not thread-safe either, so drawing has a lock of its own.
"""

from __future__ import annotations

import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from ctran.inference import Features, Influence, Prediction, Predictor, Suggestion
from ctran.inference.explain import plot_heatmaps
from ctran.inference.known import LabelSpec
from ctran.serving.cache import FeatureCache
from ctran.serving.errors import ApiError


@dataclass
class CachedImage:
    """One uploaded image as the model saw it; all that re-conditioning and explaining need."""

    name: str  # the client's file name, for display
    size: tuple[int, int]  # the original (width, height)
    pixels: torch.Tensor  # (3, S, S) normalised model input, for heat-maps
    features: Features  # its image tokens (1, T, D)


class TaggingService:
    """Encode, re-condition and explain cached images; safe to call from many threads at once."""

    def __init__(self, predictor: Predictor, cache_size: int = 32, threshold: float | None = None) -> None:
        self.predictor = predictor
        self.cache: FeatureCache[CachedImage] = FeatureCache(cache_size)
        self.threshold = predictor.default_threshold if threshold is None else threshold
        self.cutoffs = predictor.cutoffs(self.threshold)  # (T,) validates a given threshold too
        self._model_lock = threading.Lock()
        self._plot_lock = threading.Lock()

    def add(self, image: Image.Image, name: str) -> tuple[str, CachedImage, Prediction]:
        """Encode and cache a decoded image, and predict with nothing known: (id, cached, prediction)."""
        pixels, _, size = self.predictor.read(image)  # (3, S, S)
        with self._model_lock:
            features = self.predictor.encode(pixels[None], names=[name])  # tokens (1, T, D)
            prediction = self.predictor.condition(features, threshold=self.threshold)[0]
        cached = CachedImage(name, size, pixels, features)
        return self.cache.add(cached), cached, prediction

    def get(self, image_id: str) -> CachedImage:
        cached = self.cache.get(image_id)
        if cached is None:
            raise ApiError(
                404, f"no image with id {image_id!r}: unknown, or evicted from the cache; upload it again"
            )
        return cached

    def remove(self, image_id: str) -> None:
        if self.cache.pop(image_id) is None:
            raise ApiError(404, f"no image with id {image_id!r}")

    def condition(
        self, image_id: str, known: LabelSpec, extra: LabelSpec
    ) -> tuple[Prediction, Influence | None]:
        """Predictions given the known target and extra labels, from the cached tokens (no backbone pass),
        and how much those labels moved the others (None when nothing is known)."""
        features = self.get(image_id).features
        with self._model_lock:
            prediction = self.predictor.condition(features, known, extra, threshold=self.threshold)[0]
            moved = self.predictor.influence(features, known, extra)[0] if known or extra else None
        return prediction, moved

    def suggest(
        self, image_id: str, known: LabelSpec, extra: LabelSpec, k: int, method: str, candidates: int | None
    ) -> list[Suggestion]:
        """The k unknown target labels most worth asking about next, from the cached features."""
        features = self.get(image_id).features
        with self._model_lock:
            return self.predictor.suggest(features, known, extra, k, method, candidates)[0]

    def attention_png(
        self, image_id: str, label: str, known: LabelSpec, extra: LabelSpec, rollout: bool = False
    ) -> bytes:
        """The label token's attention over the image, drawn over the model's input, as PNG bytes."""
        cached = self.get(image_id)
        with self._model_lock:
            explanation = self.predictor.explain(
                cached.pixels, labels=[label], known=known, extra=extra, rollout=rollout
            )
        explanation.image = cached.name
        with self._plot_lock, tempfile.TemporaryDirectory(prefix="ctran-serve-") as folder:
            return plot_heatmaps(explanation, [label], Path(folder) / "attention.png").read_bytes()
