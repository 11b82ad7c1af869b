"""Data at scale (issue 25): the loader against training, folder vs tar shards, draft decoding, start-up.

- **Loader vs training.** Training-loader images/s (``ctran.training.loaders.train_loader``, the paper's
  augmentation) over photo-sized JPEGs (1600 x 1200, quality 90, ``common.write_photo_dataset``) read from
  the folder (CSV reader) and from the same images packed as shards (``ctran data pack``), with 0, 1 and 2
  workers, at ``own-cpu``'s size (128 from 144) and the paper's (576 from 640). Epoch 1 starts the
  workers and is not timed (workers persist across epochs, for both); the loaders then run one epoch each
  per round, interleaved, and a row gives the median round. Each size also has the folder without draft
  decoding (``decode_side`` off) and what a training step consumes at that size, measured in the same run
  (``training.train_step``: ``own-cpu``'s model, EfficientNet-Lite0 frozen + C-Tran D = 256 at batch 32;
  ResNet-101 + D = 2048 at 576, batch 2).
  ``headroom`` = loader / training: above 2 the loader is never the bottleneck.
- **Draft decoding.** Decode + eval transform of one 1600 x 1200 JPEG with and without Pillow's draft, the
  mean and largest pixel difference of the results (0-255 scale); and the accuracy effect: a digit-scenes
  model (``digits-tiny`` trained 10 epochs here) evaluated on its test scenes stored as 400 x 400 JPEGs (8.3x
  upscaled), decoded in full or by draft (at 1/8, 50 x 50).
- **Open Images start-up.** Time to the first training batch on a generated Open Images layout with a 1M-row
  label CSV (100,000 images, 10 rows each, 600 classes; the images are hard links of one JPEG): the first
  start (parses the CSV, writes the cache) vs the next (loads the cache).

Run: ``.venv/bin/python benchmarks/data_scale.py`` (see ``--help``). Not part of ``make bench``.
"""

from __future__ import annotations

import io
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from common import base_parser, machine_info, setup, write_photo_dataset, write_report
from ctran.config import load_config
from ctran.data.pack import pack_split
from ctran.data.registry import build_dataset
from ctran.data.transforms import PAPER_CROPS, eval_transform, load_image
from ctran.model import build_from_config
from ctran.training.distributed import DistContext
from ctran.training.loaders import set_epoch, train_loader
from ctran.training.optim import freeze_backbone
from ctran.training.run import model_config
from training import train_step

SIZES = {"own_cpu_128": (128, 144, (144, 128, 112)), "paper_576": (576, 640, PAPER_CROPS)}
LABELS = 80


def epoch_rate(loader, epoch: int) -> float:
    """Images/s of one epoch of a training loader."""
    set_epoch(loader, epoch)
    start = time.perf_counter()
    images = sum(len(batch.index) for batch in loader if batch is not None)
    return images / (time.perf_counter() - start)


def consumption(size: str, steps: int) -> float:
    """Images/s a training step takes at ``size``: own-cpu's model, or the paper's (ResNet-101)."""
    if size == "own_cpu_128":
        config = load_config("own-cpu", ["model.pretrained=false"])
        batch, image_size = config.train.batch_size, 128
    else:
        config = load_config("coco80", ["model.pretrained=false"])
        batch, image_size = 2, 576
    torch.manual_seed(0)
    model = build_from_config(model_config(config, LABELS))
    freeze_backbone(model, config.train.freeze_backbone)
    images = torch.randn(batch, 3, image_size, image_size)
    truth = (torch.rand(batch, LABELS) < 0.05).long()
    step = train_step(model, images, truth)
    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - start)


