"""What ``ctran tag`` gains from the tags a library already has, on real tags, told vs not told.

For each fraction F, every test image gets a caption with ``int(F * P)`` of its P true tags (seeded per
image), as a user's half-finished tagging would leave it. ``ctran tag --read txt`` (the tags told to the
model) and ``ctran tag --read none`` (what "predict, then append" taggers do) each write ``--jsonl``; both
are scored on exactly the same entries: the annotated labels of each image that its caption does not hold.

    python benchmarks/tag_known.py --checkpoint runs/emoji/best.pt --data-root data/emoji

Writes ``benchmarks/results/tag_known.json`` and ``.md`` (``--out`` elsewhere). The runs go through the
real command line (a subprocess each), so what is measured is what a user runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from ctran.data.registry import build_dataset
from ctran.metrics import mean_average_precision
from ctran.report import write_json

RESULTS = Path(__file__).resolve().parent / "results"


def build_library(dataset, folder: Path, fraction: float, seed: int) -> np.ndarray:
    """Links to the split's images with captions keeping ``int(F * P)`` true tags each; (N, T) told mask."""
    folder.mkdir(parents=True, exist_ok=True)
    targets = dataset.targets_matrix()  # (N, T)
    told = np.zeros(targets.shape, dtype=bool)
    names = dataset.target_names
    for i in range(len(dataset)):
        source = dataset.path(i).resolve()
        link = folder / f"{i:05d}{source.suffix}"
        if not link.exists():
            link.symlink_to(source)
        positives = np.flatnonzero(targets[i] == 1)
        rng = np.random.default_rng([seed, i])
        kept = rng.permutation(positives)[: int(fraction * len(positives))]
        told[i, kept] = True
        link.with_suffix(".txt").write_text(", ".join(names[j] for j in sorted(kept)), encoding="utf-8")
    return told


def run_tag(folder: Path, checkpoint: Path, jsonl: Path, read: str, state: Path, extra: list[str]) -> float:
    """``ctran tag`` over ``folder`` writing only ``jsonl``; returns its wall time."""
    command = [sys.executable, "-m", "ctran", "tag", str(folder), "--checkpoint", str(checkpoint)]
    command += ["--read", read, "--write", "none", "--jsonl", str(jsonl), "--state", str(state), "--force"]
    start = time.perf_counter()
    subprocess.run([*command, "--quiet", *extra], check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return time.perf_counter() - start


def probabilities(jsonl: Path, names: tuple[str, ...], count: int) -> np.ndarray:
    """(N, T) probabilities in image order (the linked files are named by index)."""
    probs = np.full((count, len(names)), np.nan)
    for line in jsonl.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        probs[int(Path(row["image"]).stem)] = [row["probs"][n] for n in names]
    return probs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument(
        "--data-root", type=Path, required=True, help="a csv-format dataset (ctran data emoji)"
    )
    parser.add_argument("--split", default="test")
    parser.add_argument("--fractions", default="0.25,0.5,0.75")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("runs/tag_known"), help="libraries and outputs")
    parser.add_argument("--out", type=Path, default=RESULTS / "tag_known")
    parser.add_argument("--tag-args", default="", help="more ctran tag options, e.g. '--batch-size 64'")
    args = parser.parse_args()

    dataset = build_dataset("csv", args.data_root, args.split)
    targets = dataset.targets_matrix()  # (N, T)
    names = dataset.target_names
    extra = args.tag_args.split()
    fractions = [float(f) for f in args.fractions.split(",")]
    untold_jsonl = args.work / "untold.jsonl"
    rows = []
    for fraction in fractions:
        folder = args.work / f"library_{fraction:g}"
        told_mask = build_library(dataset, folder, fraction, args.seed)
        if not rows:  # the images are the same in every library: one untold run serves all
            untold_seconds = run_tag(
                folder, args.checkpoint, untold_jsonl, "none", args.work / "state", extra
            )
            untold = probabilities(untold_jsonl, names, len(dataset))
        told_jsonl = args.work / f"told_{fraction:g}.jsonl"
        seconds = run_tag(folder, args.checkpoint, told_jsonl, "txt", args.work / "state", extra)
        told = probabilities(told_jsonl, names, len(dataset))
        scored = (targets != -1) & ~told_mask  # (N, T) the same entries for both
        rows.append(
            {
                "fraction": fraction,
                "images_told": int(told_mask.any(axis=1).sum()),
                "tags_told": int(told_mask.sum()),
                "entries_scored": int(scored.sum()),
                "mAP_told": mean_average_precision(told, targets.clip(0), scored),
                "mAP_untold": mean_average_precision(untold, targets.clip(0), scored),
                "seconds_told": round(seconds, 1),
            }
        )
        rows[-1]["gain"] = rows[-1]["mAP_told"] - rows[-1]["mAP_untold"]
        print(json.dumps(rows[-1]), flush=True)
    result = {
        "checkpoint": str(args.checkpoint),
        "data": f"{args.data_root} ({args.split}, {len(dataset)} images, {len(names)} tags)",
        "seed": args.seed,
        "regular_mAP": mean_average_precision(untold, targets.clip(0), targets != -1),
        "seconds_untold": round(untold_seconds, 1),
        "rows": rows,
    }
    write_json(args.out.with_suffix(".json"), result)
    args.out.with_suffix(".md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))


def markdown(result: dict) -> str:
    lines = [
        f"`ctran tag` told vs not told, {result['data']}; regular mAP {result['regular_mAP']:.1f}",
        "",
        "| tags kept | images told | tags told | entries scored | mAP, read none | mAP, read txt | gain |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['fraction']:.0%} | {row['images_told']} | {row['tags_told']} | {row['entries_scored']} "
            f"| {row['mAP_untold']:.1f} | {row['mAP_told']:.1f} | {row['gain']:+.1f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
