"""One entry point for every dataset format: ``build_dataset`` (one publisher split) and ``load_splits``.

Split names are the publishers' own (VOC ``trainval``/``test``, COCO ``train``/``val``, Open Images
``train``/``validation``/``test``, ...). For training, ``load_splits`` returns ``train``, ``val`` and
``test``: where the publisher has a validation split it is used; otherwise ``val`` is a deterministic
(seeded) held-out fraction of the training split and ``train`` the rest. Model selection never looks at the
test split (the official C-Tran code selected models on COCO's test set; this does not).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctran.data import coco, cub, nuswide, openimages, shards, tabular, vg500, voc
from ctran.data.base import LabeledImages
from ctran.data.digit_scenes import SPLIT_SIZES, DigitScenes, DigitScenesDataset, generate_split
from ctran.data.images import DenseLabels
from ctran.data.transforms import PAPER_CROPS, decode_side, eval_transform, train_transform
from ctran.errors import CTranError
from ctran.normalization import IMAGENET, Normalization


class DigitScenesImages(DigitScenesDataset):
    """The bundled digit scenes with the interface of the file datasets (label tables, ids; no files)."""

    def __init__(self, scenes: DigitScenes, norm: Normalization = IMAGENET) -> None:
        super().__init__(scenes, norm)
        self.target_table = DenseLabels(scenes.targets)
        self.extra_table = DenseLabels(scenes.extras)
        self.missing_files: list[str] = []
        self.bad_images: list[tuple[str, str]] = []
        self.notes = [f"generated digit scenes (seed {scenes.seed}), no files on disk"]
        self.extra_groups: list[list[int]] = []
        self.extra_certainty = None

    def image_id(self, index: int) -> str:
        return f"{self.scenes.split}-{index:05d}"

    def targets_matrix(self) -> np.ndarray:
        return self.scenes.targets

    def extras_matrix(self) -> np.ndarray:
        return self.scenes.extras


def _load_digits(
    root, split, *, transform=None, on_bad_image="skip", seed=0, size=None, norm=IMAGENET
) -> DigitScenesImages:
    """Digit scenes ignore ``root`` and the image transform: they are generated at 48 x 48."""
    if split not in SPLIT_SIZES:
        raise CTranError(f"digits splits are {', '.join(SPLIT_SIZES)}, not {split!r}")
    return DigitScenesImages(generate_split(split, seed, None if size is None else int(size)), norm)


@dataclass(frozen=True)
class Format:
    """How to read one dataset format and which of its splits play which role."""

    load: Callable[..., LabeledImages]
    splits: tuple[str, ...] | None  # None: the split names are the file names found under the root
    roles: dict[str, str]  # "train" / "val" / "test" -> publisher split name (no "val": held out)
    options: tuple[str, ...]


REGISTRY: dict[str, Format] = {
    "voc": Format(voc.load, voc.SPLITS, {"train": "trainval", "test": "test"}, voc.OPTIONS),
    "coco": Format(coco.load, coco.SPLITS, {"train": "train", "test": "val"}, coco.OPTIONS),
    "vg500": Format(vg500.load, vg500.SPLITS, {"train": "train", "test": "test"}, vg500.OPTIONS),
    "nuswide": Format(nuswide.load, nuswide.SPLITS, {"train": "train", "test": "test"}, nuswide.OPTIONS),
    "cub": Format(cub.load, cub.SPLITS, {"train": "train", "val": "val", "test": "test"}, cub.OPTIONS),
    "openimages": Format(
        openimages.load,
        openimages.SPLITS,
        {"train": "train", "val": "validation", "test": "test"},
        openimages.OPTIONS,
    ),
    "csv": Format(
        functools.partial(tabular.load, kind="csv"),
        None,
        {"train": "train", "val": "val", "test": "test"},
        tabular.OPTIONS,
    ),
    "jsonl": Format(
        functools.partial(tabular.load, kind="jsonl"),
        None,
        {"train": "train", "val": "val", "test": "test"},
        tabular.OPTIONS,
    ),
    "digits": Format(
        _load_digits, tuple(SPLIT_SIZES), {"train": "train", "val": "val", "test": "test"}, ("size",)
    ),
    "shards": Format(shards.load, None, {"train": "train", "val": "val", "test": "test"}, shards.OPTIONS),
}
FORMATS: tuple[str, ...] = tuple(REGISTRY)


def get_format(name: str) -> Format:
    """The registry entry of a format, or an error listing the known formats."""
    if name not in REGISTRY:
        raise CTranError(f"unknown dataset format {name!r}; expected one of {', '.join(FORMATS)}")
    return REGISTRY[name]


def default_split(format: str, role: str) -> str:
    """The publisher split that plays ``role`` ("train", "val" or "test"), e.g. ("coco", "test") -> "val"."""
    roles = get_format(format).roles
    if role not in {"train", "val", "test"}:
        raise CTranError(f"split role must be train, val or test, got {role!r}")
    if role not in roles:
        raise CTranError(
            f"{format} has no validation split of its own; load_splits holds one out of training"
        )
    return roles[role]


def build_dataset(
    format: str,
    root: str | Path | None,
    split: str,
    *,
    train: bool = False,
    image_size: int = 576,
    scale_size: int | None = 640,
    crop_sizes: Sequence[int] = PAPER_CROPS,
    seed: int = 0,
    on_bad_image: str = "skip",
    norm: Normalization = IMAGENET,
    flip: bool = True,
    **options,
) -> LabeledImages:
    """One publisher split, with the paper's train (``train=True``) or test transform at ``image_size``.

    ``scale_size`` is the resize before cropping (None: resize straight to ``image_size``), ``crop_sizes``
    the random crops of training; ``seed`` only matters for ``digits`` (scene generation); ``norm`` is the
    backbone's input normalisation; ``flip`` the random horizontal flip of training (off for images a mirror
    changes: text, digits); ``options`` are the format's own (``REGISTRY[format].options``).
    """
    spec = get_format(format)
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        known = ", ".join(spec.options) or "none"
        raise CTranError(f"{format} has no option {unknown[0]!r} (its options: {known})")
    if spec.splits is not None and split not in spec.splits:
        raise CTranError(f"{format} has no split {split!r}; its splits are {', '.join(spec.splits)}")
    if format == "digits":
        options.update(seed=seed, norm=norm)
    transform = _transform(train, image_size, scale_size, crop_sizes, norm, flip)
    dataset = spec.load(root, split, transform=transform, on_bad_image=on_bad_image, **options)
    if hasattr(dataset, "decode_side"):  # large JPEGs decode at a reduced size (transforms.load_image)
        dataset.decode_side = decode_side(image_size, scale_size)
    return dataset


def load_splits(
    format: str,
    root: str | Path | None,
    *,
    seed: int = 0,
    image_size: int = 576,
    scale_size: int | None = 640,
    crop_sizes: Sequence[int] = PAPER_CROPS,
    val_fraction: float = 0.1,
    on_bad_image: str = "skip",
    splits: dict[str, str] | None = None,
    norm: Normalization = IMAGENET,
    flip: bool = True,
    **options,
) -> dict[str, LabeledImages]:
    """``{"train", "val", "test"}``: the publisher's splits; ``val`` held out of training if there is none.

    ``splits`` overrides which publisher split plays a role, e.g. ``{"train": "train", "val": "val"}`` to
    use VOC's own train/val halves instead of holding 10% out of ``trainval``.
    """
    roles = {**get_format(format).roles, **(splits or {})}
    unknown = sorted(set(roles) - {"train", "val", "test"})
    if unknown:
        raise CTranError(f"split roles are train, val and test, got {unknown[0]!r}")
    has_val = "val" in roles and _has_split(format, root, roles["val"], options)
    common = {
        "image_size": image_size,
        "scale_size": scale_size,
        "crop_sizes": crop_sizes,
        "seed": seed,
        "on_bad_image": on_bad_image,
        "norm": norm,
    }
    test = build_dataset(format, root, roles["test"], **common, **options)
    if has_val:
        train = build_dataset(format, root, roles["train"], train=True, flip=flip, **common, **options)
        val = build_dataset(format, root, roles["val"], **common, **options)
        return {"train": train, "val": val, "test": test}
    if not 0.0 < val_fraction < 1.0:
        raise CTranError(f"val_fraction must be in (0, 1), got {val_fraction}")
    full = build_dataset(format, root, roles["train"], train=True, flip=flip, **common, **options)
    train_rows, val_rows = held_out(len(full), val_fraction, seed)
    return {
        "train": full.subset(train_rows),
        "val": full.subset(val_rows, transform=_transform(False, image_size, scale_size, crop_sizes, norm)),
        "test": test,
    }


def held_out(size: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, val rows), both sorted: a seeded random ``fraction`` of ``size`` rows (at least one)."""
    if size < 2:
        raise CTranError(f"cannot hold out a validation split from {size} training image(s)")
    count = min(size - 1, max(1, round(fraction * size)))
    order = np.random.default_rng(seed).permutation(size)
    return np.sort(order[count:]), np.sort(order[:count])


def _has_split(format: str, root: str | Path | None, split: str, options: dict) -> bool:
    """Whether ``split`` exists: own data and raw CUB may come without a validation split."""
    if format in {"csv", "jsonl"}:
        root_path = Path(root).expanduser() if root is not None else None
        if root_path is None or not root_path.is_dir():
            raise CTranError(
                f"training on {format} data needs a folder with train.{format} and test.{format} "
                f"(val.{format} optional), got {root}"
            )
        return (root_path / f"{split}.{format}").exists()
    if format == "shards":  # pack writes train, val and test; shards.load names a split that is missing
        return True
    if format == "cub":
        source = options.get("source", "auto")
        return source == "cbm" or (source == "auto" and cub.has_pickles(root))
    return True


def _transform(
    train: bool,
    image_size: int,
    scale_size: int | None,
    crop_sizes: Sequence[int],
    norm: Normalization,
    flip: bool = True,
):
    if train:
        return train_transform(image_size, scale_size or image_size, tuple(crop_sizes), flip, norm)
    return eval_transform(image_size, scale_size, norm)