def loader_rows(folder: Path, shards: Path, args) -> list[dict]:
    """Per size: every (reader, workers) loader, warmed by one epoch, then timed in interleaved rounds
    (an epoch each, the order reversed every round); the median round's rate."""
    rows = []
    for size, (image_size, scale_size, crops) in SIZES.items():
        common = {"train": True, "image_size": image_size, "scale_size": scale_size, "crop_sizes": crops}
        train_rate = consumption(size, 2 if size == "paper_576" else args.steps)
        readers = {
            "folder": build_dataset("csv", folder, "test", **common),
            "shards": build_dataset("shards", shards, "test", **common),
            "folder_no_draft": build_dataset("csv", folder, "test", **common),
        }
        readers["folder_no_draft"].decode_side = None
        loaders = {
            f"{size}_{reader}_w{workers}": train_loader(
                dataset, 16, seed=0, ctx=DistContext(), workers=workers
            )
            for reader, dataset in readers.items()
            for workers in ((0,) if reader == "folder_no_draft" else (0, 1, 2))
        }
        rates: dict[str, list[float]] = {name: [] for name in loaders}
        for loader in loaders.values():
            epoch_rate(loader, 1)  # starts the workers
        for round_ in range(args.rounds):
            for name in list(loaders)[:: 1 if round_ % 2 == 0 else -1]:
                rates[name].append(epoch_rate(loaders[name], 2 + round_))
        for name, measured in rates.items():
            rate = float(np.median(measured))
            row = {
                "name": name,
                "images_per_s": round(rate, 1),
                "range": [round(min(measured), 1), round(max(measured), 1)],
            }
            row |= {"train_step_images_per_s": round(train_rate, 2), "headroom": round(rate / train_rate, 1)}
            print(row, flush=True)
            rows.append(row)
        del loaders
    return rows


def draft_rows(photo: Path) -> list[dict]:
    """Decode + eval transform rate with and without draft, and the pixel differences."""
    data = photo.read_bytes()
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None] * 255
    rows = []
    for size, (image_size, scale_size, _) in SIZES.items():
        transform = eval_transform(image_size, scale_size)
        full = transform(load_image(io.BytesIO(data)))
        rates = {}
        for name, side in (("full", None), ("draft", scale_size)):
            start, count = time.perf_counter(), 0
            while time.perf_counter() - start < 2.0:
                out = transform(load_image(io.BytesIO(data), side))
                count += 1
            rates[name] = count / (time.perf_counter() - start)
        difference = ((out - full).abs() * std).flatten()
        decoded = load_image(io.BytesIO(data), scale_size).size
        row = {"name": f"draft_{size}", "decoded_at": list(decoded), "full_per_s": round(rates["full"], 1)}
        row |= {"draft_per_s": round(rates["draft"], 1), "speedup": round(rates["draft"] / rates["full"], 2)}
        row |= {"mean_abs_diff_255": round(float(difference.mean()), 3)}
        row["max_abs_diff_255"] = round(float(difference.max()), 1)
        print(row, flush=True)
        rows.append(row)
    return rows


def draft_accuracy(tmp: Path, test_size: int) -> dict:
    """Test mAP of a digits-tiny model on its test scenes as 8x upscaled JPEGs, full vs draft decode."""
    from ctran.data.digit_scenes import CONTEXT_NAMES, DIGIT_NAMES, TAG_NAMES, generate_split
    from ctran.training.evaluation import Setting, evaluate
    from ctran.training.loaders import eval_loader
    from ctran.training.run import build_datasets
    from ctran.training.trainer import fit

    config = load_config("digits-tiny", ["train.epochs=10"])
    datasets = build_datasets(config)
    torch.manual_seed(0)
    model = build_from_config(model_config(config, 20))
    fit(model, datasets["train"], datasets["val"], config, progress=False, epoch_lines=False)
    folder = tmp / "digits_jpeg"
    folder.mkdir()
    scenes = generate_split("test", config.seed, test_size)
    names = DIGIT_NAMES + TAG_NAMES
    (folder / "labels.txt").write_text("\n".join(names) + "\n")
    (folder / "extras.txt").write_text("\n".join(CONTEXT_NAMES) + "\n")
    rows = ["image,labels,extra"]
    for i in range(len(scenes)):
        big = Image.fromarray(scenes.images[i]).resize((400, 400), Image.Resampling.BICUBIC)
        big.save(folder / f"{i}.jpg", quality=90)
        labels = ";".join(n if v else f"-{n}" for n, v in zip(names, scenes.targets[i], strict=True))
        extra = ";".join(n if v else f"-{n}" for n, v in zip(CONTEXT_NAMES, scenes.extras[i], strict=True))
        rows.append(f"{i}.jpg,{labels},{extra}")
    (folder / "test.csv").write_text("\n".join(rows) + "\n")
    result = {"name": "draft_accuracy_digits", "images": len(scenes)}
    result["mAP_48px_scenes"] = round(
        evaluate(model, eval_loader(datasets["test"], 200), [Setting()])["regular"]["mAP"], 2
    )
    for name, side in (("full", None), ("draft", 48)):
        dataset = build_dataset("csv", folder, "test", image_size=48, scale_size=None)
        dataset.decode_side = side
        result[f"mAP_jpeg_{name}"] = round(
            evaluate(model, eval_loader(dataset, 200), [Setting()])["regular"]["mAP"], 2
        )
    print(result, flush=True)
    return result


