"""``ctran demo``: the main job on the bundled digit scenes."""

from __future__ import annotations

import argparse
from pathlib import Path

from ctran.cli.args import add_quiet_flag, parse_sizes, positive, show_progress
from ctran.extras import require


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "demo",
        help="train C-Tran and a CNN baseline on the bundled digit scenes and report all inference modes",
        description="Build the digit-scenes dataset, train C-Tran (Label Mask Training) and the pooled-CNN "
        "baseline for the same number of epochs (configs/digits.yaml), evaluate regular, partial and "
        "extra-label inference on the test split, and write report.json, report.md, map_vs_known.png and "
        "ctran.pt.",
    )
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--seed", type=int, default=0, help="dataset and training seed (default: 0)")
    p.add_argument(
        "--epochs", type=int, default=None, help="epochs for each model (default: the config's, 10)"
    )
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, auto (default: cpu)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    p.add_argument(
        "--sizes",
        default=None,
        metavar="TRAIN,VAL,TEST",
        help="number of scenes per split, for quick runs (default: 12000,2000,4000)",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the report JSON here")
    add_quiet_flag(p, epoch_lines=True)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ctran.checkpoint import load_checkpoint
    from ctran.data.digit_scenes import load_digit_scenes
    from ctran.demo import demo_config, run_demo, worked_example
    from ctran.report import write_json

    require("viz", "ctran demo (its map_vs_known.png)")
    overrides = [f"seed={args.seed}", f"train.device={args.device}", f"train.precision={args.precision}"]
    if args.epochs is not None:
        overrides.append(f"train.epochs={positive(args.epochs, '--epochs')}")
    if args.sizes:
        train, val, test = parse_sizes(args.sizes)
        overrides.append(f"data.sizes={{train: {train}, val: {val}, test: {test}}}")
    config = demo_config(overrides)
    report = run_demo(args.out, config, progress=show_progress(args.quiet))
    print((Path(args.out) / "report.md").read_text())
    model, _ = load_checkpoint(Path(args.out) / "ctran.pt")
    test_size = (config.data.sizes or {}).get("test")
    print(worked_example(model, load_digit_scenes("test", args.seed, test_size)))
    print(f"\nwrote {args.out}/report.json, report.md, map_vs_known.png, ctran.pt")
    if args.json:
        write_json(args.json, report)
    return 0
