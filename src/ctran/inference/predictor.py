"""A trained C-Tran ready for use: ``ctran.load(path)`` returns a ``Predictor``.

Two ways to open a checkpoint, for two jobs:

- ``ctran.load(path)``: a ``Predictor`` for inference. Its ``.model`` is rewritten for speed
  (``ctran.inference.fusion``: BatchNorm folded into the convolutions, so the backbone has no ``conv1``/
  ``bn1`` of its own; weights stored in the compute precision); it gives the trained model's outputs up to
  float rounding and refuses training mode. ``ctran.load(path, fuse=False)`` predicts with the model's own
  modules instead (slower; for inspecting or hooking its layers while predicting).
- ``ctran.load_model(path)``: the trainable ``torch.nn.Module`` itself, every original layer in float32
  (``ctran.checkpoint.load_model``): to fine-tune, inspect weights or export by other means.

The predictor decodes and resizes images the way the model was evaluated, turns ``known``/``extra`` label
dicts into label states, and returns per-image results in label names. Its work is split like the model's:
``encode`` runs everything that does not depend on the label states once and keeps it (``Features``);
``condition`` re-runs only the rest for any set of known labels, so trying several costs no backbone pass
(with ``one_way`` attention, not even the image rows of the transformer: only the L label rows).

``suggest`` answers "which label should I tell you next?": it ranks the unknown target labels by how much
knowing each is expected to reduce the uncertainty of the others, trying both answers for every candidate
in one batch of ``condition`` rows over the cached features.

``influence`` shows what telling the model something did: how far the known labels moved the other target
labels, overall and each known label's own share, from K + 2 state rows decoded in one batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ctran.checkpoint import load_checkpoint
from ctran.data.images import DECODE_ERRORS
from ctran.data.transforms import decode_side, eval_transform, load_image
from ctran.devices import resolve_device
from ctran.errors import CTranError
from ctran.inference.explain import Explanation, explain_attention
from ctran.inference.influence import DEFAULT_TOP, Influence, influence_rows, summarise
from ctran.inference.known import LabelSpec, label_states, unknown_label
from ctran.inference.performance import inference_precision, optimize_for_inference
from ctran.inference.suggest import METHODS as SUGGEST_METHODS
from ctran.inference.suggest import Suggestion, expected_information, hypotheses, rank
from ctran.model import CTran
from ctran.normalization import Normalization, as_normalization
from ctran.states import POSITIVE, UNKNOWN
from ctran.training.precision import autocast

DEFAULT_THRESHOLD = 0.5  # the cut for checkpoints without calibrated thresholds
ImageInput = str | Path | Image.Image | torch.Tensor | np.ndarray
Images = ImageInput | Sequence[ImageInput]
KnownInput = LabelSpec | Sequence[LabelSpec] | None


@dataclass
class Features:
    """What ``Predictor.encode`` caches: all that ``condition`` needs, no backbone pass."""

    tokens: torch.Tensor  # (B, T, M) the model's encode memory (image tokens, or one-way keys/values)
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
    """Predict, re-condition and explain with a C-Tran model.

    ``model`` is the ``torch.nn.Module`` it runs, in eval mode. From ``ctran.load(path)`` that is the
    inference-fused module (``ctran.inference.fusion``: no BatchNorm or ``conv1`` in the backbone, weights in
    the compute precision, training mode refused); for the trainable model with its original layers use
    ``ctran.load_model(path)``. ``precision`` is ``"fp32"`` (the model's numerics), ``"bf16"``, ``"fp16"``
    (CUDA) or ``"auto"``; see ``ctran.inference.performance`` for what each costs and changes.
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
        normalization: Normalization | dict | None = None,
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
        self.device = resolve_device(device)
        self.precision = inference_precision(precision, self.device)
        self.model = model.to(self.device).eval()
        self.image_size, self.scale_size = image_size, scale_size
        self.thresholds = None if thresholds is None else np.asarray(thresholds, dtype=np.float64)
        self.batch_size = batch_size
        self.normalization = as_normalization(normalization)
        self._transform = eval_transform(image_size, scale_size, self.normalization) if image_size else None
        # big JPEGs decode at a fraction of their size, as the datasets decode them for evaluation
        self._decode_side = decode_side(image_size, scale_size) if image_size else None

    @property
    def label_names(self) -> list[str]:
        """Targets, then extra labels: the order of the model's label tokens."""
        return self.target_names + self.extra_names

    # ----------------------------------------------------------------------------------------- images
    def read(self, source: ImageInput, position: int = 0) -> tuple[torch.Tensor, str, tuple[int, int]]:
        """One image -> (normalised (3, H, W) tensor, id, original (width, height)).

        Paths and PIL images are decoded to RGB and resized as at evaluation; tensors are taken as given
        (already normalised); numpy arrays as ``_from_array`` says. An unreadable file raises ``CTranError``
        naming it.
        """
        if isinstance(source, np.ndarray):
            source = _from_array(source)
        if isinstance(source, torch.Tensor):
            if source.dim() != 3 or source.shape[0] != 3:
                shape = tuple(source.shape)
                raise CTranError(f"image tensors must be (3, H, W) or (B, 3, H, W), got {shape}")
            if not source.is_floating_point():
                raise CTranError("image tensors must be float and normalised (see Predictor.normalization)")
            return source.float(), f"tensor {position}", (source.shape[2], source.shape[1])
        if isinstance(source, Image.Image):
            name = getattr(source, "filename", "") or f"image {position}"
            return self._pixels(load_image(source), name), name, source.size
        path = Path(source)
        if not path.is_file():
            raise CTranError(f"{path}: no such image file")
        try:
            opened = Image.open(path)
            stored = opened.size  # before the draft decode shrinks it
            image = load_image(opened, self._decode_side)
        except DECODE_ERRORS as err:
            raise CTranError(f"{path}: cannot read image ({type(err).__name__}: {err})") from err
        turned = (image.width > image.height) != (stored[0] > stored[1])  # EXIF rotated it a quarter turn
        return self._pixels(image, str(path)), str(path), stored[::-1] if turned else stored

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
        threshold: float | str | None = None,
    ) -> list[Prediction]:
        """Predict from cached tokens given what is known: label tokens + transformer + readout only.

        ``known``/``extra`` are ``{label: bool}`` dicts, the same for every image, or one dict per image.
        ``threshold`` is a probability, ``"calibrated"`` (the per-label thresholds stored at training) or
        None for ``default_threshold``.
        """
        states = self.states(known, extra, len(features))  # (B, L)
        cuts = self.cutoffs(threshold)
        return self._predictions(features, states, cuts)

    @torch.inference_mode()
    def suggest(
        self,
        features: Features,
        known: KnownInput = None,
        extra: KnownInput = None,
        k: int = 3,
        method: str = "information",
        candidates: int | None = None,
    ) -> list[list[Suggestion]]:
        """Per image, the ``k`` unknown target labels most worth asking about next, best first.

        ``method="information"`` ranks by the expected reduction of the other unknown labels' uncertainty
        (``ctran.inference.suggest``): both answers for every candidate go through the model as one batch of
        state rows over the image's cached features. ``candidates`` bounds that work to the most uncertain
        few (None: every unknown target). ``"uncertainty"`` ranks by the label's own entropy (no extra
        model call).
        """
        if method not in SUGGEST_METHODS:
            raise CTranError(f"method must be one of {', '.join(SUGGEST_METHODS)}, got {method!r}")
        for name, value in (("k", k), ("candidates", 1 if candidates is None else candidates)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise CTranError(f"{name} must be a positive integer, got {value!r}")
        states = self.states(known, extra, len(features))  # (B, L)
        probs = self._probabilities(features.tokens, states)  # (B, L)
        results = []
        for i, (p, s) in enumerate(zip(probs, states, strict=True)):
            unknown = [j for j in range(len(self.target_names)) if s[j] == UNKNOWN]
            names = [self.target_names[j] for j in unknown]
            if method == "uncertainty" or not unknown:
                results.append(rank(names, p[unknown], None, k))
                continue
            pool = rank(names, p[unknown], None, candidates or len(unknown))  # the most uncertain first
            asked = sorted(names.index(c.label) for c in pool)  # positions among the unknown, label order
            rows = hypotheses(s, [unknown[a] for a in asked])  # (2C, L)
            told = self._probabilities(features.tokens[i : i + 1], rows)  # (2C, L)
            information = expected_information(p[unknown], told[:, unknown], asked)  # (C,)
            results.append(rank([names[a] for a in asked], p[unknown][asked], information, k))
        return results

    @torch.inference_mode()
    def influence(
        self, features: Features, known: KnownInput = None, extra: KnownInput = None, top: int = DEFAULT_TOP
    ) -> list[Influence]:
        """Per image, the ``top`` unknown target labels that the known ones moved most, and per known label
        the ``top`` it moved itself (``ctran.inference.influence``); empty for an image with nothing known.

        ``overall`` compares nothing known with all known; ``by_label[k]`` compares all known but k with all
        known (leave-one-out: k's own effect given the others). The K + 2 state rows of an image are decoded
        in one batch over its cached tokens.
        """
        if isinstance(top, bool) or not isinstance(top, int) or top < 1:
            raise CTranError(f"top must be a positive integer, got {top!r}")
        states = self.states(known, extra, len(features))  # (B, L)
        results = []
        for i, s in enumerate(states):
            rows, told = influence_rows(s)  # (K + 2, L)
            if not told:
                results.append(Influence())
                continue
            probs = self._probabilities(features.tokens[i : i + 1], rows)  # (K + 2, L)
            results.append(summarise(probs, told, self.label_names, len(self.target_names), top))
        return results

    @torch.inference_mode()
    def target_probabilities(
        self, features: Features, states: torch.Tensor, given_others: bool = False
    ) -> torch.Tensor:
        """(B, T) every target label's probability under ``states`` (B, L), in one decode.

        A known label's own output is not a prediction (training never scores it); with ``given_others``
        each known target gets its probability *given the other known labels* instead, from a row with it
        alone hidden: an image with K known targets costs K more decode rows over its cached tokens, no
        backbone pass. That is what makes a told label auditable: did the model agree with the user?
        """
        targets = len(self.target_names)
        probs = self._probabilities(features.tokens, states)[:, :targets]  # (B, T)
        if given_others:
            for i, row in enumerate(states):
                told = (row[:targets] != UNKNOWN).nonzero().flatten()  # (K,)
                if len(told):
                    hidden = row.repeat(len(told), 1)  # (K, L)
                    hidden[torch.arange(len(told)), told] = UNKNOWN
                    alone = self._probabilities(features.tokens[i : i + 1], hidden)  # (K, L)
                    probs[i, told] = alone[torch.arange(len(told)), told]
        return probs

    @torch.inference_mode()
    def predict(
        self,
        images: Images,
        known: KnownInput = None,
        extra: KnownInput = None,
        threshold: float | str | None = None,
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
        pixels, name, _ = self.read(image)
        states = self.states(known, extra, 1)  # (1, L)
        with self._backbone_grid() as grid, autocast(self.device, self.precision):
            output = self.model(pixels[None].to(self.device), states.to(self.device), return_attention=True)
        probs = output.logits[0].float().sigmoid().cpu()  # (L,)
        prediction = self._to_prediction(name, probs, states[0], self.cutoffs())
        chosen = self._explained_labels(labels, prediction, top_k)
        return explain_attention(
            name,
            prediction.probs,
            prediction.known,
            pixels,
            grid[0],
            self.label_names,
            chosen,
            output.attentions,
            rollout,
            self.normalization,
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

    @property
    def default_threshold(self) -> float | str:
        """What ``threshold=None`` means, in ``predict``, ``ctran predict`` and ``ctran serve`` alike: the
        checkpoint's calibrated per-label thresholds when it stores them (``ctran train`` and ``ctran demo``
        do), else 0.5."""
        return "calibrated" if self.thresholds is not None else DEFAULT_THRESHOLD

    def cutoffs(self, threshold: float | str | None = None) -> np.ndarray:
        """Per-target-label thresholds (T,); None: ``default_threshold``."""
        if threshold is None:
            threshold = self.default_threshold
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
        """(B, 3, H, W) -> Features."""
        with self._backbone_grid() as grid, autocast(self.device, self.precision):
            tokens = self.model.encode(pixels.to(self.device))  # (B, T, M)
        return Features(tokens, grid[0], ids, sizes)

    @contextmanager
    def _backbone_grid(self) -> Iterator[list[tuple[int, int]]]:
        """Collects the (h, w) of the backbone's output maps while open: read off the output by a hook, so
        it is exact whatever the backbone's stride and padding."""
        grids: list[tuple[int, int]] = []
        hook = self.model.backbone.register_forward_hook(
            lambda _m, _i, out: grids.append(tuple(out.shape[-2:]))
        )
        try:
            yield grids
        finally:
            hook.remove()

    def _probabilities(self, memory: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        """sigmoid(decode) (N, L) on the CPU, ``batch_size`` state rows at a time, so memory stays bounded
        for any number of rows; ``memory`` has one row per state row, or one row for all of them."""
        parts = []
        for start in range(0, len(states), self.batch_size):
            rows = slice(start, start + self.batch_size)
            part = memory if memory.shape[0] == 1 else memory[rows]  # (N or 1, T, M)
            with autocast(self.device, self.precision):
                logits = self.model.decode(part, states[rows].to(self.device))  # (n, L)
            parts.append(logits.float().sigmoid().cpu())
        return torch.cat(parts)

    def _predictions(self, features: Features, states: torch.Tensor, cuts: np.ndarray) -> list[Prediction]:
        probs = self._probabilities(features.tokens, states)  # (B, L)
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
    fuse: bool = True,
) -> Predictor:
    """Open a ctran checkpoint for prediction: ``ctran.load("ctran.pt").predict("photo.jpg")``.

    ``precision``, ``channels_last``, ``compile`` and ``fuse`` are the speed switches of
    ``ctran.inference.performance``; the defaults reproduce the model's float32 results. ``channels_last``
    defaults to on with a reduced precision (the layout its convolutions run fastest in), off in fp32.
    With ``fuse`` (the default) the predictor's ``.model`` is rewritten for inference only (no BatchNorm,
    no ``conv1``; see ``ctran.inference.fusion``); ``fuse=False`` keeps the model's own modules. To train or
    fine-tune, open the checkpoint with ``ctran.load_model(path)`` instead.
    """
    device = resolve_device(device)
    model, meta = load_checkpoint(path, device)
    if not isinstance(model, CTran):
        raise CTranError(f"{path} holds a {type(model).__name__}, not C-Tran; only C-Tran takes known labels")
    precision = inference_precision(precision, device)
    if channels_last is None:
        channels_last = precision != "fp32"
    return Predictor(
        optimize_for_inference(model, channels_last, compile, precision, fuse),
        meta["target_names"],
        meta.get("extra_names", ()),
        meta.get("image_size"),
        meta.get("scale_size"),
        meta.get("thresholds"),
        device,
        batch_size,
        precision,
        meta.get("normalization"),
    )


def _flatten(images: Images) -> list[ImageInput]:
    """A flat list of single images; (B, 3, H, W) tensors and (B, ...) arrays count as B images."""
    if isinstance(images, torch.Tensor | np.ndarray):
        return list(images) if images.ndim == 4 else [images]
    if isinstance(images, str | Path | Image.Image):
        return [images]
    flat: list[ImageInput] = []
    for item in images:
        flat += list(item) if isinstance(item, torch.Tensor | np.ndarray) and item.ndim == 4 else [item]
    return flat


def _from_array(array: np.ndarray) -> Image.Image | torch.Tensor:
    """A numpy image as one of the other inputs, decided by its dtype so that nothing is guessed.

    uint8 ``(H, W)``, ``(H, W, 1|3|4)`` pixels (PIL, imageio, OpenCV after BGR -> RGB) become a PIL image and
    are resized and normalised like a file; float ``(3, H, W)`` arrays are normalised pixels, as tensors.
    """
    if array.dtype.kind == "f":
        return torch.from_numpy(np.ascontiguousarray(array))
    channels = array.shape[2] if array.ndim == 3 else None
    if array.dtype == np.uint8 and (array.ndim == 2 or channels in (1, 3, 4)):
        return Image.fromarray(array[..., 0] if channels == 1 else np.ascontiguousarray(array))
    raise CTranError(
        f"numpy images must be uint8 pixels (H, W[, 1|3|4]) or normalised float (3, H, W), got "
        f"{array.dtype} {array.shape}"
    )


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
