"""A trained C-Tran ready for use: ``ctran.load(path)`` returns a ``Predictor``.

The predictor decodes and resizes images the way the model was evaluated, turns ``known``/``extra`` label
dicts into label states, and returns per-image results in label names. Its work is split like the model's:
``encode`` runs the backbone once and keeps the image tokens (``Features``); ``condition`` re-runs only the
label tokens, transformer and readout for any set of known labels, so trying several costs no backbone pass.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ctran.checkpoint import load_checkpoint
from ctran.data.transforms import eval_transform, load_image
from ctran.errors import CTranError
from ctran.inference.explain import Explanation, explain_attention
from ctran.inference.known import LabelSpec, label_states, unknown_label
from ctran.inference.performance import inference_precision, optimize_for_inference
from ctran.model import CTran
from ctran.states import POSITIVE, UNKNOWN
from ctran.training.precision import autocast

ImageInput = str | Path | Image.Image | torch.Tensor
Images = ImageInput | Sequence[ImageInput]
KnownInput = LabelSpec | Sequence[LabelSpec] | None


@dataclass
class Features:
    """Image tokens cached by ``Predictor.encode``: all that ``condition`` needs, no backbone pass."""

    tokens: torch.Tensor  # (B, T, D) on the predictor's device
    grid: tuple[int, int]  # (h, w) of the backbone feature map, h * w = T
    images: list[str]  # one id per image: its path, or "image 0", "tensor 1", ...
    sizes: list[tuple[int, int]]  # each image's original (width, height)

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class Prediction:
    """One image's result. Labels given as inputs are in ``known``, never in ``probs`` or ``predicted``."""

    image: str
    probs: dict[str, float]  # every target label left unknown -> probability, in label order
    known: dict[str, bool] = field(default_factory=dict)  # the known target and extra labels given
    predicted: list[str] = field(default_factory=list)  # labels at or above threshold, most probable first

    def top(self, k: int) -> list[tuple[str, float]]:
        """The k most probable unknown labels with their probabilities."""
        return sorted(self.probs.items(), key=lambda item: -item[1])[:k]

    def to_dict(self) -> dict:
        return {"image": self.image, "probs": self.probs, "known": self.known, "predicted": self.predicted}


