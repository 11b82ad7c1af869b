"""``ctran evaluate``: metrics of a checkpoint in one inference setting."""

from __future__ import annotations

import argparse
from pathlib import Path

from ctran.cli.args import positive
from ctran.errors import CTranError

FORMATS = ("digits", "voc", "coco", "vg500", "nuswide", "cub", "openimages", "csv", "jsonl")


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "evaluate",
        help="evaluate a checkpoint on a dataset (regular, partial or extra-label inference)",
        description="Evaluate a checkpoint. With neither --known nor --extra: regular inference. "
        "--known P reveals a fraction P of the target labels per image (the same labels for every run and "
        "model); --extra reveals every extra label. Metrics are in percent, over the labels left unknown.",
    )
    p.add_argument("--checkpoint", required=True, type=Path, help="a ctran checkpoint (.pt)")
    p.add_argument("--data", default="digits", choices=FORMATS, help="dataset format (default: digits)")
    p.add_argument("--data-root", default=None, help="dataset folder (not needed for digits)")
    p.add_argument("--split", default=None, help="split to evaluate (default: the dataset's test split)")
    p.add_argument("--seed", type=int, default=0, help="dataset and known-label seed (default: 0)")
    p.add_argument(
        "--size", type=int, default=None, help="number of scenes (digits only; default: full split)"
    )
    p.add_argument("--known", type=float, default=0.0, metavar="P", help="fraction of target labels known")
    p.add_argument("--extra", action="store_true", help="reveal all extra labels")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=0, help="data-loading processes (default: 0)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", type=Path, default=None, help="write the metrics as JSON here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def load_eval_dataset(args: argparse.Namespace, meta: dict) -> object:
    """The dataset split named on the command line, prepared the way the checkpoint's images were."""
    if args.data == "digits":
        from ctran.data.digit_scenes import load_digit_scenes

        return load_digit_scenes(args.split or "test", args.seed, args.size)
    from ctran.data.registry import build_dataset, default_split

    if args.data_root is None:
        raise CTranError(f"--data-root is required for --data {args.data}")
    split = args.split or default_split(args.data, "test")
    image_size, scale_size = meta.get("image_size") or 576, meta.get("scale_size")
    return build_dataset(args.data, args.data_root, split, image_size=image_size, scale_size=scale_size)


def run(args: argparse.Namespace) -> int:
    from ctran.checkpoint import load_checkpoint
    from ctran.report import metrics_table, write_json
    from ctran.training.evaluation import Setting, evaluate
    from ctran.training.loaders import eval_loader

    if not 0.0 <= args.known < 1.0:
        raise CTranError(f"--known must be a fraction in [0, 1), got {args.known}")
    model, meta = load_checkpoint(args.checkpoint, args.device)
    dataset = load_eval_dataset(args, meta)
    if list(dataset.label_names) != list(meta["target_names"]) + list(meta["extra_names"]):
        raise CTranError(f"{args.checkpoint} was trained on other labels than this {args.data} dataset's")
    setting = Setting(known_fraction=args.known, reveal_extras=args.extra)
    loader = eval_loader(dataset, positive(args.batch_size, "--batch-size"), workers=args.workers)
    results = evaluate(model, loader, [setting], args.seed, args.device, progress=not args.quiet)
    metrics = results["partial"][f"{args.known:g}"] if "partial" in results else next(iter(results.values()))
    print(metrics_table({f"{setting.name} ({args.data}, {metrics['n_images']} images)": metrics}))
    if args.json:
        write_json(args.json, {**metrics, "setting": setting.name, "known": args.known, "extra": args.extra})
    return 0