def openimages_root(root: Path, rows: int, per_image: int = 10, classes: int = 600) -> Path:
    """An Open Images layout: ``rows`` label rows over rows / per_image images (hard links of one JPEG)."""
    (root / "train").mkdir(parents=True)
    mids = [f"/m/{i:05x}" for i in range(classes)]
    (root / "oidv6-class-descriptions.csv").write_text(
        "LabelName,DisplayName\n" + "".join(f"{mid},class {i}\n" for i, mid in enumerate(mids))
    )
    rng = np.random.default_rng(0)
    images = rows // per_image
    lines = ["ImageID,Source,LabelName,Confidence"]
    for image in range(images):
        image_id = f"{image:016x}"
        photo = root / f"photo{image // 60_000}.jpg"  # a file system allows ~65,000 links to one file
        if not photo.exists():
            Image.new("RGB", (160, 120), (90, 140, 200)).save(photo, quality=90)
        os.link(photo, root / "train" / f"{image_id}.jpg")
        columns, verdicts = rng.choice(classes, per_image, replace=False), rng.random(per_image) < 0.4
        for column, verdict in zip(columns, verdicts, strict=True):
            lines.append(f"{image_id},verification,{mids[column]},{int(verdict)}")
    (root / "oidv6-train-annotations-human-imagelabels.csv").write_text("\n".join(lines) + "\n")
    return root


def startup(root: Path) -> dict:
    """Seconds to the first training batch: reading the labels, listing the images, one batch of 16."""
    start = time.perf_counter()
    dataset = build_dataset("openimages", root, "train", train=True, image_size=128, scale_size=144)
    next(iter(train_loader(dataset, 16, seed=0, ctx=DistContext(), workers=0)))
    return {
        "seconds": round(time.perf_counter() - start, 2),
        "images": len(dataset),
        "table": dataset.notes[1],
    }


def main(argv: list[str] | None = None) -> dict:
    p = base_parser(__doc__, "data_scale")
    p.add_argument("--images", type=int, default=48, help="1600 x 1200 JPEG photos (default: 48)")
    p.add_argument("--rounds", type=int, default=3, help="timed loader epochs per row (default: 3)")
    p.add_argument("--steps", type=int, default=3, help="timed training steps at 128 px (default: 3)")
    p.add_argument("--rows", type=int, default=1_000_000, help="Open Images label rows (default: 1M)")
    p.add_argument(
        "--parts", default="loader,draft,accuracy,startup", help="which parts to run (comma-separated)"
    )
    args = p.parse_args(argv)
    device = setup(args)
    parts = set(args.parts.split(","))
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = write_photo_dataset(tmp / "photos", 16 if args.quick else args.images, LABELS, (1600, 1200))
        if "loader" in parts:
            dataset = build_dataset("csv", folder, "test")
            pack_split(
                dataset, tmp / "shards", "test", {"format": "csv"}, shard_size=max(1, len(dataset) // 8)
            )
            rows += loader_rows(folder, tmp / "shards", args)
        if "draft" in parts:
            rows += draft_rows(folder / "photo_0000.jpg")
        if "accuracy" in parts:
            rows.append(draft_accuracy(tmp, 100 if args.quick else 600))
        if "startup" in parts:
            label_rows = 20_000 if args.quick else args.rows
            root = openimages_root(tmp / "openimages", label_rows)
            first, cached = startup(root), startup(root)
            cache = next((root / ".ctran-cache").glob("*.npz"))
            rows.append(
                {
                    "name": "openimages_startup",
                    "rows": label_rows,
                    "images": first["images"],
                    "first_s": first["seconds"],
                    "cached_s": cached["seconds"],
                    "speedup": round(first["seconds"] / cached["seconds"], 1),
                    "cache_mb": round(cache.stat().st_size / 2**20, 1),
                    "first": first["table"],
                    "cached": cached["table"],
                }
            )
            print(rows[-1], flush=True)
    write_report(args.out, "data_scale", machine_info(device), rows, images=args.images, rounds=args.rounds)
    return {"rows": rows}


if __name__ == "__main__":
    main()
