"""A simulated annotator on the digit-scenes test set: how many answers until every prediction is right?

The annotator knows each scene's true target labels and answers whatever it is asked. After every answer the
model re-conditions on everything told so far (``Predictor.condition`` on the scene's cached features), and
the session ends once every label still unknown is predicted right (probability at or above the threshold
exactly for the present ones). What is measured is the mean number of answers per scene for each way of
choosing the next question:

- ``random``: the unknown target labels in a random order (a fixed permutation per scene);
- ``most uncertain``: ``Predictor.suggest(method="uncertainty")``, the label with the highest entropy;
- ``expected information``: ``Predictor.suggest(method="information")``, the label whose answer is expected to
  settle the most of the *other* labels' uncertainty;
- ``information + own``: the same scores plus the label's own entropy (the expected drop of the total
  uncertainty, the asked label included), from the same ``suggest`` call.

Then a person who never waits to be asked but corrects mistakes, the most confident mistake first: the
corrections needed until no mistake is left, with re-conditioning after each correction (a correction can
fix, or break, other labels) and without (each correction fixes exactly its own label: the initial number of
mistakes).

Writes ``benchmarks/results/annotator.json`` and ``.md``. Run (after ``make demo``, or
``ctran demo --out runs/demo``):
``PYTHONPATH=src .venv/bin/python benchmarks/annotator.py --checkpoint runs/demo/ctran.pt [--scenes 1000]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

import ctran
from common import RESULTS, machine_info
from ctran.checkpoint import read_checkpoint
from ctran.data.registry import build_dataset
from ctran.inference import Features, Predictor
from ctran.report import write_json
from ctran.training.loaders import eval_loader

ROOT = Path(__file__).resolve().parent.parent
STRATEGIES = ("random", "most uncertain", "expected information", "information + own")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--checkpoint",
        type=Path,
        action="append",
        help="digit-scenes checkpoints, repeatable (default: runs/demo/ctran.pt)",
    )
    p.add_argument("--scenes", type=int, default=1000, help="first N test scenes (default 1000; all: 4000)")
    p.add_argument("--threshold", type=float, default=0.5, help="probability cut (default 0.5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random order")
    p.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (default 1: small calls, a shared machine)"
    )
    p.add_argument("--out", type=Path, default=RESULTS / "annotator.json", help="JSON output")
    return p.parse_args(argv)


def subset(features: Features, rows: list[int]) -> Features:
    """The features of some images, in the given order."""
    return Features(
        features.tokens[rows],
        features.grid,
        [features.images[i] for i in rows],
        [features.sizes[i] for i in rows],
    )


class Session:
    """Every scene's truth and what it has been told; ``wrong`` re-conditions the scenes still open."""

    def __init__(self, predictor: Predictor, features: Features, truth: np.ndarray, threshold: float) -> None:
        self.predictor, self.features, self.truth, self.threshold = predictor, features, truth, threshold
        self.names = predictor.target_names
        self.known: list[dict[str, bool]] = [{} for _ in range(len(truth))]
        self.count = np.zeros(len(truth), dtype=int)

    def predictions(self, rows: list[int]) -> list[dict[str, float]]:
        """Probabilities of the unknown targets of each scene in ``rows``, given what it was told."""
        results = self.predictor.condition(subset(self.features, rows), [self.known[i] for i in rows])
        return [r.probs for r in results]

    def mistakes(self, row: int, probs: dict[str, float]) -> dict[str, float]:
        """Wrongly predicted unknown labels -> how confident the wrong answer is."""
        wrong = {}
        for name, p in probs.items():
            present = bool(self.truth[row, self.names.index(name)])
            if (p >= self.threshold) != present:
                wrong[name] = p if p >= self.threshold else 1 - p
        return wrong

    def tell(self, row: int, name: str) -> None:
        self.known[row][name] = bool(self.truth[row, self.names.index(name)])
        self.count[row] += 1


def questions(predictor: Predictor, features: Features, truth: np.ndarray, strategy: str, args) -> np.ndarray:
    """Answers each scene needed until every unknown target was predicted right, asking by ``strategy``."""
    session = Session(predictor, features, truth, args.threshold)
    rng = np.random.default_rng(args.seed)
    orders = [[str(n) for n in rng.permutation(session.names)] for _ in range(len(truth))]
    open_rows = list(range(len(truth)))
    while open_rows:
        probs = session.predictions(open_rows)
        open_rows = [i for i, p in zip(open_rows, probs, strict=True) if session.mistakes(i, p)]
        if not open_rows:
            break
        for row, label in zip(open_rows, next_labels(session, open_rows, orders, strategy), strict=True):
            session.tell(row, label)
    return session.count


