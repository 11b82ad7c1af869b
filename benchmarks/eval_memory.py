"""Peak resident memory of evaluation at many images x many labels (issue 21, finding 4).

Each case runs ``ctran.training.evaluation.evaluate`` (the real path: ``collect_scores``, the known sets of
``evaluation_states``, the scored masks and every metric of ``ctran.metrics``, with per-label AP) in the four
standard settings (regular + 25/50/75 % known) in a fresh process, and reads that process's peak resident
set (``ru_maxrss``, which counts every page the process touched, file-backed ones included). What is fake is
only what would hide evaluation's own memory and time: the images are one number (their index), and the
model's ``encode``/``decode`` compute deterministic logits from the image index, the label and the states
the model is told, so the backbone neither dominates nor costs time. The truth is drawn per image from its
index (every label annotated, 3 % positive), never held by the dataset.

``--src`` runs a case on another checkout's sources (``--src ../main/src``: the code before the change), so
the same script measures both; the metrics of both are compared where both ran (they must agree: only
memory changed). ``baseline MB`` is the peak before evaluation (interpreter, torch, the fake data);
``added MB`` is what evaluation added on top of it.

Run (about 15 minutes on two cores; the old code at 20,000 x 1,000 needs about 8 GB free)::

    python benchmarks/eval_memory.py --old-src ../main/src
    python benchmarks/eval_memory.py --quick  # 2,000 x 500 only, new code
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SRC = Path(__file__).resolve().parents[1] / "src"
FRACTIONS = (0.25, 0.5, 0.75)
POSITIVE_RATE = 0.03


def _peak_mb() -> float:
    """This process's peak resident set so far, in MB (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(images: int, labels: int, batch_size: int) -> dict:
    """One evaluation in this (fresh) process; returns its peak memory, time and regular/partial mAPs."""
    import numpy as np
    import torch
    from torch.utils.data import Dataset

    from ctran.training.evaluation import evaluate, standard_settings
    from ctran.training.loaders import eval_loader

    torch.set_num_threads(1)

    class FakeImages(Dataset):
        """Image i is the number i; its truth (every label annotated) is drawn from i."""

        def __init__(self) -> None:
            self.target_names, self.extra_names = [f"label{j}" for j in range(labels)], []

        def __len__(self) -> int:
            return images

        def __getitem__(self, index: int):
            truth = np.random.default_rng(index).random(labels) < POSITIVE_RATE
            return (
                torch.tensor([float(index)]),
                torch.from_numpy(truth.astype(np.int64)),
                torch.zeros(0),
                index,
            )

    class FakeModel(torch.nn.Module):
        """Deterministic logits from (image index, label, state): no backbone, the evaluation path is real."""

        takes_states = True

        def __init__(self) -> None:
            super().__init__()
            self.frequency = torch.linspace(0.1, 3.0, labels)  # (L,)

        def encode(self, images: torch.Tensor) -> torch.Tensor:
            return images  # (B, 1): the image index

        def decode(self, tokens: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
            return 3 * torch.sin(tokens * self.frequency) - 2 + states.float()  # (B, L)

    loader = eval_loader(FakeImages(), batch_size)
    baseline = _peak_mb()
    start = time.perf_counter()
    results = evaluate(FakeModel(), loader, standard_settings(FRACTIONS, extra=False), seed=0)
    seconds = time.perf_counter() - start
    maps = {"regular": results["regular"]["mAP"]}
    maps.update({f"partial_{f}": m["mAP"] for f, m in results["partial"].items()})
    return {"peak_mb": _peak_mb(), "baseline_mb": baseline, "seconds": seconds, "mAP": maps}


def run_case(images: int, labels: int, src: Path, batch_size: int) -> dict:
    """``_child`` in a fresh interpreter on ``src``'s ctran; its JSON line, or why it failed."""
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    argv = [sys.executable, __file__, "--child", str(images), str(labels), "--batch-size", str(batch_size)]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _row(images: int, labels: int, code: str, measured: dict) -> dict:
    row = {"images": images, "labels": labels, "entries": images * labels, "code": code, "how": "measured"}
    return row | measured


def old_estimate(rows: list[dict], images: int, labels: int) -> dict | None:
    """The old code's peak at a size it cannot run at: a straight line through its measured (entries, peak)
    points (its memory is a fixed start plus bytes per entry), marked as an estimate."""
    points = sorted((r["entries"], r["peak_mb"]) for r in rows if r["code"] == "old" and "peak_mb" in r)
    if len(points) < 2:
        return None
    (x0, y0), (x1, y1) = points[0], points[-1]
    per_entry = (y1 - y0) / (x1 - x0)
    entries = images * labels
    row = _row(images, labels, "old", {"peak_mb": y0 + per_entry * (entries - x0)})
    row.update(how=f"estimate: {per_entry * 2**20:.1f} bytes per entry from the measured old rows")
    return row


def markdown(rows: list[dict]) -> str:
    lines = [
        "| images x labels | code | how | peak MB | baseline MB | added MB | seconds | regular mAP "
        "| partial 50% mAP |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['images']:,} x {r['labels']:,} | {r['code']} | failed: {r['error']} |||||||")
            continue
        base = r.get("baseline_mb")
        cells = [
            f"{r['images']:,} x {r['labels']:,}",
            r["code"],
            r["how"],
            f"{r['peak_mb']:,.0f}",
            f"{base:,.0f}" if base else "n/a",
            f"{r['peak_mb'] - base:,.0f}" if base else "n/a",
            f"{r['seconds']:.0f}" if "seconds" in r else "n/a",
            f"{r['mAP']['regular']:.4f}" if "mAP" in r else "n/a",
            f"{r['mAP']['partial_0.5']:.4f}" if "mAP" in r else "n/a",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--child", nargs=2, type=int, metavar=("IMAGES", "LABELS"), help=argparse.SUPPRESS)
    p.add_argument("--batch-size", type=int, default=256, help="images per evaluation batch (default: 256)")
    p.add_argument(
        "--old-src", type=Path, default=None, help="the sources before the change, e.g. ../main/src"
    )
    p.add_argument("--old-sizes", default="5000x1000,10000x1000,20000x1000", help="sizes the old code runs")
    p.add_argument("--sizes", default="20000x1000,40000x10000", help="sizes the new code runs")
    p.add_argument("--quick", action="store_true", help="2,000 x 500 only")
    p.add_argument("--out", type=Path, default=RESULTS / "eval_memory.json")
    args = p.parse_args()
    if args.child:
        print(json.dumps(_child(*args.child, args.batch_size)))
        return 0

    def sizes(text: str) -> list[tuple[int, int]]:
        return [tuple(int(v) for v in size.split("x")) for size in text.split(",") if size]

    new_sizes = [(2000, 500)] if args.quick else sizes(args.sizes)
    old_sizes = [] if args.quick or args.old_src is None else sizes(args.old_sizes)
    rows = []
    for code, src, cases in (("old", args.old_src, old_sizes), ("new", SRC, new_sizes)):
        for images, labels in cases:
            row = _row(images, labels, code, run_case(images, labels, src, args.batch_size))
            rows.append(row)
            print(json.dumps(row), flush=True)
    for images, labels in new_sizes:
        if not any(r["code"] == "old" and r["entries"] == images * labels for r in rows):
            estimate = old_estimate(rows, images, labels)
            rows += [estimate] if estimate else []
    rows.sort(key=lambda r: (r["entries"], r["code"] != "old"))
    for r in rows:  # the metrics must not depend on the code: only memory changed
        twin = [o for o in rows if o is not r and o["entries"] == r["entries"] and "mAP" in o]
        if "mAP" in r and twin:
            r["same_mAP_as_other_code"] = all(abs(r["mAP"][k] - twin[0]["mAP"][k]) < 1e-9 for k in r["mAP"])

    sys.path.insert(0, str(SRC))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import torch

    from common import machine_info, write_report  # after the path: this folder's helpers, these sources

    write_report(args.out, "eval_memory", machine_info(torch.device("cpu")), rows)
    table = markdown(rows)
    args.out.with_suffix(".md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
