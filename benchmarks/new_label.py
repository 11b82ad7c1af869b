"""A new label learned from a library's answers (issue 24): its AP from 10 / 30 / 100 positive answers, and
what learning it costs the labels the model already had.

1. Digit scenes are written as PNG files: the ``--train`` scenes are the library, ``--val`` scenes validate
   the first model, ``--test`` scenes are held out for every score below.
2. The first model: ``configs/digits.yaml``'s model and recipe, trained by ``ctran train`` on the library
   with every label but ``--hold`` (default ``digit_7``) fully annotated (CSV; the held-out label is not in
   ``labels.txt``), ``--base-epochs`` epochs, never flipped (``data.flip=false``: a mirrored digit is
   another shape; the generated digit scenes are never flipped either).
3. For each K: a fresh answer store holds the old labels' tags on every library image (imported, as a
   tagged library's captions are), and ``--hold`` answered on images in a seeded random order until K of
   the answers are yes (the no answers met on the way are kept; on every other image the label stays
   unknown). ``ctran.annotation.learning.retrain``, the code of ``ctran annotate retrain``, fine-tunes the
   first model on the library for ``--epochs`` epochs. K = 0 is the control (a retrain that only adds
   epochs: what the old labels gain or lose without a new label), ``all`` the label answered everywhere.
4. Every model on the test scenes with nothing told: the held-out label's AP, and the old labels' mAP
   before and after (the drop is the cost; goal under 0.5 points).

Writes ``benchmarks/results/new_label.json`` and ``.md``. Run:
``OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/new_label.py [--quick]``.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import ctran
from common import RESULTS, machine_info
from ctran.annotation.learning import retrain
from ctran.annotation.library import Library
from ctran.config import load_config
from ctran.data.digit_scenes import CONTEXT_NAMES, DIGIT_NAMES, TAG_NAMES, generate_split
from ctran.metrics import average_precision
from ctran.report import write_json
from ctran.training.run import train_run

TARGETS = list(DIGIT_NAMES + TAG_NAMES)
SPLITS = ("train", "val", "test")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hold", default="digit_7", choices=TARGETS, help="the label the first model never sees")
    p.add_argument(
        "--positives",
        default="0,10,30,100,all",
        help="yes answers of the new label, comma-separated; 0: the control (a retrain that adds nothing but "
        "epochs); all: answered on every library image",
    )
    p.add_argument("--train", type=int, default=4000, help="library (training) scenes")
    p.add_argument("--val", type=int, default=500, help="validation scenes of the first model")
    p.add_argument("--test", type=int, default=1500, help="held-out test scenes")
    p.add_argument("--base-epochs", type=int, default=8, help="epochs of the first model")
    p.add_argument("--epochs", type=int, default=3, help="epochs of each retrain")
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config override of each retrain, repeatable (e.g. train.lr=1e-4)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=Path("runs/bench_new_label"), help="scratch folder")
    p.add_argument("--quick", action="store_true", help="a smoke run: tiny sizes, one epoch")
    p.add_argument("--out", type=Path, default=RESULTS / "new_label.json")
    args = p.parse_args(argv)
    if args.quick:
        args.train, args.val, args.test, args.base_epochs, args.epochs = 400, 100, 200, 1, 1
        args.positives = "10"
    return args


def write_scenes(folder: Path, args) -> dict[str, tuple[list[str], np.ndarray]]:
    """PNG files of the training scenes in ``folder/library/``, the others in ``folder/val|test/``; split ->
    (paths relative to ``folder``, (N, 16 + 4) truth)."""
    sizes = {"train": args.train, "val": args.val, "test": args.test}
    scenes = {}
    for split in SPLITS:
        data = generate_split(split, args.seed, sizes[split])
        subfolder = "library" if split == "train" else split
        (folder / subfolder).mkdir(parents=True, exist_ok=True)
        names = [f"{subfolder}/{i:05d}.png" for i in range(len(data))]
        for name, pixels in zip(names, data.images, strict=True):
            if not (folder / name).exists():
                Image.fromarray(pixels).convert("RGB").save(folder / name)
        scenes[split] = (names, np.concatenate([data.targets, data.extras], axis=1))
    return scenes


def first_model(folder: Path, scenes: dict, args) -> Path:
    """``ctran train`` on the library without the held-out label: the model a user starts from."""
    data = folder / "first_data"
    data.mkdir(exist_ok=True)
    old = [name for name in TARGETS if name != args.hold]
    names = TARGETS + list(CONTEXT_NAMES)
    for split, (images, truth) in scenes.items():
        with open(data / f"{split}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["image", "labels", "extra"])
            for image, row in zip(images, truth, strict=True):
                present = [n for n, v in zip(names, row, strict=True) if v and n != args.hold]
                labels = [n for n in present if n in old]
                extra = [n for n in present if n in CONTEXT_NAMES]
                writer.writerow([f"../{image}", ";".join(labels), ";".join(extra)])
    (data / "labels.txt").write_text("\n".join(old) + "\n")
    (data / "extras.txt").write_text("\n".join(CONTEXT_NAMES) + "\n")
    run = folder / "first_run"
    if not (run / "best.pt").exists():
        shutil.rmtree(run, ignore_errors=True)
        config = load_config(
            "digits",
            [
                "data.format=csv",
                f"data.root={data.resolve()}",
                "data.crop_sizes=[48]",
                "data.flip=false",
                f"train.epochs={args.base_epochs}",
                f"seed={args.seed}",
                "eval.known_fractions=[]",
                "eval.known_positives=[]",
                "eval.extra=false",
            ],
        )
        start = time.perf_counter()
        train_run(config, run, progress=False)
        print(f"first model: {time.perf_counter() - start:.0f} s", flush=True)
    return run / "best.pt"


def answered_library(folder: Path, scenes: dict, positives: int | None, args) -> tuple[Library, dict]:
    """The library with a fresh store: old labels imported on every image, the held-out label answered in a
    seeded random order until ``positives`` yes answers (None: on every image; 0: on none)."""
    images, truth = scenes["train"]
    names = TARGETS + list(CONTEXT_NAMES)
    db = folder / "stores" / f"k{positives or 'all'}.sqlite"
    for stale in db.parent.glob(f"{db.name}*"):
        stale.unlink()
    library = Library(folder / "library", db=db)
    old = [n for n in TARGETS if n != args.hold]
    library.store.add_labels(old)
    library.store.add_labels(CONTEXT_NAMES, kind="extra")
    library.store.add_labels([args.hold], trained=False)
    column = {n: i for i, n in enumerate(names)}
    library_ids = [image.removeprefix("library/") for image in images]
    imported = [
        (image, n, bool(row[column[n]])) for image, row in zip(library_ids, truth, strict=True) for n in old
    ]
    imported += [
        (image, n, bool(row[column[n]]))
        for image, row in zip(library_ids, truth, strict=True)
        for n in CONTEXT_NAMES
    ]
    library.store.answers(imported, "import", source="imported")
    order = np.random.default_rng(args.seed).permutation(len(images))
    answers, yes = [], 0
    for index in order:
        if positives is not None and yes == positives:
            break
        value = bool(truth[index, column[args.hold]])
        answers.append((library_ids[index], args.hold, value))
        yes += value
    library.store.answers(answers, "annotator")
    return library, {"positives": yes, "negatives": len(answers) - yes, "answered_images": len(answers)}


def scores(checkpoint: Path, folder: Path, scenes: dict, hold: str) -> dict:
    """Test AP of every target label the checkpoint has, nothing told; the old labels' mAP."""
    predictor = ctran.load(checkpoint, batch_size=256)
    images, truth = scenes["test"]
    results = predictor.predict([folder / image for image in images], threshold=0.5)
    own = [n for n in TARGETS if n in predictor.target_names]
    probs = torch.tensor([[r.probs[n] for n in own] for r in results])  # (N, T)
    labels = torch.from_numpy(truth[:, [TARGETS.index(n) for n in own]]).long()  # (N, T)
    ap = dict(zip(own, (average_precision(probs, labels) * 100).tolist(), strict=True))
    old = [n for n in own if n != hold]
    return {
        "old_mAP": round(float(np.mean([ap[n] for n in old])), 2),
        "new_AP": round(ap[hold], 2) if hold in ap else None,
        "AP": {n: round(v, 2) for n, v in ap.items()},
    }


