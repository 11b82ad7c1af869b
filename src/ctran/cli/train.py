"""``ctran train``: train C-Tran from a config (also under ``torchrun ... -m ctran train``)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ctran.cli.args import add_quiet_flag, show_progress
from ctran.errors import CTranError

# What ``--resume DIR`` may change: how long to train and where, never what is trained or on what data.
RESUMABLE_KEYS = ("train.epochs", "train.device", "data.num_workers", "eval.batch_size")


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "train",
        help="train C-Tran from a config file (single process, or multi-GPU/multi-node under torchrun)",
        description="Train C-Tran. OUT receives config.yaml, last.pt, best.pt, metrics.csv, tensorboard/ "
        "and, "
        "at the end, metrics.json (the best checkpoint evaluated on the test split). Override any config key "
        "with section.key=value anywhere on the line, e.g. train.lr=1e-4 model.backbone=tresnet_l. "
        "--resume DIR continues a stopped run; with train.epochs=N it also extends a finished one (a cosine "
        "schedule goes on from its current lr to its floor at the new end). Under "
        "torchrun, every process runs this same command; only rank 0 writes files.",
        epilog="examples:\n  ctran train --config configs/digits-tiny.yaml --out runs/tiny\n"
        "  ctran train --config configs/coco80.yaml --data-root /data/coco --out runs/coco\n"
        "  torchrun --nproc_per_node=4 -m ctran train --config configs/coco80.yaml --data-root /data/coco "
        "--out runs/coco\n  ctran train --resume runs/coco\n"
        "  ctran train --resume runs/coco train.epochs=60    # 20 more epochs for a finished 40-epoch run",
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
    p.add_argument(
        "--init-from",
        default=None,
        metavar="CKPT",
        help="fine-tune from a ctran checkpoint (or a converted official one): labels are matched by name, "
        "shared labels keep their rows, new ones start fresh (sets model.init_from)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, auto (overrides train.device)")
    p.add_argument("--json", type=Path, default=None, help="also write the final metrics JSON here")
    add_quiet_flag(p, epoch_lines=True)
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides, anywhere on the line, e.g. train.epochs=5; with --resume only "
        + ", ".join(RESUMABLE_KEYS),
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    flags = {
        "data.format": args.data,
        "data.root": args.data_root,
        "model.backbone_weights": args.backbone_weights,
        "model.init_from": args.init_from,
        "train.device": args.device,
    }
    overrides = [f"{key}={value}" for key, value in flags.items() if value is not None] + args.overrides
    if args.resume is not None:
        config, out = resumed_config(args.resume, args.config, overrides), args.resume
    else:
        config, out = new_run_config(args.out, args.config, overrides), args.out
    from ctran.report import write_json  # after the config is checked: a bad value fails in milliseconds
    from ctran.training.run import train_run

    metrics = train_run(config, out, resume=args.resume is not None, progress=show_progress(args.quiet))
    if args.json:
        write_json(args.json, metrics)
    if int(os.environ.get("RANK", "0")) == 0:
        score = f"not scored: {metrics['not_scored']}" if "not_scored" in metrics else f"{metrics['mAP']:.2f}"
        print(f"test mAP {score} (best epoch {metrics['best_epoch']}); wrote {out}/metrics.json")
    return 0


def new_run_config(out: Path | None, config_file: str | None, overrides: list[str]):
    """The config of a fresh run into ``out``, which must not already hold one."""
    from ctran.config import load_config

    if out is None:
        raise CTranError("--out DIR is required (or --resume DIR to continue a run)")
    if (out / "last.pt").exists():
        raise CTranError(f"{out} already holds a run; continue it with --resume {out} or pick another --out")
    return load_config(config_file, overrides)


def resumed_config(run_dir: Path, config_file: str | None, overrides: list[str]):
    """The saved config of the run in ``run_dir``, with the few overrides a resumed run may take.

    A folder whose run was stopped before its first checkpoint has nothing to resume from; a finished or
    stopped run extends only by raising ``train.epochs`` (one-cycle schedules end at their planned step; a
    cosine goes on from its current lr, see ``ctran.training.optim.continue_schedule``).
    """
    from ctran.config import load_config
    from ctran.training.run import load_run_config

    if config_file:
        raise CTranError("--resume continues a run with its saved config; do not pass --config")
    refused = [item for item in overrides if item.partition("=")[0] not in RESUMABLE_KEYS]
    if refused:
        raise CTranError(
            f"--resume cannot change {refused[0].partition('=')[0]}: a resumed run keeps its model, data "
            f"and training recipe (it may change {', '.join(RESUMABLE_KEYS)}); start a new run with --out"
        )
    saved = load_run_config(run_dir)
    if not (run_dir / "last.pt").is_file():
        raise CTranError(
            f"{run_dir} was stopped before its first checkpoint (written at the end of epoch 1): there is "
            f"nothing to resume; start again with --out {run_dir}"
        )
    config = load_config(run_dir / "config.yaml", overrides)
    if config.train.epochs > saved.train.epochs:
        _check_extendable(run_dir, config)
    return config


def _check_extendable(run_dir: Path, config) -> None:
    """Refuse, with the reason, an extension that would silently train no further or crash later."""
    from ctran.checkpoint import read_checkpoint

    if config.train.schedule == "onecycle":
        raise CTranError(
            f"{run_dir} uses a one-cycle schedule, which ends at its planned step; it cannot be extended "
            "(start a new run with --out, or use train.schedule=plateau or cosine)"
        )
    state = read_checkpoint(run_dir / "last.pt").get("training_state") or {}
    if state.get("stopped_early"):
        raise CTranError(
            f"{run_dir} stopped early at epoch {state['epoch']} (no better validation mAP for "
            f"train.early_stop={config.train.early_stop} epochs); more epochs would not train it further"
        )
