"""``ctran annotate export`` and ``ctran annotate retrain``: a library's answers as a dataset, and a model
fine-tuned on them that the library then opens with.

``register_export`` / ``register_retrain`` add each as a sub-command of the ``annotate`` group (or any
sub-parser set); ``add_*_arguments`` and ``run_*`` are the pieces, for a parser built elsewhere.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ctran.errors import CTranError


def _add_library_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("library", type=Path, metavar="DIR", help="the library folder (as ctran annotate)")
    parser.add_argument(
        "--db", type=Path, default=None, help="its answer store (default: DIR/.ctran/library.sqlite)"
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="the model to start from (default: the library's current one, the last retrain's)",
    )
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="answered images that validate instead of training, picked by a stable hash of their path so "
        "they stay on their side as the library grows (default: 0.1)",
    )


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``export``."""
    _add_library_arguments(parser)
    parser.add_argument("--out", type=Path, default=None, help="the dataset folder to write")
    parser.add_argument(
        "--format", default="csv", choices=("csv", "jsonl"), help="file format (default: csv)"
    )
    parser.add_argument(
        "--absolute-paths",
        action="store_true",
        help="image paths in the files are absolute (default: relative to --out, as the readers expect)",
    )
    parser.add_argument(
        "--sidecars",
        choices=("txt", "xmp"),
        default=None,
        help="also append each image's yes answers to its IMAGE.txt caption or XMP sidecar (ctran tag's "
        "writers, add mode: nothing already there is removed or repeated)",
    )
    parser.add_argument("--separator", default=",", help="the tag separator in .txt captions (default ',')")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides written into OUT/ctran.yaml, e.g. train.epochs=5",
    )


def add_retrain_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``retrain``."""
    _add_library_arguments(parser)
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="the new checkpoint (default: DIR/.ctran/retrain/N/ctran.pt, beside its export and run)",
    )
    parser.add_argument(
        "--epochs", type=int, default=None, help="training epochs (default: the checkpoint's recipe)"
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides of the checkpoint's recipe, e.g. train.lr=1e-4",
    )


def register_export(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "export",
        help="write a library's answers as a training dataset (and optionally into the sidecars)",
        description="Write the current answers (the last one per image and label) in the CSV or JSON-lines "
        "layout of your own data: train/val/test files (test repeats val), a yes as name, a no as -name, "
        "every label not answered left unknown (unlisted=unknown), labels.txt/extras.txt, and, with a "
        "checkpoint, ctran.yaml: its recipe fine-tuning it on the folder. With --sidecars, also append each "
        "image's yes answers to its caption or XMP sidecar.",
        epilog="examples:\n  ctran annotate export photos --out data/photos\n"
        "  ctran train --config data/photos/ctran.yaml --out runs/photos-2\n"
        "  ctran data check --format csv --root data/photos --option unlisted=unknown\n"
        "  ctran annotate export photos --sidecars txt",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_export_arguments(p)
    p.set_defaults(run=run_export)


def register_retrain(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "retrain",
        help="fine-tune the library's model on its answers and make the result its model",
        description="Export the answers into DIR/.ctran/retrain/N, fine-tune the checkpoint on them with "
        "its own recipe, the backbone at a tenth of its learning rate (labels matched by name: old labels "
        "keep their weights, labels added in the library start fresh; a label not answered on an image is "
        "never in the loss), keep the old "
        "thresholds where the validation answers are too few to recalibrate them, write the checkpoint "
        "atomically and record it as the library's current model.",
        epilog="example:\n  ctran annotate retrain photos --checkpoint runs/demo/ctran.pt --epochs 5",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_retrain_arguments(p)
    p.set_defaults(run=run_retrain)


def _open(args: argparse.Namespace):
    from ctran.annotation.library import Library

    return Library(args.library, db=args.db)


def run_export(args: argparse.Namespace) -> int:
    from ctran.annotation.export import export_answers, write_sidecars

    if args.out is None and args.sidecars is None:
        raise CTranError("nothing to do: give --out DIR (a dataset) and/or --sidecars txt|xmp")
    library = _open(args)
    try:
        if args.out is not None:
            checkpoint = args.checkpoint or library.store.current_checkpoint()
            summary = export_answers(
                library,
                args.out,
                format=args.format,
                val_fraction=args.val_fraction,
                checkpoint=checkpoint,
                absolute=args.absolute_paths,
                overrides=args.overrides,
            )
            print(
                f"wrote {summary.train} training and {summary.val} validation images "
                f"({summary.answers} answers) to {summary.folder}"
            )
            if summary.missing:
                print(
                    f"ctran: {len(summary.missing)} answered images are no longer in {library.root} and were "
                    f"left out (e.g. {summary.missing[0]})",
                    file=sys.stderr,
                )
            check = f"ctran data check --format {args.format} --root {args.out} --option unlisted=unknown"
            print(f"check: {check}")
            if summary.config is not None:
                print(f"train: ctran train --config {summary.config} --out RUN")
            else:
                print(
                    f"train: ctran train --config CONFIG --data {args.format} --data-root {args.out} "
                    "--init-from CHECKPOINT 'data.options={unlisted: unknown}' --out RUN"
                )
        if args.sidecars is not None:
            written = write_sidecars(library, args.sidecars, args.separator)
            print(
                f"sidecars: {written.tags_added} tags added to {written.files_written} {args.sidecars} files"
            )
            if written.contradicted:
                print(
                    f"ctran: {written.contradicted} tags in the files are answered 'no' in the library; "
                    "left as written (export never removes a tag)",
                    file=sys.stderr,
                )
            for problem in written.problems:
                print(f"ctran: {problem}", file=sys.stderr)
            return 1 if written.problems else 0
    finally:
        library.close()
    return 0


def run_retrain(args: argparse.Namespace) -> int:
    from ctran.annotation.learning import retrain

    if args.epochs is not None and args.epochs < 1:
        raise CTranError(f"--epochs must be a positive integer, got {args.epochs}")
    library = _open(args)
    try:
        result = retrain(
            library,
            args.checkpoint,
            args.out,
            epochs=args.epochs,
            val_fraction=args.val_fraction,
            overrides=args.overrides,
        )
    finally:
        library.close()
    counts = {kind: sum(v == kind for v in result.thresholds.values()) for kind in ("recalibrated", "kept")}
    new = ", ".join(result.new_labels) or "none"
    print(
        f"wrote {result.checkpoint} (best epoch {result.best_epoch}, val mAP {result.val_map:.2f}, "
        f"{result.seconds:.0f} s); new labels: {new}; thresholds: {counts['recalibrated']} recalibrated, "
        f"{counts['kept']} kept; the library now opens with it"
    )
    return 0