def render(result: dict) -> str:
    base = result["first_model"]
    lines = [
        f"New label `{result['hold']}` learned by `retrain` from K yes answers ({result['sizes']['test']} "
        f"test scenes, nothing told; the first model's old-label mAP: {base['old_mAP']:.2f}; chance AP of "
        f"the new label: {result['chance_AP']:.2f}):",
        "",
        "| K yes answers | no answers met | new label AP | old labels mAP | change | retrain s |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        change = row["old_mAP"] - base["old_mAP"]
        lines.append(
            f"| {row['positives']} | {row['negatives']} | {row['new_AP']:.2f} | {row['old_mAP']:.2f} | "
            f"{change:+.2f} | {row['seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    folder = args.work
    folder.mkdir(parents=True, exist_ok=True)
    scenes = write_scenes(folder, args)
    base = first_model(folder, scenes, args)
    result = {
        "benchmark": "new_label",
        "machine": machine_info(torch.device("cpu")),
        "hold": args.hold,
        "sizes": {"train": args.train, "val": args.val, "test": args.test},
        "epochs": {"first": args.base_epochs, "retrain": args.epochs},
        "retrain_options": args.option,
        "first_model": scores(base, folder, scenes, args.hold),
        # the AP of a ranking that knows nothing: the label's share of the test scenes
        "chance_AP": round(float(scenes["test"][1][:, TARGETS.index(args.hold)].mean() * 100), 2),
        "rows": [],
    }
    print(f"first model: {result['first_model']['old_mAP']:.2f} old mAP", flush=True)
    for positives in (None if k == "all" else int(k) for k in args.positives.split(",")):
        library, counts = answered_library(folder, scenes, positives, args)
        overrides = ["data.flip=false", *args.option]
        start = time.perf_counter()
        trained = retrain(library, base, epochs=args.epochs, overrides=overrides)
        seconds = time.perf_counter() - start
        library.close()
        row = {**counts, **scores(trained.checkpoint, folder, scenes, args.hold), "seconds": round(seconds)}
        row["thresholds"] = trained.thresholds
        result["rows"].append(row)
        print(row, flush=True)
    table = render(result)
    print(table)
    write_json(args.out, result)
    args.out.with_suffix(".md").write_text(table)
    return result


if __name__ == "__main__":
    main()
