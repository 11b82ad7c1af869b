"""Digit scenes: the bundled multi-label dataset, made from real handwriting with no download.

Source images are scikit-learn's ``load_digits`` (1,797 real 8 x 8 handwritten digits). Scenes are composed
from them so that labels depend on each other the way the labels of real photos do: some are visible, some
occluded, some (like hashtags or caption words) never drawn but implied by the scene.

Generative process (its parameters are fixed by the project's spec, not tuned to flatter any model):

1. The source digits are split 60/20/20 into train/val/test pools, stratified by class, so no digit image
   appears in two splits. Each split's scenes draw only from its own pool.
2. A scene is a 48 x 48 canvas, a 3 x 3 grid of 16 x 16 cells. It first draws one of 4 contexts
   (kitchen, street, beach, office) uniformly.
3. Each context has a fixed table of inclusion probabilities over the 10 digits: its 3-4 likely digits at
   0.7, the others at 0.07 (``LIKELY_DIGITS``; the likely sets overlap between contexts). Digits are drawn
   independently; a scene with no digit is drawn again, so every scene has at least one.
4. Each included digit is *hidden* with probability 0.15 (labelled present but not drawn: an occluded object
   the annotator still saw); else *degraded* with probability 0.25 (half the time a random block covering
   40-70% of its cell is blanked, half the time heavy Gaussian noise is added); else drawn clean. A drawn
   digit is a random source image of its class, upsampled to 16 x 16, placed in a free random cell with a
   random offset of up to 2 pixels each way (clipped to the canvas; overlaps take the brighter pixel).
   Should more than 9 digits need drawing (vanishingly rare), the surplus is hidden.
5. Six tags (never drawn) are each present with probability 0.8 if typical of the scene's context
   (``TYPICAL_TAGS``: one or two per context) and 0.05 otherwise.
6. Targets: the 10 digits and the 6 tags (16 labels). Extra labels: the context, as 4 input-only labels
   (metadata, like place or weather): exactly one of them is positive.

Sizes: 12,000 train / 2,000 val / 4,000 test scenes, fully determined by the seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ctran.data.base import LabeledImages, Sample
from ctran.errors import CTranError
from ctran.normalization import IMAGENET, Normalization, normalize

CONTEXTS = ("kitchen", "street", "beach", "office")
TAGS = ("food", "cooking", "traffic", "sea", "sun", "work")
DIGIT_NAMES = tuple(f"digit_{d}" for d in range(10))
TAG_NAMES = tuple(f"tag_{t}" for t in TAGS)
CONTEXT_NAMES = tuple(f"context_{c}" for c in CONTEXTS)

LIKELY_DIGITS = {"kitchen": (0, 1, 2, 3), "street": (3, 4, 5), "beach": (5, 6, 7, 8), "office": (8, 9, 0)}
TYPICAL_TAGS = {
    "kitchen": ("food", "cooking"),
    "street": ("traffic",),
    "beach": ("sea", "sun"),
    "office": ("work",),
}
P_LIKELY, P_OTHER = 0.7, 0.07
P_HIDDEN, P_DEGRADED = 0.15, 0.25
P_TAG_TYPICAL, P_TAG_OTHER = 0.8, 0.05
OCCLUSION_RANGE = (0.4, 0.7)
NOISE_STD = 0.6
MAX_OFFSET = 2
CANVAS, CELL, GRID = 48, 16, 3
SPLIT_SIZES = {"train": 12_000, "val": 2_000, "test": 4_000}


@dataclass
class DigitScenes:
    """One split: images uint8 (N, 48, 48), targets (N, 16) and extras (N, 4), both in {0, 1}."""

    images: np.ndarray
    targets: np.ndarray
    extras: np.ndarray
    split: str
    seed: int

    @property
    def target_names(self) -> tuple[str, ...]:
        return DIGIT_NAMES + TAG_NAMES

    @property
    def extra_names(self) -> tuple[str, ...]:
        return CONTEXT_NAMES

    def __len__(self) -> int:
        return len(self.images)


def inclusion_table() -> np.ndarray:
    """Digit inclusion probabilities per context: (4 contexts, 10 digits)."""
    table = np.full((len(CONTEXTS), 10), P_OTHER)
    for c, name in enumerate(CONTEXTS):
        table[c, list(LIKELY_DIGITS[name])] = P_LIKELY
    return table


def tag_table() -> np.ndarray:
    """Tag probabilities per context: (4 contexts, 6 tags)."""
    table = np.full((len(CONTEXTS), len(TAGS)), P_TAG_OTHER)
    for c, name in enumerate(CONTEXTS):
        table[c, [TAGS.index(t) for t in TYPICAL_TAGS[name]]] = P_TAG_TYPICAL
    return table


def source_indices(seed: int) -> dict[str, np.ndarray]:
    """Split load_digits 60/20/20 stratified by class: {split: indices into ``load_digits()``}."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if seed < 0:
        raise CTranError(f"the digits seed must be a non-negative integer, got {seed}")
    classes = load_digits().target
    idx = np.arange(len(classes))
    train_idx, rest = train_test_split(idx, train_size=0.6, stratify=classes, random_state=seed)
    val_idx, test_idx = train_test_split(rest, train_size=0.5, stratify=classes[rest], random_state=seed)
    return {"train": train_idx, "val": val_idx, "test": test_idx}


