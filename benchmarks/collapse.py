"""Do predictions collapse on a large dataset? The official tracker's C-Tran issue #15, on generated data.

The report (QData/C-Tran #15): trained on more than about 100,000 images, every image got almost the same
prediction (e.g. car 0.96, pedestrian 0.01, truck 0.48 for all of them), while on 3,000 images the
predictions differed. This trains ``ctran train``'s recipe on a generated set of 100,000 images
(``ctran data synth``: sparse annotations, about 10 annotated labels per image, hidden labels implied by
their group; ``ctran.data.synthetic``) and on its first 3,000 images, and reports on the same test images
how different the predictions of different images are:

- ``pred_std``: per label, the standard deviation of the predicted probability across the test images,
  averaged over labels (a collapsed model scores about 0);
- ``pred_std_annotated`` and ``truth_std``: the same over each label's annotated test entries only, for the
  predictions and for the truth (0/1), averaged over labels with at least two annotated entries; their
  ratio says how much of the truth's spread the predictions reproduce;
- ``flat_labels``: the fraction of labels whose prediction varies by less than 0.01 (std) across images;
- ``mAP`` (regular and with half of each image's annotations known), ``prior_mAP``: the mAP of a
  collapsed predictor (every image gets the training label frequencies), and the mAP of random scores:
  the floors a model that reads the pixels must clear.

Controls (``--runs small-shuffled,large-shuffled``): the same sets with the training labels permuted across
images, so that the pixels tell nothing about them (images and labels out of step, as a broken data
pipeline leaves them): what collapse looks like, and what causes it.

The generator's throughput (images written per second) is reported too. Both sets come from one seed:
the small set's training images are the large set's first 3,000 and the test images are the same ones.
Writes ``benchmarks/results/collapse.{json,md}``. Run (about 25 minutes on two shared CPU cores, the
controls 20 more): ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/collapse.py --data /tmp/collapse`` then
``... --data /tmp/collapse --runs small-shuffled,large-shuffled`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import RESULTS, machine_info, write_report
from ctran.checkpoint import load_checkpoint
from ctran.config import load_config
from ctran.data import tabular
from ctran.data.synthetic import training_config, write_synthetic
from ctran.metrics import mean_average_precision
from ctran.training.evaluation import Setting, collect_scores
from ctran.training.loaders import eval_loader
from ctran.training.run import build_datasets, train_run

# The recipe of the generated ctran.yaml, narrowed for two shared cores: width 32, no dropout (attention
# dropout takes the slow unfused attention kernel on CPU), in-process data loading.
RECIPE = ["model.dim=32", "model.dropout=0", "data.num_workers=0", "eval.known_fractions=[0.5]"]
FLAT = 0.01
RUNS = ("small", "large", "small-shuffled", "large-shuffled")


def spread(probs: np.ndarray, truth: np.ndarray) -> dict:
    """How different the predictions (N, L) of different images are, against the truth (N, L), {-1, 0, 1}."""
    pred_std = probs.std(axis=0)  # (L,)
    annotated = truth >= 0
    counts = annotated.sum(axis=0)
    usable = counts >= 2
    pred_ann, truth_ann = [], []
    for label in np.flatnonzero(usable):
        rows = annotated[:, label]
        pred_ann.append(probs[rows, label].std())
        truth_ann.append(truth[rows, label].astype(np.float64).std())
    pred_annotated, truth_std = float(np.mean(pred_ann)), float(np.mean(truth_ann))
    return {
        "pred_std": round(float(pred_std.mean()), 4),
        "pred_std_annotated": round(pred_annotated, 4),
        "truth_std": round(truth_std, 4),
        "std_ratio": round(pred_annotated / truth_std, 3),
        "flat_labels": round(float((pred_std < FLAT).mean()), 4),
        "labels_with_two_annotated": int(usable.sum()),
    }


def prior_map(train_truth: np.ndarray, truth: np.ndarray) -> float:
    """mAP (percent) of a collapsed predictor: every test image gets the training positive rates."""
    annotated = train_truth >= 0
    rate = (train_truth == 1).sum(0) / np.maximum(annotated.sum(0), 1)  # (L,)
    constant = np.broadcast_to(rate, truth.shape).astype(np.float32)
    return mean_average_precision(constant, truth, truth >= 0)


def chance_map(truth: np.ndarray, seed: int, draws: int = 5) -> float:
    """mAP (percent) of random scores, averaged over ``draws``: above the prior's on labels with few
    annotated entries (a random ranking beats a tie now and then), so the floor a model must clear."""
    rng = np.random.default_rng(seed)
    maps = [mean_average_precision(rng.random(truth.shape), truth, truth >= 0) for _ in range(draws)]
    return float(np.mean(maps))


def run(root: Path, name: str, epochs: int, seed: int, work: Path) -> dict:
    """Train on the set in ``root``; the spread of the best checkpoint's test predictions, mAP, time."""
    config = load_config(root / "ctran.yaml", [*RECIPE, f"train.epochs={epochs}", f"seed={seed}"])
    out = work / name
    start = time.perf_counter()
    metrics = train_run(config, out, progress=False)
    seconds = time.perf_counter() - start
    model, _ = load_checkpoint(out / "best.pt")
    datasets = build_datasets(config)
    test = datasets["test"]
    scores = collect_scores(model, eval_loader(test, config.eval.batch_size), [Setting()], seed)
    probs, truth, _, _ = scores[Setting()]
    train_truth = datasets["train"].target_table.dense()
    return {
        "name": name,
        "train_images": len(datasets["train"]),
        "epochs": epochs,
        "images_seen": len(datasets["train"]) * epochs,
        "labels": truth.shape[1],
        "test_images": truth.shape[0],
        "mAP": round(metrics["mAP"], 2),
        "mAP_half_known": round(metrics["settings"]["partial"]["0.5"]["mAP"], 2),
        "prior_mAP": round(prior_map(train_truth, truth.numpy()), 2),
        **spread(probs.numpy(), truth.numpy()),
        "best_epoch": metrics["best_epoch"],
        "train_seconds": round(seconds, 1),
    }


