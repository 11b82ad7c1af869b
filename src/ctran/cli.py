"""The ``ctran`` command line: a thin layer over the Python API.

Every command has ``--help``; user mistakes end with one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ctran.errors import CTranError

DATASETS = ("digits",)


def _add_demo(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "demo",
        help="train C-Tran and a CNN baseline on the bundled digit scenes and report all inference modes",
        description="Build the digit-scenes dataset, train C-Tran (Label Mask Training) and the pooled-CNN "
        "baseline for the same number of epochs, evaluate regular, partial and extra-label inference on the "
        "test split, and write report.json, report.md, map_vs_known.png and ctran.pt.",
    )
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--seed", type=int, default=0, help="dataset and training seed (default: 0)")
    p.add_argument("--epochs", type=int, default=None, help="epochs for each model (default: 12)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    p.add_argument(
        "--sizes",
        default=None,
        metavar="TRAIN,VAL,TEST",
        help="number of scenes per split, for quick runs (default: 12000,2000,4000)",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the report JSON here")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from ctran.checkpoint import load_checkpoint
    from ctran.data.digit_scenes import load_digit_scenes
    from ctran.demo import DemoConfig, run_demo, worked_example
    from ctran.report import write_json

    config = DemoConfig(seed=args.seed)
    if args.epochs is not None:
        config.train.epochs = _positive(args.epochs, "--epochs")
    config.train.device, config.train.precision = args.device, args.precision
    if args.sizes:
        config.sizes = dict(zip(("train", "val", "test"), _parse_sizes(args.sizes), strict=True))
    report = run_demo(args.out, config, progress=not args.quiet)
    print((Path(args.out) / "report.md").read_text())
    model, _ = load_checkpoint(Path(args.out) / "ctran.pt")
    print(worked_example(model, load_digit_scenes("test", args.seed, config.sizes["test"])))
    print(f"\nwrote {args.out}/report.json, report.md, map_vs_known.png, ctran.pt")
    if args.json:
        write_json(args.json, report)
    return 0


def _add_evaluate(commands: argparse._SubParsersAction) -> None:
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
    loader = make_loader(dataset, _positive(args.batch_size, "--batch-size"), False, args.seed)
    results = evaluate(model, loader, [setting], args.seed, args.device, progress=not args.quiet)
    metrics = results["partial"][f"{args.known:g}"] if "partial" in results else next(iter(results.values()))
    label = f"{setting.name} ({args.data} {args.split}, {metrics['n_images']} images)"
    print(metrics_table({label: metrics}))
    if args.json:
        write_json(args.json, {**metrics, "setting": setting.name, "known": args.known, "extra": args.extra})
    return 0


def _positive(value: int, flag: str) -> int:
    if value < 1:
        raise CTranError(f"{flag} must be a positive integer, got {value}")
    return value


def _parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        sizes = []
    if len(sizes) != 3 or min(sizes) < 1:
        raise CTranError(f"--sizes expects three positive integers TRAIN,VAL,TEST, got {text!r}")
    return sizes


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-command per task."""
    parser = argparse.ArgumentParser(
        prog="ctran", description="C-Tran multi-label image classification, conditioned on known labels."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_demo(commands)
    _add_evaluate(commands)
    return parser


def _version() -> str:
    from ctran import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ctran`` script and ``python -m ctran``."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except CTranError as err:
        print(f"ctran {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ctran {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