def source_pools(seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{split: (images (n, 8, 8) in [0, 1], classes (n,))}: the source digits each split draws from."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0
    return {name: (images[i], digits.target[i]) for name, i in source_indices(seed).items()}


def training_overlap(train_seed: int, seed: int, split: str) -> float:
    """Fraction of ``split``'s source digits under ``seed`` that were in the training pool of ``train_seed``.

    Scenes of another seed are drawn from other pools, so a model trained with one seed has seen most
    digits of another seed's test split: such an evaluation would measure memory, not generalisation.
    """
    seen = set(source_indices(train_seed)["train"].tolist())
    pool = source_indices(seed)[split]
    return sum(int(i) in seen for i in pool) / len(pool)


def _upsample(digit: np.ndarray) -> np.ndarray:
    """8 x 8 -> 16 x 16 by bilinear interpolation (align-corners style), values kept in [0, 1]."""
    coords = np.linspace(0, 7, CELL)
    lo = np.floor(coords).astype(int)
    hi = np.minimum(lo + 1, 7)
    frac = coords - lo
    rows = digit[lo] * (1 - frac)[:, None] + digit[hi] * frac[:, None]
    return rows[:, lo] * (1 - frac) + rows[:, hi] * frac


def _degrade(patch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Blank a random block covering 40-70% of the cell, or add heavy noise (each half the time)."""
    patch = patch.copy()
    if rng.random() < 0.5:
        area = rng.uniform(*OCCLUSION_RANGE) * CELL * CELL
        aspect = rng.uniform(0.6, 1.6)
        bh = int(np.clip(round(np.sqrt(area * aspect)), 1, CELL))
        bw = int(np.clip(round(area / bh), 1, CELL))
        y, x = rng.integers(0, CELL - bh + 1), rng.integers(0, CELL - bw + 1)
        patch[y : y + bh, x : x + bw] = 0.0
    else:
        patch = patch + rng.normal(0.0, NOISE_STD, patch.shape)
    return np.clip(patch, 0.0, 1.0)


def _make_scene(
    rng: np.random.Generator, pool: tuple[np.ndarray, np.ndarray], by_class: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray, int]:
    """Draw one scene: (canvas float (48, 48), targets (16,), context index)."""
    context = int(rng.integers(len(CONTEXTS)))
    present = np.zeros(10, dtype=bool)
    while not present.any():
        present = rng.random(10) < _INCLUSION[context]
    tags = rng.random(len(TAGS)) < _TAGS[context]
    canvas = np.zeros((CANVAS, CANVAS), dtype=np.float32)
    cells = rng.permutation(GRID * GRID)
    n_drawn = 0
    for digit in np.flatnonzero(present):
        fate = rng.random()
        if fate < P_HIDDEN or n_drawn == len(cells):
            continue
        patch = _upsample(pool[0][rng.choice(by_class[digit])])
        if fate < P_HIDDEN + (1 - P_HIDDEN) * P_DEGRADED:
            patch = _degrade(patch, rng)
        cell = cells[n_drawn]
        n_drawn += 1
        dy, dx = rng.integers(-MAX_OFFSET, MAX_OFFSET + 1, size=2)
        y0 = int(np.clip((cell // GRID) * CELL + dy, 0, CANVAS - CELL))
        x0 = int(np.clip((cell % GRID) * CELL + dx, 0, CANVAS - CELL))
        region = canvas[y0 : y0 + CELL, x0 : x0 + CELL]
        np.maximum(region, patch, out=region)
    targets = np.concatenate([present, tags]).astype(np.int8)
    return canvas, targets, context


_INCLUSION = inclusion_table()
_TAGS = tag_table()


def generate_split(split: str, seed: int = 0, size: int | None = None) -> DigitScenes:
    """Generate one split deterministically from (seed, split); ``size`` overrides the standard size."""
    if split not in SPLIT_SIZES:
        raise CTranError(f"unknown digits split {split!r}; expected one of {', '.join(SPLIT_SIZES)}")
    n = SPLIT_SIZES[split] if size is None else size
    if n < 1:
        raise CTranError(f"the number of {split} scenes must be positive, got {n}")
    pool = source_pools(seed)[split]
    by_class = [np.flatnonzero(pool[1] == d) for d in range(10)]
    rng = np.random.default_rng([seed, list(SPLIT_SIZES).index(split)])
    images = np.empty((n, CANVAS, CANVAS), dtype=np.uint8)
    targets = np.empty((n, len(DIGIT_NAMES) + len(TAG_NAMES)), dtype=np.int8)
    extras = np.zeros((n, len(CONTEXTS)), dtype=np.int8)
    for i in range(n):
        canvas, targets[i], context = _make_scene(rng, pool, by_class)
        images[i] = np.round(canvas * 255).astype(np.uint8)
        extras[i, context] = 1
    return DigitScenes(images, targets, extras, split, seed)


class DigitScenesDataset(LabeledImages):
    """A split of digit scenes as ``Sample``s: grey scenes replicated to RGB, normalised with ``norm``."""

    target_names = DIGIT_NAMES + TAG_NAMES
    extra_names = CONTEXT_NAMES

    def __init__(self, scenes: DigitScenes, norm: Normalization = IMAGENET) -> None:
        self.scenes = scenes
        grey = torch.from_numpy(scenes.images)[:, None].float() / 255.0  # (N, 1, 48, 48)
        self._images = normalize(grey.expand(-1, 3, -1, -1), norm)  # (N, 3, 48, 48); 110 MB for 12k
        self._targets = torch.from_numpy(scenes.targets).long()
        self._extras = torch.from_numpy(scenes.extras).long()

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, index: int) -> Sample:
        return Sample(self._images[index], self._targets[index], self._extras[index], index)


def load_digit_scenes(
    split: str, seed: int = 0, size: int | None = None, norm: Normalization = IMAGENET
) -> DigitScenesDataset:
    """The ready-to-train dataset for one split."""
    return DigitScenesDataset(generate_split(split, seed, size), norm)