def kept_rows(out: Path, runs: list[str], args: argparse.Namespace) -> list[dict]:
    """Rows of an earlier invocation with the same settings, for the runs not repeated now."""
    if not out.exists():
        return []
    old = json.loads(out.read_text())
    if old.get("settings") != settings(args):
        return []
    return [row for row in old["rows"] if row["name"] not in runs]


def settings(args: argparse.Namespace) -> dict:
    keys = ("images", "small", "labels", "val", "test", "epochs_large", "epochs_small", "seed")
    return {key: getattr(args, key) for key in keys}


def shuffled_copy(source: Path, root: Path, seed: int) -> Path:
    """The set with its training labels permuted across images (val and test untouched): the pixels no
    longer tell anything about the training labels, as when images and labels get out of step."""
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    (root / "images").symlink_to((source / "images").resolve())
    for name in ("labels.txt", "val.csv", "test.csv"):
        shutil.copy(source / name, root / name)
    with open(source / "train.csv", newline="") as handle:
        header, *rows = list(csv.reader(handle))
    labels = [row[1] for row in rows]
    order = np.random.default_rng(seed).permutation(len(rows))
    with open(root / "train.csv", "w", newline="") as handle:
        csv.writer(handle, lineterminator="\n").writerows(
            [header] + [[row[0], labels[i]] for row, i in zip(rows, order, strict=True)]
        )
    (root / "ctran.yaml").write_text(training_config(root, 32))
    return root


def generate(root: Path, images: int, args: argparse.Namespace) -> dict:
    """Write the set (or reuse the one a previous ``--data`` run wrote with the same parameters)."""
    wanted = {"train": images, "val": args.val, "test": args.test}
    if (root / "synthetic.json").exists():
        summary = json.loads((root / "synthetic.json").read_text())["summary"]
        if summary["images"] == wanted and summary["labels"] == args.labels and summary["seed"] == args.seed:
            return summary
    return write_synthetic(
        root, images, args.labels, val_images=args.val, test_images=args.test, seed=args.seed,
        workers=args.workers,
    )  # fmt: skip


