"""``ctran train``: train C-Tran from a config (also under ``torchrun ... -m ctran train``)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "train",
        help="train C-Tran from a config file (single process, or multi-GPU/multi-node under torchrun)",
        description="Train C-Tran. OUT receives config.yaml, last.pt, best.pt, metrics.csv, tensorboard/ "
        "and, "
        "at the end, metrics.json (the best checkpoint evaluated on the test split). Override any config key "
        "with section.key=value, e.g. train.lr=1e-4 model.backbone=tresnet_l. Under torchrun, every process "
        "runs this same command; only rank 0 writes files.",
        epilog="examples:\n  ctran train --config configs/digits-tiny.yaml --out runs/tiny\n"
        "  ctran train --config configs/coco80.yaml --data-root /data/coco --out runs/coco\n"
        "  torchrun --nproc_per_node=4 -m ctran train --config configs/coco80.yaml --data-root /data/coco "
        "--out runs/coco\n  ctran train --resume runs/coco",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--config", default=None, help="a YAML file or a shipped config name (coco80, digits, ...)"
    )
    p.add_argument("--out", type=Path, default=None, help="run folder (required unless --resume)")
    p.add_argument("--resume", type=Path, default=None, metavar="DIR", help="continue the run in DIR")
    p.add_argument("--data", default=None, help="dataset format (overrides data.format)")
    p.add_argument("--data-root", default=None, help="dataset folder (overrides data.root)")
    p.add_argument("--backbone-weights", default=None, help="local .pth/.safetensors backbone weights")
    p.add_argument("--device", default=None, help="cpu, cuda, auto (overrides train.device)")
    p.add_argument("--json", type=Path, default=None, help="also write the final metrics JSON here")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.epochs=5")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ctran.config import load_config
    from ctran.errors import CTranError
    from ctran.report import write_json
    from ctran.training.run import load_run_config, train_run

    flags = {
        "data.format": args.data,
        "data.root": args.data_root,
        "model.backbone_weights": args.backbone_weights,
        "train.device": args.device,
    }
    overrides = [f"{key}={value}" for key, value in flags.items() if value is not None] + args.overrides
    if args.resume is not None:
        if args.config or overrides:
            raise CTranError(
                "--resume continues a run with its saved config; do not pass --config or overrides"
            )
        config, out = load_run_config(args.resume), args.resume
    else:
        if args.out is None:
            raise CTranError("--out DIR is required (or --resume DIR to continue a run)")
        if (args.out / "last.pt").exists():
            raise CTranError(
                f"{args.out} already holds a run; continue it with --resume {args.out} or pick another --out"
            )
        config, out = load_config(args.config, overrides), args.out
    metrics = train_run(config, out, resume=args.resume is not None, progress=not args.quiet)
    if args.json:
        write_json(args.json, metrics)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"test mAP {metrics['mAP']:.2f} (best epoch {metrics['best_epoch']}); wrote {out}/metrics.json")
    return 0