class Predictor:
    """Predict, re-condition and explain with a C-Tran model; ``model`` is the plain ``torch.nn.Module``.

    ``precision`` is ``"fp32"`` (the model's numerics), ``"bf16"``, ``"fp16"`` (CUDA) or ``"auto"``; see
    ``ctran.inference.performance`` for what each costs and changes.
    """

    def __init__(
        self,
        model: CTran,
        target_names: Sequence[str],
        extra_names: Sequence[str] = (),
        image_size: int | None = None,
        scale_size: int | None = None,
        thresholds: Sequence[float] | None = None,
        device: torch.device | str = "cpu",
        batch_size: int = 32,
        precision: str = "fp32",
    ) -> None:
        if not isinstance(model, CTran):
            raise CTranError(f"a Predictor needs a C-Tran model, got {type(model).__name__}")
        self.target_names = list(target_names)
        self.extra_names = list(extra_names)
        if model.num_labels != len(self.label_names):
            raise CTranError(
                f"the model has {model.num_labels} label tokens but {len(self.label_names)} label names "
                f"were given ({len(self.target_names)} targets + {len(self.extra_names)} extras)"
            )
        if thresholds is not None and len(thresholds) != len(self.target_names):
            raise CTranError(f"{len(thresholds)} thresholds for {len(self.target_names)} target labels")
        self.device = torch.device(device)
        self.precision = inference_precision(precision, self.device)
        self.model = model.to(self.device).eval()
        self.image_size, self.scale_size = image_size, scale_size
        self.thresholds = None if thresholds is None else np.asarray(thresholds, dtype=np.float64)
        self.batch_size = batch_size
        self._transform = eval_transform(image_size, scale_size) if image_size else None

    @property
    def label_names(self) -> list[str]:
        """Targets, then extra labels: the order of the model's label tokens."""
        return self.target_names + self.extra_names

    # ----------------------------------------------------------------------------------------- images
    def read(self, source: ImageInput, position: int = 0) -> tuple[torch.Tensor, str, tuple[int, int]]:
        """One image -> (normalised (3, H, W) tensor, id, original (width, height)).

        Paths and PIL images are decoded to RGB and resized as at evaluation; tensors are taken as given
        (already normalised). An unreadable file raises ``CTranError`` naming it.
        """
        if isinstance(source, torch.Tensor):
            if source.dim() != 3 or source.shape[0] != 3:
                shape = tuple(source.shape)
                raise CTranError(f"image tensors must be (3, H, W) or (B, 3, H, W), got {shape}")
            if not source.is_floating_point():
                raise CTranError("image tensors must be float and normalised (see ctran.data.normalize)")
            return source.float(), f"tensor {position}", (source.shape[2], source.shape[1])
        if isinstance(source, Image.Image):
            name = getattr(source, "filename", "") or f"image {position}"
            return self._pixels(load_image(source), name), name, source.size
        path = Path(source)
        if not path.is_file():
            raise CTranError(f"{path}: no such image file")
        try:
            image = load_image(path)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            raise CTranError(f"{path}: cannot read image ({type(err).__name__}: {err})") from err
        return self._pixels(image, str(path)), str(path), image.size

    def _pixels(self, image: Image.Image, name: str) -> torch.Tensor:
        if self._transform is None:
            raise CTranError(f"{name}: this checkpoint stores no image size; pass normalised image tensors")
        return self._transform(image)  # (3, S, S)

    # ------------------------------------------------------------------------------------ inference
    @torch.inference_mode()
    def encode(
        self,
        images: Images,
        names: Sequence[str] | None = None,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> Features:
        """Run the backbone once per image and keep the tokens, for any number of ``condition`` calls."""
        parts = list(self._encoded_batches(images, names, batch_size, progress))
        tokens = [part.tokens for part in parts]
        if len({t.shape[1:] for t in tokens}) > 1:
            raise CTranError("images of different sizes give different token counts; encode them separately")
        return Features(
            torch.cat(tokens),
            parts[0].grid,
            [name for part in parts for name in part.images],
            [size for part in parts for size in part.sizes],
        )

    @torch.inference_mode()
    def condition(
        self,
        features: Features,
        known: KnownInput = None,
        extra: KnownInput = None,
        threshold: float | str = 0.5,
    ) -> list[Prediction]:
        """Predict from cached tokens given what is known: label tokens + transformer + readout only.

        ``known``/``extra`` are ``{label: bool}`` dicts, the same for every image, or one dict per image.
        ``threshold`` is a probability or ``"calibrated"`` (the per-label thresholds stored at training).
        """
        states = self.states(known, extra, len(features))  # (B, L)
        cuts = self.cutoffs(threshold)
        return self._predictions(features, states, cuts)

    @torch.inference_mode()
    def predict(
        self,
        images: Images,
        known: KnownInput = None,
        extra: KnownInput = None,
        threshold: float | str = 0.5,
        names: Sequence[str] | None = None,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> list[Prediction]:
        """One ``Prediction`` per image (paths, PIL images, (3, H, W) or (B, 3, H, W) tensors, or lists).

        Images are processed ``batch_size`` at a time, so memory stays bounded for any number of them.
        """
        cuts = self.cutoffs(threshold)
        results: list[Prediction] = []
        for features in self._encoded_batches(images, names, batch_size, progress):
            states = self._slice_states(known, extra, len(results), len(features))
            results += self._predictions(features, states, cuts)
        return results

    @torch.inference_mode()
    def explain(
        self,
        image: ImageInput,
        labels: Sequence[str] | None = None,
        known: LabelSpec | None = None,
        extra: LabelSpec | None = None,
        rollout: bool = False,
        top_k: int = 5,
    ) -> Explanation:
        """Where each label token looks in the image, and at which other labels (one image).

        ``labels`` defaults to the ``top_k`` most probable unknown target labels. ``rollout`` follows the
        attention through every layer (attention rollout) instead of reading the last layer only.
        """
        pixels, name, size = self.read(image)
        features = self._encode_pixels(pixels[None], [name], [size])
        states = self.states(known, extra, 1)  # (1, L)
        with autocast(self.device, self.precision):
            output = self.model.decode(features.tokens, states.to(self.device), return_attention=True)
        probs = output.logits[0].float().sigmoid().cpu()  # (L,)
        prediction = self._to_prediction(name, probs, states[0], self.cutoffs(0.5))
        chosen = self._explained_labels(labels, prediction, top_k)
        return explain_attention(
            name,
            prediction.probs,
            prediction.known,
            pixels,
            features.grid,
            self.label_names,
            chosen,
            output.attentions,
            rollout,
        )

    # ------------------------------------------------------------------------------------- helpers
    def states(self, known: KnownInput, extra: KnownInput, batch: int) -> torch.Tensor:
        """(B, L) label states from shared or per-image ``known``/``extra`` dicts."""
        knowns, extras = _per_image(known, batch, "known"), _per_image(extra, batch, "extra")
        rows = [
            label_states(self.target_names, self.extra_names, k, e)
            for k, e in zip(knowns, extras, strict=True)
        ]
        return torch.stack(rows) if rows else torch.empty(0, len(self.label_names), dtype=torch.long)

    def _slice_states(self, known: KnownInput, extra: KnownInput, start: int, count: int) -> torch.Tensor:
        """States for images ``start .. start + count`` of a ``predict`` call."""

        def part(spec: KnownInput) -> KnownInput:
            return spec if spec is None or isinstance(spec, Mapping) else spec[start : start + count]

        return self.states(part(known), part(extra), count)

    def cutoffs(self, threshold: float | str) -> np.ndarray:
        """Per-target-label thresholds (T,)."""
        if isinstance(threshold, str):
            if threshold != "calibrated":
                raise CTranError(f"threshold must be a probability or 'calibrated', got {threshold!r}")
            if self.thresholds is None:
                raise CTranError(
                    "this checkpoint stores no calibrated thresholds; give a threshold such as 0.5"
                )
            return self.thresholds
        if not 0.0 <= threshold <= 1.0:
            raise CTranError(f"threshold must be in [0, 1], got {threshold}")
        return np.full(len(self.target_names), float(threshold))

    def _encoded_batches(
        self, images: Images, names: Sequence[str] | None, batch_size: int | None, progress: bool
    ) -> Iterator[Features]:
        """Decode and encode the images ``batch_size`` at a time."""
        sources = _flatten(images)
        if not sources:
            raise CTranError("no images given")
        if names is not None and len(names) != len(sources):
            raise CTranError(f"{len(names)} names for {len(sources)} images")
        size = batch_size or self.batch_size
        with tqdm(total=len(sources), desc="predict", unit="img", disable=not progress, leave=False) as bar:
            for start in range(0, len(sources), size):
                read = [self.read(s, start + i) for i, s in enumerate(sources[start : start + size])]
                pixels, ids, sizes = (list(column) for column in zip(*read, strict=True))
                if names is not None:
                    ids = list(names[start : start + size])
                yield self._encode_pixels(_stack(pixels, ids), ids, sizes)
                bar.update(len(read))

    def _encode_pixels(self, pixels: torch.Tensor, ids: list[str], sizes: list) -> Features:
        """(B, 3, H, W) -> Features; the grid is read off the backbone's output by a hook, so it is exact."""
        grids: list[tuple[int, int]] = []
        hook = self.model.backbone.register_forward_hook(lambda _m, _i, out: grids.append(out.shape[-2:]))
        try:
            with autocast(self.device, self.precision):
                tokens = self.model.encode(pixels.to(self.device))  # (B, T, D)
        finally:
            hook.remove()
        return Features(tokens, tuple(grids[0]), ids, sizes)

    def _predictions(self, features: Features, states: torch.Tensor, cuts: np.ndarray) -> list[Prediction]:
        with autocast(self.device, self.precision):
            logits = self.model.decode(features.tokens, states.to(self.device))  # (B, L)
        probs = logits.float().sigmoid().cpu()
        return [
            self._to_prediction(name, p, s, cuts)
            for name, p, s in zip(features.images, probs, states, strict=True)
        ]

    def _to_prediction(
        self, name: str, probs: torch.Tensor, states: torch.Tensor, cuts: np.ndarray
    ) -> Prediction:
        """Probabilities (L,) and states (L,) of one image -> a Prediction in label names."""
        given = zip(self.label_names, states.tolist(), strict=True)
        known = {name: state == POSITIVE for name, state in given if state != UNKNOWN}
        unknown = [i for i, n in enumerate(self.target_names) if n not in known]
        p = {self.target_names[i]: float(probs[i]) for i in unknown}
        above = [self.target_names[i] for i in unknown if probs[i] >= cuts[i]]
        return Prediction(name, p, known, sorted(above, key=lambda n: -p[n]))

    def _explained_labels(
        self, labels: Sequence[str] | None, prediction: Prediction, top_k: int
    ) -> list[str]:
        if labels is None:
            return [name for name, _ in prediction.top(top_k)]
        for name in labels:
            if name not in self.label_names:
                raise unknown_label(name, self.label_names)
        return list(dict.fromkeys(labels))


def load(
    path: str | Path,
    device: torch.device | str = "cpu",
    batch_size: int = 32,
    precision: str = "fp32",
    channels_last: bool | None = None,
    compile: bool = False,
) -> Predictor:
    """Open a ctran checkpoint for prediction: ``ctran.load("ctran.pt").predict("photo.jpg")``.

    ``precision``, ``channels_last`` and ``compile`` are the speed switches of
    ``ctran.inference.performance``; the defaults reproduce the model's float32 results. ``channels_last``
    defaults to on with a reduced precision (the layout its convolutions run fastest in), off in fp32.
    """
    model, meta = load_checkpoint(path, device)
    if not isinstance(model, CTran):
        raise CTranError(f"{path} holds a {type(model).__name__}, not C-Tran; only C-Tran takes known labels")
    precision = inference_precision(precision, device)
    if channels_last is None:
        channels_last = precision != "fp32"
    return Predictor(
        optimize_for_inference(model, channels_last, compile, precision),
        meta["target_names"],
        meta.get("extra_names", ()),
        meta.get("image_size"),
        meta.get("scale_size"),
        meta.get("thresholds"),
        device,
        batch_size,
        precision,
    )


def _flatten(images: Images) -> list[ImageInput]:
    """A flat list of single images; (B, 3, H, W) tensors count as B images."""
    if isinstance(images, torch.Tensor):
        return list(images) if images.dim() == 4 else [images]
    if isinstance(images, str | Path | Image.Image):
        return [images]
    flat: list[ImageInput] = []
    for item in images:
        flat += list(item) if isinstance(item, torch.Tensor) and item.dim() == 4 else [item]
    return flat


def _stack(pixels: list[torch.Tensor], ids: list[str]) -> torch.Tensor:
    """(B, 3, H, W); tensors given directly are not resized, so a batch of them must share a size."""
    shapes = {tuple(p.shape) for p in pixels}
    if len(shapes) > 1:
        raise CTranError(f"images of one batch must share a size, got {sorted(shapes)} (in {', '.join(ids)})")
    return torch.stack(pixels)


def _per_image(spec: KnownInput, batch: int, kind: str) -> list[LabelSpec | None]:
    """One dict for all images, or one per image (a list as long as the batch)."""
    if spec is None or isinstance(spec, Mapping):
        return [spec] * batch
    if len(spec) != batch:
        raise CTranError(f"{kind}: {len(spec)} label dicts for {batch} images (give one, or one per image)")
    return list(spec)
