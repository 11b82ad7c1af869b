"""``ctran annotate export`` and ``ctran annotate retrain``: a library's answers as a dataset, and a model
fine-tuned on them that the library then opens with. ``ctran.cli.annotate`` puts their options in its
groups and calls ``run_export`` / ``run_retrain``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ctran.errors import CTranError


def add_export_options(group: argparse._ArgumentGroup) -> None:
    """Options of ``export`` (``--out`` is shared with ``retrain``, added by ``add_shared_options``)."""
    group.add_argument("--format", default="csv", choices=("csv", "jsonl"), help="file format (default: csv)")
    group.add_argument(
        "--absolute-paths",
        action="store_true",
        help="image paths in the files are absolute (default: relative to --out, as the readers expect)",
    )
    group.add_argument(
        "--sidecars",
        choices=("txt", "xmp"),
        default=None,
        help="also append each image's yes answers to its IMAGE.txt caption or XMP sidecar (ctran tag's "
        "writers, add mode: nothing already there is removed or repeated)",
    )
    group.add_argument("--separator", default=",", help="the tag separator in .txt captions (default ',')")


def add_retrain_options(group: argparse._ArgumentGroup) -> None:
    """Options of ``retrain``."""
    group.add_argument(
        "--epochs", type=int, default=None, help="training epochs (default: the checkpoint's recipe)"
    )


def add_shared_options(group: argparse._ArgumentGroup) -> None:
    """``--out`` and ``--val-fraction``, which mean the same for ``export`` and ``retrain``."""
    group.add_argument(
        "--out",
        type=Path,
        default=None,
        help="export: the dataset folder to write; retrain: the new checkpoint (default: "
        "DIR/.ctran/retrain/N/ctran.pt, beside its export and run)",
    )
    group.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="answered images that validate instead of training, picked by a stable hash of their path so "
        "they stay on their side as the library grows (default: 0.1)",
    )


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
