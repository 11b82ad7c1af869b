"""A synthetic many-label dataset, sparse like Open Images, written in the CSV layout of your own data.

What the bundled digit scenes (16 labels, every one annotated) cannot show: thousands of labels with a
long-tailed frequency, about ten annotated (image, label) entries per image and every other entry unknown,
and datasets of 100,000 images. The generator writes tiny PNGs whose pixels carry the labels, so a model can
learn them, and labels that depend on each other, so known labels help.

Generative process (deterministic from ``seed``; the label model depends on ``seed`` and ``num_labels`` only,
so every split and every dataset size share it):

1. Labels come in groups of ``group_size`` (the last group may be smaller). Groups are drawn with a
   Zipf-like popularity ``1 / rank ** zipf`` (group 0 the most popular). Within a group, label ``k`` has a
   base inclusion probability ``0.9 * 0.75 ** k`` and a preferred *variant* (0 or 1, random); a fraction
   ``hidden_fraction`` of the labels (never the first of a group) is *hidden*: present but never drawn,
   like a hashtag or a caption word implied by the scene.
2. An image draws 1-3 distinct groups (1 + Binomial(2, 0.5)), each with a variant z. Each label of a drawn
   group is present with its base probability if its preferred variant is z, else 0.1 times it (at least
   one label per drawn group is present). A known label therefore tells the group and its variant, which
   predicts its group-mates, hidden ones included.
3. Pixels: a ``image_size`` x ``image_size`` black canvas, a grid of 8 x 8 cells. Each present visible
   label is drawn in a free random cell as its code: four horizontal stripes of 2 pixels, each one of 26
   colours ({0, 0.5, 1}^3 but black), unique per label. The stripes are horizontal, so the training flip
   keeps a code intact. A drawn label is degraded with probability ``P_DEGRADED`` (half the time heavy noise
   on its cell, half the time half its stripes blanked); labels beyond the free cells stay undrawn. Gaussian
   noise of standard deviation ``NOISE_STD`` covers the whole image.
4. Annotations (``annotated_per_image`` = A): every positive is annotated except a fraction
   ``missed_positives`` left unknown (as Open Images' verification misses some); then negatives bring the
   row to A entries (at least ``MIN_NEGATIVES``): half of them hard (absent labels of the drawn groups),
   the rest drawn by label frequency from the whole vocabulary (as verification candidates are). Every
   other entry is unknown: the files must be read with ``unlisted=unknown``.

Files: ``train.csv``, ``val.csv``, ``test.csv`` (header ``image,labels``; ``-name`` a verified negative),
``labels.txt`` (the vocabulary), ``images/<split>/<chunk>/<index>.png`` (1,000 per folder),
``synthetic.json`` (the parameters and each label's group, variant, hidden flag and expected frequency) and
``ctran.yaml``, a small training config that points at the folder (``ctran train --config DIR/ctran.yaml``).
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ctran.errors import CTranError
from ctran.files import atomic_write_bytes

CELL = 8  # pixels per grid cell; small_cnn's output stride, so one feature per cell
STRIPES = 4  # a code is 4 stripes of CELL // STRIPES rows
PALETTE = np.array(
    [(r, g, b) for r in (0, 0.5, 1) for g in (0, 0.5, 1) for b in (0, 0.5, 1) if (r, g, b) != (0, 0, 0)],
    dtype=np.float32,
)  # (26, 3)
P_OFF_VARIANT = 0.1  # inclusion probability factor when the label's variant is not the group's
P_DEGRADED = 0.2
DEGRADED_NOISE = 0.6
NOISE_STD = 0.05
MIN_NEGATIVES = 2
CHUNK = 1000  # images per folder and per unit of (parallel) work
SPLITS = ("train", "val", "test")
SPLIT_SEEDS = {name: i for i, name in enumerate(SPLITS)}


@dataclass(frozen=True)
class SyntheticSpec:
    """The label model's parameters (what ``synthetic.json`` records besides the label table)."""

    num_labels: int = 2000
    group_size: int = 8
    zipf: float = 1.0
    hidden_fraction: float = 0.25
    annotated_per_image: int = 10
    missed_positives: float = 0.1
    image_size: int = 32
    seed: int = 0

    def check(self) -> None:
        """One-line errors for values no dataset can be made from."""
        if self.num_labels < 2:
            raise CTranError(f"the number of labels must be at least 2, got {self.num_labels}")
        if self.num_labels > len(PALETTE) ** STRIPES:
            raise CTranError(f"at most {len(PALETTE) ** STRIPES} labels have distinct codes")
        if self.group_size < 1:
            raise CTranError(f"the group size must be positive, got {self.group_size}")
        if self.annotated_per_image < 1:
            raise CTranError(f"annotated labels per image must be positive, got {self.annotated_per_image}")
        if self.image_size < CELL or self.image_size % CELL:
            raise CTranError(f"the image size must be a multiple of {CELL}, got {self.image_size}")
        if not 0.0 <= self.hidden_fraction < 1.0 or not 0.0 <= self.missed_positives < 1.0:
            raise CTranError("hidden_fraction and missed_positives must be in [0, 1)")
        if self.zipf < 0:
            raise CTranError(f"the Zipf exponent must be non-negative, got {self.zipf}")


