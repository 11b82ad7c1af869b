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

The loop closed (issue 24, ``--retrain K,...``): the annotator first works through a library, the first K
validation scenes written as PNG files, asking the most uncertain label first with re-conditioning; the
labels it was asked are its answers, and, once every remaining prediction is right, those are accepted
(the page's "accept the rest"), so each finished scene is fully labelled. ``retrain`` (the code of ``ctran
annotate retrain``) fine-tunes the checkpoint on that library, and the test scenes are annotated again with
the retrained model. A checkpoint that lacks some target labels (a model trained before they were added,
``benchmarks/new_label.py``'s first model) has them asked on every scene: one answer each, counted in
every column, until a retrain has learned them from the library's answers.

Writes ``benchmarks/results/annotator.json`` and ``.md``. Run (after ``make demo``, or
``ctran demo --out runs/demo``):
``PYTHONPATH=src .venv/bin/python benchmarks/annotator.py --checkpoint runs/demo/ctran.pt [--scenes 1000]``;
the loop closed: ``... --strategies "most uncertain" --retrain 200,1000``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import ctran
from common import RESULTS, machine_info
from ctran.annotation.learning import retrain
from ctran.annotation.library import Library
from ctran.checkpoint import read_checkpoint
from ctran.data.digit_scenes import CONTEXT_NAMES, DIGIT_NAMES, TAG_NAMES, generate_split
from ctran.data.registry import build_dataset
from ctran.inference import Features, Predictor
from ctran.metrics import average_precision, mean_ap_percent
from ctran.report import write_json
from ctran.training.loaders import eval_loader

ROOT = Path(__file__).resolve().parent.parent
STRATEGIES = ("random", "most uncertain", "expected information", "information + own")
TARGETS = list(DIGIT_NAMES + TAG_NAMES)
LOOP_STRATEGY = "most uncertain"  # how the annotator works through the library before a retrain


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
    p.add_argument(
        "--strategies",
        default=",".join(STRATEGIES),
        help="comma-separated question strategies to run (default: all; 'expected information' is slow)",
    )
    p.add_argument(
        "--retrain",
        default="",
        metavar="K,...",
        help="the loop closed: retrain on the answers to the first K validation scenes, then annotate again",
    )
    p.add_argument("--retrain-epochs", type=int, default=3, help="epochs of each retrain (default 3)")
    p.add_argument(
        "--retrain-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config override of each retrain, repeatable (e.g. train.lr=1e-4)",
    )
    p.add_argument(
        "--work", type=Path, default=ROOT / "runs/bench_annotator", help="library and retrain scratch folder"
    )
    p.add_argument("--out", type=Path, default=RESULTS / "annotator.json", help="JSON output")
    args = p.parse_args(argv)
    args.strategies = [name.strip() for name in args.strategies.split(",") if name.strip()]
    unknown = sorted(set(args.strategies) - set(STRATEGIES))
    if unknown:
        p.error(f"unknown strategy {unknown[0]!r}; expected some of {', '.join(STRATEGIES)}")
    args.retrain = [int(k) for k in args.retrain.split(",") if k.strip()]
    return args


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


def questions(predictor: Predictor, features: Features, truth: np.ndarray, strategy: str, args) -> Session:
    """Ask each scene by ``strategy`` until every unknown target is predicted right; the session holds the
    answers each scene needed (``count``) and what it was told (``known``)."""
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
    return session


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


def scenes(split: str, seed: int, size: int) -> tuple[torch.Tensor, np.ndarray]:
    """The first ``size`` digit scenes of a split: (N, 3, 48, 48) model inputs, (N, 16) targets."""
    data = build_dataset("digits", None, split, seed=seed, size=size)
    images, truth = [], []
    for batch_images, targets, _, _ in eval_loader(data, 512):
        images.append(batch_images)
        truth.append(targets)
    return torch.cat(images), torch.cat(truth).numpy()


def own_truth(predictor: Predictor, truth: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """The truth of the predictor's target labels in its order, and the digit-scene targets it lacks."""
    columns = [TARGETS.index(name) for name in predictor.target_names]
    return truth[:, columns], [name for name in TARGETS if name not in predictor.target_names]


def annotate(predictor: Predictor, images: torch.Tensor, truth: np.ndarray, strategies, args) -> dict:
    """Answers per scene for each strategy and both correction modes; labels the model lacks are asked on
    every scene (one answer each)."""
    features = predictor.encode(images, batch_size=512)
    truth, missing = own_truth(predictor, truth)
    untold = predictor.condition(features)  # nothing told: the model's test mAP over its own labels
    probs = torch.tensor([[r.probs[name] for name in predictor.target_names] for r in untold])  # (N, T)
    test_map = mean_ap_percent(average_precision(probs, torch.from_numpy(truth).long()))
    result = {"missing_labels": missing, "mAP": round(test_map, 2), "questions": {}, "corrections": {}}
    for strategy in strategies:
        start = time.perf_counter()
        counts = questions(predictor, features, truth, strategy, args).count + len(missing)
        result["questions"][strategy] = summary(counts, time.perf_counter() - start)
        print(f"{strategy}: {result['questions'][strategy]}", flush=True)
    for mode, recondition in (("with re-conditioning", True), ("without re-conditioning", False)):
        start = time.perf_counter()
        counts = corrections(predictor, features, truth, args, recondition) + len(missing)
        result["corrections"][mode] = summary(counts, time.perf_counter() - start)
        print(f"corrections {mode}: {result['corrections'][mode]}", flush=True)
    return result


def evaluate_checkpoint(path: Path, args) -> dict:
    """Every strategy and both correction modes on one checkpoint; then, for each ``--retrain`` K, the same
    after retraining it on a library of K annotated scenes."""
    predictor = ctran.load(path, batch_size=1024)
    seed = (read_checkpoint(path).get("config") or {}).get("seed", 0)
    images, truth = scenes("test", seed, args.scenes)
    print(f"{path}:", flush=True)
    result = {"checkpoint": str(path), "attention": predictor.model.attention, "scenes": len(truth)}
    result.update(annotate(predictor, images, truth, args.strategies, args))
    result["retrained"] = {}
    for k in args.retrain:
        trained, spent = closed_loop(path, predictor, seed, k, args)
        print(f"{path} retrained on {k} scenes:", flush=True)
        after = annotate(ctran.load(trained, batch_size=1024), images, truth, [LOOP_STRATEGY], args)
        result["retrained"][str(k)] = {"library": spent, **after}
    return result


def closed_loop(path: Path, predictor: Predictor, seed: int, k: int, args) -> tuple[Path, dict]:
    """Annotate the first ``k`` validation scenes as a library (asked by ``LOOP_STRATEGY``, the rest of each
    finished scene accepted), retrain ``path`` on it; the new checkpoint and what annotating cost."""
    images, truth = scenes("val", seed, k)
    own, missing = own_truth(predictor, truth)
    start = time.perf_counter()
    session = questions(predictor, predictor.encode(images, batch_size=512), own, LOOP_STRATEGY, args)
    folder = args.work / f"library-seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"{i:05d}.png" for i in range(k)]
    for name, scene in zip(names, scenes_pixels(seed, k), strict=True):
        if not (folder / name).exists():
            Image.fromarray(scene).convert("RGB").save(folder / name)
    store = args.work / "stores" / f"{path.parent.name}-{path.stem}-k{k}.sqlite"
    for stale in store.parent.glob(f"{store.name}*"):
        stale.unlink()
    library = Library(folder, db=store)
    library.store.add_labels(predictor.target_names)
    library.store.add_labels(missing, trained=False)
    library.store.add_labels(CONTEXT_NAMES, kind="extra")
    told, accepted = [], []
    for row, name in enumerate(names):
        told += [(name, label, value) for label, value in session.known[row].items()]
        told += [(name, label, bool(truth[row, TARGETS.index(label)])) for label in missing]
        # the session ended with every remaining prediction right: accepting them accepts the truth
        accepted += [
            (name, label, bool(own[row, i]))
            for i, label in enumerate(predictor.target_names)
            if label not in session.known[row]
        ]
    library.store.answers(told, "annotator")
    library.store.answers(accepted, "annotator", source="accepted")
    spent = {
        "scenes": k,
        "answers_per_scene": round(float(session.count.mean() + len(missing)), 3),
        "annotate_seconds": round(time.perf_counter() - start, 1),
    }
    start = time.perf_counter()
    overrides = ["data.flip=false", *args.retrain_option]
    result = retrain(library, path, epochs=args.retrain_epochs, overrides=overrides)
    library.close()
    spent.update(retrain_seconds=round(time.perf_counter() - start, 1), best_epoch=result.best_epoch)
    return result.checkpoint, spent


def scenes_pixels(seed: int, size: int) -> np.ndarray:
    """(N, 48, 48) uint8: the first ``size`` validation scenes as the library's files hold them."""
    return generate_split("val", seed, size).images


def render(results: list[dict], args) -> str:
    strategies = args.strategies
    lines = [
        f"Answers until every remaining prediction is right (threshold {args.threshold:g}), mean per scene:",
        "",
        "| checkpoint | attention | scenes | " + " | ".join(strategies) + " |",
        "|---|---|---:|" + "---:|" * len(strategies),
    ]
    for r in results:
        cells = " | ".join(f"{r['questions'][s]['mean']:.2f}" for s in strategies)
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
    if any(r["retrained"] for r in results):
        lines += ["", *loop_table(results, args)]
    return "\n".join(lines) + "\n"


def loop_table(results: list[dict], args) -> list[str]:
    """(a) checklist, (b) accept/reject, (c) "Ask next" + re-conditioning, (d) (c) after a retrain."""
    lines = [
        f"The loop closed: answers per test scene before and after `retrain` ({args.retrain_epochs} epochs) "
        "on the first K validation scenes, annotated (c) with the rest of each scene accepted:",
        "",
        "| checkpoint | test mAP | (a) checklist | (b) fix mistakes, no conditioning | "
        "(c) ask most uncertain | (c) fix mistakes, re-conditioned | K | test mAP after | "
        "(d) ask most uncertain | (d) fix mistakes, re-conditioned | library answers per scene | retrain s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        before = (
            f"{r['mAP']:.2f} | {len(TARGETS)} | {r['corrections']['without re-conditioning']['mean']:.2f} | "
            f"{r['questions'][LOOP_STRATEGY]['mean']:.2f} | "
            f"{r['corrections']['with re-conditioning']['mean']:.2f}"
        )
        for k, after in r["retrained"].items():
            lines.append(
                f"| {r['checkpoint']} | {before} | {k} | {after['mAP']:.2f} | "
                f"{after['questions'][LOOP_STRATEGY]['mean']:.2f} | "
                f"{after['corrections']['with re-conditioning']['mean']:.2f} | "
                f"{after['library']['answers_per_scene']:.2f} | {after['library']['retrain_seconds']:.0f} |"
            )
    return lines


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    checkpoints = args.checkpoint or [ROOT / "runs/demo/ctran.pt"]
    results = [evaluate_checkpoint(path, args) for path in checkpoints]
    table = render(results, args)
    print(table)
    write_json(
        args.out,
        {
            "benchmark": "annotator",
            "machine": machine_info(torch.device("cpu")),
            "threshold": args.threshold,
            "seed": args.seed,
            "retrain_epochs": args.retrain_epochs,
            "retrain_options": args.retrain_option,
            "results": results,
        },
    )
    args.out.with_suffix(".md").write_text(table)
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return {"results": results}


if __name__ == "__main__":
    main()
