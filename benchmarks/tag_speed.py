"""``ctran tag`` over a folder against the bare model forward on the same images and batch size.

The bare forward is the model alone on images decoded beforehand (backbone + one decode per batch): what
tagging would cost if decoding, tag files, the manifest and writing were free. ``ctran tag`` (the library
call the command makes, after the checkpoint is loaded) reads every image and caption, tells the model the
caption's tags, appends the new ones and records each batch. Goal: tag >= 90% of the bare forward's
images/s. Also: the same run told nothing (``--read none``): known tags should cost nothing (one forward
per image whatever the tags).

    python benchmarks/tag_speed.py --setting own-cpu    # EfficientNet-Lite0, 128 px, 60 labels
    python benchmarks/tag_speed.py --setting paper      # ResNet-101, 576 px, 80 labels

Photos: generated 1600 x 1200 JPEGs (``common.write_photo_dataset``), each captioned with 3 tags.
Rounds alternate the three runs (A B C, C B A, ...); medians and per-round ratios are reported. With
``--workers 0 --threads 1`` everything runs in this process on one thread and is timed by its CPU time,
which other jobs on a shared machine do not inflate: the ratio is then what decoding, tag files and writing
cost on top of the forward, in CPU time.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch

import ctran
from common import base_parser, clock_name, machine_info, setup, time_call, use_clock, write_photo_dataset
from ctran.checkpoint import save_checkpoint
from ctran.inference import load
from ctran.states import unknown_states
from ctran.tagging.options import TagOptions
from ctran.tagging.tagger import tag_library

SETTINGS = {
    "own-cpu": {
        "backbone": "tf_efficientnet_lite0",
        "dim": 256,
        "layers": 2,
        "labels": 60,
        "size": 128,
        "scale": 144,
    },
    "paper": {"backbone": "resnet101", "dim": 2048, "layers": 3, "labels": 80, "size": 576, "scale": 640},
}


def checkpoint(folder: Path, setting: dict) -> Path:
    """A C-Tran with random weights at the setting's size (speed does not depend on the weights)."""
    config = {
        "kind": "ctran",
        "num_labels": setting["labels"],
        "backbone": setting["backbone"],
        "pretrained": False,
        "dim": setting["dim"],
        "layers": setting["layers"],
        "heads": 4,
    }
    torch.manual_seed(0)
    model = ctran.model.build_from_config(config)
    path = folder / "model.pt"
    names = [f"label_{i}" for i in range(setting["labels"])]
    save_checkpoint(path, model, config, names, (), image_size=setting["size"], scale_size=setting["scale"])
    return path


def captions(folder: Path) -> None:
    """Each photo's ``.txt`` caption: its three tags from ``test.csv``."""
    for line in (folder / "test.csv").read_text().splitlines()[1:]:
        image, tags = line.split(",")
        (folder / image).with_suffix(".txt").write_text(tags.replace(";", ", "))


def main() -> None:
    parser = base_parser(__doc__.split("\n\n")[0], "tag_speed")
    parser.add_argument("--setting", choices=SETTINGS, default="own-cpu")
    parser.add_argument("--images", type=int, default=None, help="photos (default: 256 own-cpu, 24 paper)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    device = setup(args)
    if args.workers:  # decoding happens in other processes: only the wall clock sees it
        use_clock("wall", device)
    setting = SETTINGS[args.setting]
    count = args.images or (256 if args.setting == "own-cpu" else 24)
    work = Path(tempfile.mkdtemp(prefix="tag_speed_"))
    try:
        photos = write_photo_dataset(work / "photos", count, setting["labels"], size=(1600, 1200))
        captions(photos)
        predictor = load(checkpoint(work, setting), device, args.batch_size)
        paths = sorted(photos.glob("*.jpg"))
        pixels = [predictor.read(p)[0] for p in paths]  # decoded before the clock: the bare forward's input

        def bare() -> None:
            for start in range(0, count, args.batch_size):
                features = predictor.encode(torch.stack(pixels[start : start + args.batch_size]))
                states = unknown_states(len(features), len(predictor.label_names))
                predictor.target_probabilities(features, states)

        def tag(read: str) -> None:
            library = work / f"library_{read}"
            shutil.rmtree(library, ignore_errors=True)
            shutil.copytree(photos, library)
            options = TagOptions(reads=(read,), writes=("txt",), threshold=0.5, workers=args.workers)
            summary = tag_library(
                predictor, sorted(library.glob("*.jpg")), options, library / ".ctran", "bench"
            )
            assert summary.tagged == count, summary

        runs = {
            "bare forward": bare,
            "ctran tag": lambda: tag("txt"),
            "ctran tag, told nothing": lambda: tag("none"),
        }
        times = {name: [] for name in runs}
        bare()  # warm-up
        for round_ in range(args.rounds):
            for name in runs if round_ % 2 == 0 else reversed(list(runs)):
                times[name].append(time_call(runs[name], device))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    median = {name: sorted(t)[len(t) // 2] for name, t in times.items()}
    rows = []
    for name, seconds in median.items():
        ratios = [b / t for b, t in zip(times["bare forward"], times[name], strict=True)]
        rows.append(
            {
                "run": name,
                "images_per_s": round(count / seconds, 2),
                "of_bare": round(median["bare forward"] / seconds, 3),
                "of_bare_range": [round(min(ratios), 3), round(max(ratios), 3)],
            }
        )
    title = (
        f"ctran tag vs the bare forward, {args.setting} ({setting['backbone']}, {setting['size']} px, "
        f"{setting['labels']} labels), {count} photos 1600x1200, batch {args.batch_size}, "
        f"{args.workers} worker(s), {torch.get_num_threads()} torch thread(s), {args.rounds} rounds, "
        f"{clock_name()} clock"
    )
    lines = [title, "", "| run | images/s | of the bare forward (per-round range) |", "|---|---:|---:|"]
    for row in rows:
        low, high = row["of_bare_range"]
        lines.append(
            f"| {row['run']} | {row['images_per_s']:.1f} | {row['of_bare']:.0%} ({low:.0%}-{high:.0%}) |"
        )
    table = "\n".join(lines) + "\n"
    print(table)
    out = args.out.with_name(f"{args.out.stem}_{args.setting}")
    out.with_suffix(".md").write_text(table)
    from ctran.report import write_json

    write_json(out.with_suffix(".json"), {"machine": machine_info(device), "title": title, "rows": rows})


if __name__ == "__main__":
    main()
