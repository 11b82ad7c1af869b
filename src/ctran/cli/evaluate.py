"""``ctran evaluate``: metrics of a checkpoint in one inference setting."""

from __future__ import annotations

import argparse
from pathlib import Path

from ctran.cli.args import positive
from ctran.errors import CTranError

DATASETS = ("digits",)


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "evaluate",
        help="evaluate a checkpoint on a dataset (regular, partial or extra-label inference)",
        description="Evaluate a checkpoint. With neither --known nor --extra: regular inference. "
        "--known P reveals a fraction P of the target labels per image (the same labels for every run and "
        "model); --extra reveals every extra label. Metrics are in percent, over the labels left unknown.",
    )
    p.add_argument("--checkpoint", required=True, type=Path, help="a ctran checkpoint (.pt)")
    p.add_argument("--data", default="digits", choices=DATASETS, help="dataset (default: digits)")
    p.add_argument("--split", default="test", help="split to evaluate (default: test)")
    p.add_argument("--seed", type=int, default=0, help="dataset seed and known-label seed (default: 0)")
    p.add_argument(
        "--size", type=int, default=None, help="number of scenes (digits only; default: full split)"
    )
    p.add_argument("--known", type=float, default=0.0, metavar="P", help="fraction of target labels known")
    p.add_argument("--extra", action="store_true", help="reveal all extra labels")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", type=Path, default=None, help="write the metrics as JSON here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from ctran.checkpoint import load_checkpoint
    from ctran.data.digit_scenes import load_digit_scenes
    from ctran.report import metrics_table, write_json
    from ctran.training.evaluation import Setting, evaluate
    from ctran.training.trainer import make_loader

    if not 0.0 <= args.known < 1.0:
        raise CTranError(f"--known must be a fraction in [0, 1), got {args.known}")
    model, meta = load_checkpoint(args.checkpoint, args.device)
    dataset = load_digit_scenes(args.split, args.seed, args.size) if args.data == "digits" else None
    if list(dataset.label_names) != list(meta["target_names"]) + list(meta["extra_names"]):
        raise CTranError(f"{args.checkpoint} was trained on other labels than the {args.data} dataset's")
    setting = Setting(known_fraction=args.known, reveal_extras=args.extra)
    loader = make_loader(dataset, positive(args.batch_size, "--batch-size"), False, args.seed)
    results = evaluate(model, loader, [setting], args.seed, args.device, progress=not args.quiet)
    metrics = results["partial"][f"{args.known:g}"] if "partial" in results else next(iter(results.values()))
    label = f"{setting.name} ({args.data} {args.split}, {metrics['n_images']} images)"
    print(metrics_table({label: metrics}))
    if args.json:
        write_json(args.json, {**metrics, "setting": setting.name, "known": args.known, "extra": args.extra})
    return 0