def next_labels(session: Session, rows: list[int], orders: list[list[str]], strategy: str) -> list[str]:
    """The label each open scene is asked about next."""
    if strategy == "random":
        return [next(n for n in orders[i] if n not in session.known[i]) for i in rows]
    known = [session.known[i] for i in rows]
    features = subset(session.features, rows)
    if strategy == "most uncertain":
        return [s[0].label for s in session.predictor.suggest(features, known, k=1, method="uncertainty")]
    ranked = session.predictor.suggest(features, known, k=len(session.names))
    if strategy == "expected information":
        return [s[0].label for s in ranked]
    return [max(s, key=lambda x: x.information + x.uncertainty).label for s in ranked]


def corrections(
    predictor: Predictor, features: Features, truth: np.ndarray, args, recondition: bool
) -> np.ndarray:
    """Corrections each scene needed, the most confident mistake first, until no mistake was left."""
    session = Session(predictor, features, truth, args.threshold)
    if not recondition:
        probs = session.predictions(list(range(len(truth))))
        return np.array([len(session.mistakes(i, p)) for i, p in enumerate(probs)])
    open_rows = list(range(len(truth)))
    while open_rows:
        probs = session.predictions(open_rows)
        wrong = [session.mistakes(i, p) for i, p in zip(open_rows, probs, strict=True)]
        open_rows, wrong = [i for i, w in zip(open_rows, wrong, strict=True) if w], [w for w in wrong if w]
        for row, mistakes in zip(open_rows, wrong, strict=True):
            session.tell(row, max(mistakes, key=mistakes.get))
    return session.count


def summary(counts: np.ndarray, seconds: float) -> dict:
    return {
        "mean": round(float(counts.mean()), 3),
        "median": float(statistics.median(counts.tolist())),
        "none_needed": round(float((counts == 0).mean()), 4),
        "max": int(counts.max()),
        "seconds": round(seconds, 1),
    }


def evaluate_checkpoint(path: Path, args) -> dict:
    """Every strategy and both correction modes on one checkpoint."""
    predictor = ctran.load(path, batch_size=1024)
    seed = (read_checkpoint(path).get("config") or {}).get("seed", 0)
    test = build_dataset("digits", None, "test", seed=seed, size=args.scenes)
    images, truth = [], []
    for batch_images, targets, _, _ in eval_loader(test, 512):
        images.append(batch_images)
        truth.append(targets)
    features = predictor.encode(torch.cat(images), batch_size=512)
    truth = torch.cat(truth).numpy()
    result = {"checkpoint": str(path), "attention": predictor.model.attention, "scenes": len(truth)}
    result["questions"] = {}
    for strategy in STRATEGIES:
        start = time.perf_counter()
        counts = questions(predictor, features, truth, strategy, args)
        result["questions"][strategy] = summary(counts, time.perf_counter() - start)
        print(f"{path} {strategy}: {result['questions'][strategy]}", flush=True)
    result["corrections"] = {}
    for mode, recondition in (("with re-conditioning", True), ("without re-conditioning", False)):
        start = time.perf_counter()
        counts = corrections(predictor, features, truth, args, recondition)
        result["corrections"][mode] = summary(counts, time.perf_counter() - start)
        print(f"{path} corrections {mode}: {result['corrections'][mode]}", flush=True)
    return result


def render(results: list[dict], threshold: float) -> str:
    lines = [
        f"Answers until every remaining prediction is right (threshold {threshold:g}), mean per scene:",
        "",
        "| checkpoint | attention | scenes | " + " | ".join(STRATEGIES) + " |",
        "|---|---|---:|" + "---:|" * len(STRATEGIES),
    ]
    for r in results:
        cells = " | ".join(f"{r['questions'][s]['mean']:.2f}" for s in STRATEGIES)
        lines.append(f"| {r['checkpoint']} | {r['attention']} | {r['scenes']} | {cells} |")
    lines += [
        "",
        "Corrections by a person who fixes the most confident mistake first, mean per scene:",
        "",
        "| checkpoint | attention | with re-conditioning | without | scenes with no mistake |",
        "|---|---|---:|---:|---:|",
    ]
    for r in results:
        with_, without = r["corrections"]["with re-conditioning"], r["corrections"]["without re-conditioning"]
        lines.append(
            f"| {r['checkpoint']} | {r['attention']} | {with_['mean']:.2f} | {without['mean']:.2f} | "
            f"{without['none_needed']:.1%} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    checkpoints = args.checkpoint or [ROOT / "runs/demo/ctran.pt"]
    results = [evaluate_checkpoint(path, args) for path in checkpoints]
    table = render(results, args.threshold)
    print(table)
    write_json(
        args.out,
        {
            "benchmark": "annotator",
            "machine": machine_info(torch.device("cpu")),
            "threshold": args.threshold,
            "seed": args.seed,
            "results": results,
        },
    )
    args.out.with_suffix(".md").write_text(table)
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return {"results": results}


if __name__ == "__main__":
    main()