@dataclass(frozen=True)
class LabelModel:
    """Per label: its group, base inclusion probability, variant, hidden flag and code; per group, weight."""

    names: tuple[str, ...]
    group: np.ndarray  # (L,) int
    base: np.ndarray  # (L,) float, inclusion probability when the group's variant is the label's
    variant: np.ndarray  # (L,) 0/1
    hidden: np.ndarray  # (L,) bool
    codes: np.ndarray  # (L, STRIPES) palette indices
    group_weight: np.ndarray  # (G,) drawing probability of each group, sums to 1
    members: list[np.ndarray]  # per group, its label ids
    frequency: np.ndarray  # (L,) approximate fraction of images where each label is present


def label_model(spec: SyntheticSpec) -> LabelModel:
    """The labels, their groups and codes: a function of ``(seed, num_labels, group_size, ...)`` only."""
    spec.check()
    rng = np.random.default_rng([spec.seed, 1_000])
    n = spec.num_labels
    group = np.arange(n) // spec.group_size
    position = np.arange(n) % spec.group_size
    num_groups = int(group[-1]) + 1
    weight = 1.0 / np.arange(1, num_groups + 1) ** spec.zipf
    hidden = (rng.random(n) < spec.hidden_fraction) & (position > 0)
    codes = rng.choice(len(PALETTE) ** STRIPES, size=n, replace=False)
    digits = (codes[:, None] // len(PALETTE) ** np.arange(STRIPES)) % len(PALETTE)  # (L, STRIPES)
    names = tuple(f"g{g:04d}_{'h' if h else 'v'}{k}" for g, k, h in zip(group, position, hidden, strict=True))
    weight = weight / weight.sum()
    base = 0.9 * 0.75**position
    chosen = np.minimum(1.0, 2.0 * weight[group])  # about 2 groups per image
    return LabelModel(
        names=names,
        group=group,
        base=base,
        variant=rng.integers(0, 2, size=n),
        hidden=hidden,
        codes=digits,
        group_weight=weight,
        members=[np.flatnonzero(group == g) for g in range(num_groups)],
        frequency=chosen * base * (1 + P_OFF_VARIANT) / 2,
    )


def draw_image(
    model: LabelModel, spec: SyntheticSpec, rng: np.random.Generator
) -> tuple[np.ndarray, list[int], list[int]]:
    """One image: (pixels uint8 (S, S, 3), annotated positive label ids, annotated negative label ids)."""
    count = min(1 + int(rng.binomial(2, 0.5)), len(model.members))
    groups = rng.choice(len(model.members), size=count, replace=False, p=model.group_weight)
    present, absent = [], []
    for g in groups:
        members = model.members[g]
        z = rng.integers(0, 2)
        prob = model.base[members] * np.where(model.variant[members] == z, 1.0, P_OFF_VARIANT)
        chosen = rng.random(len(members)) < prob
        if not chosen.any():
            chosen[np.argmax(prob)] = True
        present += members[chosen].tolist()
        absent += members[~chosen].tolist()
    pixels = _draw_pixels([i for i in present if not model.hidden[i]], model, spec.image_size, rng)
    positives = [i for i in present if rng.random() >= spec.missed_positives]
    negatives = _negatives(model, spec, present, absent, len(positives), rng)
    return pixels, positives, negatives


def _draw_pixels(visible: list[int], model: LabelModel, size: int, rng: np.random.Generator) -> np.ndarray:
    """The labels' codes in random free cells, some degraded, plus noise: uint8 (size, size, 3)."""
    canvas = np.zeros((size, size, 3), dtype=np.float32)
    grid = size // CELL
    cells = rng.permutation(grid * grid)
    stripe = CELL // STRIPES
    for label, cell in zip(visible, cells, strict=False):  # labels beyond the free cells stay undrawn
        patch = np.repeat(PALETTE[model.codes[label]], stripe, axis=0)[:, None, :]  # (CELL, 1, 3)
        patch = np.broadcast_to(patch, (CELL, CELL, 3)).copy()
        if rng.random() < P_DEGRADED:
            if rng.random() < 0.5:
                patch += rng.normal(0.0, DEGRADED_NOISE, patch.shape).astype(np.float32)
            else:
                blank = rng.choice(STRIPES, size=STRIPES // 2, replace=False)
                for s in blank:
                    patch[s * stripe : (s + 1) * stripe] = 0.0
        y, x = (cell // grid) * CELL, (cell % grid) * CELL
        canvas[y : y + CELL, x : x + CELL] = patch
    canvas += rng.normal(0.0, NOISE_STD, canvas.shape).astype(np.float32)
    return np.round(np.clip(canvas, 0.0, 1.0) * 255).astype(np.uint8)


def _negatives(
    model: LabelModel,
    spec: SyntheticSpec,
    present: list[int],
    absent: list[int],
    num_positives: int,
    rng: np.random.Generator,
) -> list[int]:
    """Verified negatives bringing the row to ``annotated_per_image``: half hard (absent group-mates), half
    drawn by label frequency from the whole vocabulary."""
    wanted = min(
        max(spec.annotated_per_image - num_positives, MIN_NEGATIVES), len(model.names) - len(present)
    )
    hard = rng.permutation(absent)[: (wanted + 1) // 2].tolist()
    taken = set(present) | set(hard)
    weights = model.frequency / model.frequency.sum()
    drawn = rng.choice(len(model.names), size=min(len(model.names), 4 * wanted), p=weights).tolist()
    rest = [label for label in dict.fromkeys(drawn) if label not in taken]
    if len(hard) + len(rest) < wanted:  # a tiny vocabulary: complete with the labels not drawn yet
        unseen = set(taken) | set(rest)
        rest += [label for label in rng.permutation(len(model.names)).tolist() if label not in unseen]
    return hard + rest[: wanted - len(hard)]


def _write_chunk(task: tuple[Path, SyntheticSpec, str, int, int]) -> list[tuple[str, str]]:
    """Draw and write images ``[start, stop)`` of one split's chunk; return its (image path, labels) rows.

    Each chunk has its own seed ``(seed, split, chunk)``, so the output does not depend on the number of
    processes writing it.
    """
    out, spec, split, chunk, stop = task
    model = label_model(spec)
    rng = np.random.default_rng([spec.seed, SPLIT_SEEDS[split], chunk])
    folder = Path("images") / split / f"{chunk:03d}"
    (out / folder).mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(chunk * CHUNK, stop):
        pixels, positives, negatives = draw_image(model, spec, rng)
        path = folder / f"{index:06d}.png"
        Image.fromarray(pixels).save(out / path, format="PNG", compress_level=1)
        tokens = [model.names[i] for i in positives] + [f"-{model.names[i]}" for i in negatives]
        rows.append((path.as_posix(), ";".join(tokens)))
    return rows


def write_synthetic(
    out: str | Path,
    num_images: int,
    num_labels: int = 2000,
    *,
    val_images: int | None = None,
    test_images: int | None = None,
    annotated_per_image: int = 10,
    image_size: int = 32,
    group_size: int = 8,
    zipf: float = 1.0,
    hidden_fraction: float = 0.25,
    missed_positives: float = 0.1,
    seed: int = 0,
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Write the dataset to ``out`` (``num_images`` training images; val and test default to a tenth each,
    at least 50) and return a summary: split sizes, labels, mean annotated and positive entries per image,
    seconds and images per second written. ``progress(n)`` is called after each chunk of ``n`` images.
    """
    spec = SyntheticSpec(
        num_labels, group_size, zipf, hidden_fraction, annotated_per_image, missed_positives, image_size, seed
    )
    spec.check()
    sizes = split_sizes(num_images, val_images, test_images)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise CTranError(f"{out} is not empty; pick a new folder for the synthetic dataset")
    out.mkdir(parents=True, exist_ok=True)
    model = label_model(spec)
    start = time.perf_counter()
    rows = _write_images(out, spec, sizes, max(1, workers), progress)
    seconds = time.perf_counter() - start
    for split, split_rows in rows.items():
        _write_csv(out / f"{split}.csv", split_rows)
    atomic_write_bytes(out / "labels.txt", ("\n".join(model.names) + "\n").encode())
    summary = _summary(out, spec, model, sizes, rows, seconds)
    atomic_write_bytes(
        out / "synthetic.json", (json.dumps(_description(spec, model, summary)) + "\n").encode()
    )
    atomic_write_bytes(out / "ctran.yaml", training_config(out, spec.image_size).encode())
    return summary


def split_sizes(num_images: int, val_images: int | None, test_images: int | None) -> dict[str, int]:
    """Images per split: val and test default to a tenth of the training images, at least 50."""
    default = max(50, num_images // 10)
    sizes = {
        "train": num_images,
        "val": default if val_images is None else val_images,
        "test": default if test_images is None else test_images,
    }
    for split, size in sizes.items():
        if size < 1:
            raise CTranError(f"the number of {split} images must be positive, got {size}")
    return sizes


def _write_images(
    out: Path,
    spec: SyntheticSpec,
    sizes: dict[str, int],
    workers: int,
    progress: Callable[[int], None] | None,
) -> dict[str, list[tuple[str, str]]]:
    """Every split's images, chunk by chunk (in ``workers`` processes when more than one)."""
    tasks = [
        (out, spec, split, chunk, min(size, (chunk + 1) * CHUNK))
        for split, size in sizes.items()
        for chunk in range((size + CHUNK - 1) // CHUNK)
    ]
    rows: dict[str, list[tuple[str, str]]] = {split: [] for split in sizes}
    if workers == 1 or len(tasks) == 1:
        results = map(_write_chunk, tasks)
        return _collect(tasks, results, rows, progress)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return _collect(tasks, pool.map(_write_chunk, tasks), rows, progress)


def _collect(tasks, results, rows: dict, progress: Callable[[int], None] | None) -> dict:
    for task, chunk_rows in zip(tasks, results, strict=True):
        rows[task[2]] += chunk_rows
        if progress is not None:
            progress(len(chunk_rows))
    return rows


def _write_csv(path: Path, rows: list[tuple[str, str]]) -> None:
    text = io.StringIO(newline="")
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(("image", "labels"))
    writer.writerows(rows)
    atomic_write_bytes(path, text.getvalue().encode())


def _summary(
    out: Path, spec: SyntheticSpec, model: LabelModel, sizes: dict, rows: dict, seconds: float
) -> dict:
    """What was written, measured from the rows themselves."""
    tokens = [row[1].split(";") for split_rows in rows.values() for row in split_rows]
    annotated = np.array([len(t) for t in tokens])
    positives = np.array([sum(not s.startswith("-") for s in t) for t in tokens])
    total = int(sum(sizes.values()))
    return {
        "out": str(out),
        "images": sizes,
        "labels": spec.num_labels,
        "groups": len(model.members),
        "hidden_labels": int(model.hidden.sum()),
        "annotated_per_image": round(float(annotated.mean()), 3),
        "positives_per_image": round(float(positives.mean()), 3),
        "image_size": spec.image_size,
        "seed": spec.seed,
        "seconds": round(seconds, 2),
        "images_per_s": round(total / seconds, 1) if seconds > 0 else None,
        "train_command": train_command(out),
    }


def _description(spec: SyntheticSpec, model: LabelModel, summary: dict) -> dict:
    """``synthetic.json``: the parameters, the summary and the label table (for analyses by label kind)."""
    return {
        "spec": asdict(spec),
        "summary": summary,
        "labels": {
            "names": list(model.names),
            "group": model.group.tolist(),
            "variant": model.variant.tolist(),
            "hidden": model.hidden.tolist(),
            "expected_frequency": np.round(model.frequency, 6).tolist(),
        },
    }


def training_config(out: Path, image_size: int) -> str:
    """``ctran.yaml``: a CPU-sized recipe that reads the folder with ``unlisted=unknown``."""
    root = os.path.abspath(out)
    return f"""# Written by `ctran data synth`. Train: ctran train --config {root}/ctran.yaml --out runs/synth
model:
  backbone: small_cnn
  pretrained: false
  dim: 64
  layers: 2
  heads: 4
  dropout: 0.1
data:
  format: csv
  root: {json.dumps(root)}
  options: {{unlisted: unknown}}  # a label a row does not list is not annotated
  image_size: {image_size}
  scale_size: null
  crop_sizes: [{image_size}]
  num_workers: 2
train:
  epochs: 10
  batch_size: 64
  optimizer: adamw
  lr: 2.0e-3
  weight_decay: 1.0e-4
  schedule: cosine
  warmup_epochs: 0.5
  grad_clip: 1.0
  precision: fp32
eval:
  batch_size: 256
"""


def train_command(out: str | Path) -> str:
    """The exact command that trains on the folder (its ``ctran.yaml`` sets ``unlisted=unknown``)."""
    return f"ctran train --config {os.path.abspath(out)}/ctran.yaml --out runs/synth"
