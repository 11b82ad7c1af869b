"""Image decoding and the paper's train/test transforms, shared by every reader and by inference.

Train (C-Tran, all photo datasets): resize to ``scale_size`` (640), one random crop among
``crop_sizes`` (640, 576, 512, 384, 320), resize to ``image_size`` (576), horizontal flip, ImageNet
normalisation with the backbone's mean/std (``ctran.normalization``; ImageNet's by default). Test: resize to
``scale_size``, centre crop ``image_size``.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.transforms import v2

from ctran.normalization import IMAGENET, Normalization

PAPER_CROPS = (640, 576, 512, 384, 320)


def load_image(source: str | Path | BinaryIO | Image.Image, min_side: int | None = None) -> Image.Image:
    """Decode to 8-bit RGB whatever the file holds: EXIF rotation applied, grey/16-bit/palette/alpha handled.

    Transparent pixels are composed over white (what a viewer shows), 16-bit images are scaled to 8 bits.
    ``min_side``: the side the transform resizes to. A JPEG at least twice that on both sides is decoded at
    1/2, 1/4 or 1/8 of its size (Pillow's ``draft``, the DCT's own downscaling), never below ``min_side``:
    a 1600 x 1200 photo bound for 144 px decodes at 200 x 150 in a fraction of the time, and the pixels
    skipped are the ones the resize would have averaged away. Smaller images decode exactly as without it.
    """
    image = source if isinstance(source, Image.Image) else Image.open(source)
    if min_side is not None:
        image.draft(None, (min_side, min_side))  # a no-op for other formats and already-loaded images
    image = ImageOps.exif_transpose(image)
    if image.mode in {"I;16", "I;16B", "I;16L", "I"}:
        array = np.asarray(image, dtype=np.float32)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / peak * 255, 0, 255).astype(np.uint8), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in {"RGBA", "LA"}:
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert("RGB")


def _to_normalized_tensor(norm: Normalization) -> list:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(norm.mean, norm.std)]


def train_transform(
    image_size: int = 576,
    scale_size: int = 640,
    crop_sizes: tuple[int, ...] = PAPER_CROPS,
    flip: bool = True,
    norm: Normalization = IMAGENET,
) -> v2.Compose:
    """The paper's multi-scale crop augmentation; crop sizes above ``scale_size`` are dropped."""
    crops = [v2.RandomCrop(size) for size in crop_sizes if size <= scale_size] or [v2.RandomCrop(scale_size)]
    steps = [v2.Resize((scale_size, scale_size), antialias=True), v2.RandomChoice(crops)]
    steps += [v2.Resize((image_size, image_size), antialias=True)]
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose(steps + _to_normalized_tensor(norm))


def eval_transform(
    image_size: int = 576, scale_size: int | None = 640, norm: Normalization = IMAGENET
) -> v2.Compose:
    """Resize to ``scale_size`` then centre-crop ``image_size`` (plain resize when ``scale_size`` is None)."""
    if scale_size is None or scale_size == image_size:
        steps = [v2.Resize((image_size, image_size), antialias=True)]
    else:
        steps = [v2.Resize((scale_size, scale_size), antialias=True), v2.CenterCrop(image_size)]
    return v2.Compose(steps + _to_normalized_tensor(norm))


def decode_side(image_size: int, scale_size: int | None) -> int:
    """The smallest side an image must keep for the paper's transforms: both resize to ``scale_size``
    (``image_size`` without one) before cropping (``load_image``'s ``min_side``)."""
    return max(image_size, scale_size or image_size)
