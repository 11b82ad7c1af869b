"""Data pipeline: decoded + augmented images/s of the dataset readers with 0, 1, 2 workers.

Readers: JPEG photos (640 x 480, like COCO's) read by ``ctran.data``'s CSV reader with the paper's training
augmentation, through ``ctran.training.loaders.train_loader`` (persistent workers; the first epoch, which
starts them, is not timed), at the reduced size of the training benchmark (224, from 256) and at the paper's
(576, from 640). The 224 rows are compared with the rate at which a training step consumes images
(``train_step_per_s``, from ``training.py``'s results): ``headroom`` > 1 means the loader keeps up.

There is no reference column: the readers decode with PIL as the official code does. (An earlier version
timed ``torchvision.io`` decoding against PIL; the package does not use it, so it is not benchmarked.)

Run: ``.venv/bin/python benchmarks/data_pipeline.py`` (see ``--help``).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from common import (
    RESULTS,
    base_parser,
    contract_row,
    machine_info,
    markdown_table,
    print_rows,
    setup,
    write_photo_dataset,
    write_report,
)
from ctran.data.registry import build_dataset
from ctran.training.distributed import DistContext
from ctran.training.loaders import train_loader

SIZES = {"r101_224": (224, 256), "paper_576": (576, 640)}


def loader_rate(folder: Path, size: tuple[int, int], workers: int, batch: int) -> tuple[float, int]:
    """Images/s of the second epoch of a training loader, and the number of images."""
    dataset = build_dataset("csv", folder, "test", train=True, image_size=size[0], scale_size=size[1])
    loader = train_loader(dataset, batch, seed=0, ctx=DistContext(), workers=workers)
    for _ in loader:  # starts the workers
        pass
    start = time.perf_counter()
    for _ in loader:
        pass
    return len(dataset) / (time.perf_counter() - start), len(dataset)


def consumption(args) -> dict[str, float]:
    """Images/s of the ResNet-101 224 training step, per precision, from ``training.py``'s results."""
    path = args.training_results
    if not path.is_file():
        return {}
    rows = json.loads(path.read_text())["rows"]
    return {r["variant"]: r["ours_per_s"] for r in rows if r["name"].startswith("train_r101_224")}


def loader_rows(args, folder: Path) -> list[dict]:
    """One row per (size, workers); the 224 rows also hold the training step's consumption rate."""
    rows = []
    train_rates = consumption(args)
    for name, size in SIZES.items():
        for workers in (0, 1, 2):
            rate, count = loader_rate(folder, size, workers, batch=16)
            details: dict = {"workers": workers, "image_size": size[0], "scale_size": size[1]}
            if name == "r101_224" and train_rates:
                details |= {f"train_step_per_s_{k}": v for k, v in train_rates.items()}
                details["headroom"] = round(rate / max(train_rates.values()), 1)
            rows.append(contract_row(f"data_{name}_w{workers}", count, [count / rate], None, **details))
            print_rows(rows[-1:])
    return rows


def main(argv: list[str] | None = None) -> dict:
    p = base_parser(__doc__, "data_pipeline")
    p.add_argument("--images", type=int, default=64, help="JPEG photos per epoch (default: 64)")
    p.add_argument(
        "--training-results",
        type=Path,
        default=RESULTS / "training.json",
        help="training.py's results, for the consumption rate (default: benchmarks/results/training.json)",
    )
    args = p.parse_args(argv)
    device = setup(args)
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_photo_dataset(Path(tmp) / "photos", 16 if args.quick else args.images, labels=80)
        rows = loader_rows(args, folder)
    print(markdown_table(rows))
    write_report(args.out, "data_pipeline", machine_info(device), rows)
    return {"rows": rows}


if __name__ == "__main__":
    main()