def markdown(rows: list[dict], generator: dict, chance: float) -> str:
    lines = [
        "| run | training images x epochs | labels | test images | mAP | mAP, half known | prior mAP "
        "| pred std | pred std (annotated) | truth std (annotated) | ratio | flat labels | minutes |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['train_images']:,} x {r['epochs']} | {r['labels']} | {r['test_images']:,} "
            f"| {r['mAP']:.1f} | {r['mAP_half_known']:.1f} | {r['prior_mAP']:.1f} | {r['pred_std']:.3f} "
            f"| {r['pred_std_annotated']:.3f} | {r['truth_std']:.3f} | {r['std_ratio']:.2f} "
            f"| {100 * r['flat_labels']:.1f}% | {r['train_seconds'] / 60:.1f} |"
        )
    lines.append("")
    lines.append(f"Random scores on the same test entries: mAP {chance:.1f} (mean of 5 draws).")
    lines.append("")
    lines.append(
        f"Generator: {generator['images']:,} images of {generator['image_size']} px written in "
        f"{generator['seconds']:.0f} s, **{generator['images_per_s']:.0f} images/s** "
        f"({generator['workers']} process(es))."
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000, help="training images of the large set")
    parser.add_argument("--small", type=int, default=3_000, help="training images of the small set")
    parser.add_argument("--labels", type=int, default=100)
    parser.add_argument("--val", type=int, default=2_000)
    parser.add_argument("--test", type=int, default=5_000)
    parser.add_argument("--epochs-large", type=int, default=1)
    parser.add_argument("--epochs-small", type=int, default=10)
    parser.add_argument("--workers", type=int, default=1, help="processes writing images")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=None, help="keep the generated sets here")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 3,000 vs 600 images, 1 epoch")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--runs",
        default="small,large",
        help=f"comma-separated, from {', '.join(RUNS)}; rows of other runs already in the JSON are kept "
        '(--runs "" rewrites the report from them)',
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.images, args.small, args.val, args.test, args.epochs_small = 3000, 600, 200, 500, 1
    out = args.out or RESULTS / ("collapse_quick.json" if args.quick else "collapse.json")
    runs = [name for name in args.runs.split(",") if name]
    unknown = sorted(set(runs) - set(RUNS))
    if unknown:
        parser.error(f"--runs: unknown {unknown[0]!r} (choose from {', '.join(RUNS)})")
    sizes = {"small": (args.small, args.epochs_small), "large": (args.images, args.epochs_large)}
    rows = [] if args.quick else kept_rows(out, runs, args)
    with tempfile.TemporaryDirectory() as scratch:
        data = args.data or Path(scratch) / "data"
        generated = {}
        for name, (images, _) in sizes.items():
            generated[name] = generate(data / name, images, args)
            print(
                f"{name}: {generated[name]['images']} ({generated[name]['images_per_s']} img/s)", flush=True
            )
        for name in runs:
            size, shuffled = name.removesuffix("-shuffled"), name.endswith("-shuffled")
            root = shuffled_copy(data / size, data / name, args.seed) if shuffled else data / size
            rows.append(run(root, name, sizes[size][1], args.seed, Path(scratch)))
            print(rows[-1], flush=True)
        test_truth = tabular.load(data / "large", "test", unlisted="unknown").target_table.dense()
        chance = round(chance_map(test_truth, args.seed), 2)
    rows.sort(key=lambda row: RUNS.index(row["name"]))
    large = generated["large"]
    generator = {
        "images": sum(large["images"].values()),
        "image_size": large["image_size"],
        "seconds": large["seconds"],
        "images_per_s": large["images_per_s"],
        "workers": args.workers,
    }
    table = markdown(rows, generator, chance)
    print(table)
    write_report(
        out, "collapse", machine_info(torch.device("cpu")), rows,
        generator=generator, chance_mAP=chance, recipe=RECIPE, settings=settings(args),
    )  # fmt: skip
    out.with_suffix(".md").write_text(table + "\n")


if __name__ == "__main__":
    main()
