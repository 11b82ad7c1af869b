"""``ctran evaluate``: metrics of a checkpoint in one inference setting."""

from __future__ import annotations

import argparse
from pathlib import Path

from ctran.cli.args import dataset_options, positive
from ctran.data.base import LabeledImages
from ctran.data.registry import FORMATS, build_dataset, default_split
from ctran.errors import CTranError


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
    p.add_argument(
        "--option",
        "-o",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="dataset format option, repeatable (see ctran data check --help)",
    )
    p.add_argument("--data-root", default=None, help="dataset folder (not needed for digits)")
    p.add_argument("--split", default=None, help="split to evaluate (default: the dataset's test split)")
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="dataset and known-label seed (default: the checkpoint's training seed, so digits evaluates on "
        "the test split of the data it was trained on; a seed whose test digits the model trained on is "
        "refused)",
    )
    p.add_argument(
        "--size", type=int, default=None, help="number of scenes (digits only; default: full split)"
    )
    p.add_argument("--known", type=float, default=0.0, metavar="P", help="fraction of target labels known")
    p.add_argument("--extra", action="store_true", help="reveal all extra labels")
    p.add_argument(
        "--intervention",
        action="store_true",
        help="datasets with extra-label groups (CUB-312): class accuracy with k = 0..G groups revealed",
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=0, help="data-loading processes (default: 0)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", type=Path, default=None, help="write the metrics as JSON here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def evaluation_seed(args: argparse.Namespace, meta: dict) -> int:
    """``--seed``, else the checkpoint's training seed; for digits, refuse a seed whose scenes reuse digits
    the model was trained on (each seed splits the source digits differently)."""
    train_seed = (meta.get("config") or {}).get("seed", 0)
    seed = train_seed if args.seed is None else args.seed
    if args.data == "digits" and seed != train_seed:
        from ctran.data.digit_scenes import training_overlap

        split = args.split or default_split(args.data, "test")
        overlap = training_overlap(train_seed, seed, split)
        if overlap > 0:
            raise CTranError(
                f"--seed {seed}: {100 * overlap:.0f}% of the source digits of the digits {split} split under "
                f"seed {seed} were in this checkpoint's training pool (it was trained with seed "
                f"{train_seed}); the scores would measure memory. Leave --seed out to use {train_seed}"
            )
    return seed


def load_eval_dataset(args: argparse.Namespace, meta: dict, seed: int) -> LabeledImages:
    """The dataset split named on the command line, prepared the way the checkpoint's images were."""
    from ctran.normalization import as_normalization

    options = dataset_options(args.option)
    if args.data == "digits":
        if args.size is not None:
            options["size"] = args.size
    elif args.data_root is None:
        raise CTranError(f"--data-root is required for --data {args.data}")
    split = args.split or default_split(args.data, "test")
    return build_dataset(
        args.data,
        args.data_root,
        split,
        image_size=meta.get("image_size") or 576,
        scale_size=meta.get("scale_size"),
        seed=seed,
        norm=as_normalization(meta.get("normalization")),
        **options,
    )


def run(args: argparse.Namespace) -> int:
    from ctran.checkpoint import load_checkpoint
    from ctran.devices import resolve_device
    from ctran.report import metrics_table, write_json
    from ctran.training.evaluation import Setting, evaluate
    from ctran.training.loaders import eval_loader

    if not 0.0 <= args.known < 1.0:
        raise CTranError(f"--known must be a fraction in [0, 1), got {args.known}")
    device = resolve_device(args.device)
    model, meta = load_checkpoint(args.checkpoint, device)
    seed = evaluation_seed(args, meta)
    dataset = load_eval_dataset(args, meta, seed)
    if list(dataset.label_names) != list(meta["target_names"]) + list(meta["extra_names"]):
        raise CTranError(f"{args.checkpoint} was trained on other labels than this {args.data} dataset's")
    loader = eval_loader(dataset, positive(args.batch_size, "--batch-size"), workers=args.workers)
    if args.intervention:
        return _run_intervention(args, model, loader, device, seed)
    setting = Setting(known_fraction=args.known, reveal_extras=args.extra)
    results = evaluate(model, loader, [setting], seed, device, progress=not args.quiet)
    metrics = results["partial"][f"{args.known:g}"] if "partial" in results else next(iter(results.values()))
    print(metrics_table({f"{setting.name} ({args.data}, {metrics['n_images']} images)": metrics}))
    if args.json:
        write_json(args.json, {**metrics, "setting": setting.name, "known": args.known, "extra": args.extra})
    return 0


def _run_intervention(
    args: argparse.Namespace, model: object, loader: object, device: object, seed: int
) -> int:
    """Reveal k extra-label groups (k = 0..G) and report class accuracy, as in the paper's CUB table."""
    from ctran.report import write_json
    from ctran.training.intervention import group_intervention

    groups = getattr(loader.dataset, "extra_groups", None)
    if not groups:
        raise CTranError(
            f"--intervention needs a dataset with extra-label groups (cub); {args.data} has none"
        )
    result = group_intervention(model, loader, groups, seed, device, progress=not args.quiet)
    print("| groups known | concepts known (%) | class accuracy (%) | mAP (%) |\n|---:|---:|---:|---:|")
    for k, fraction, accuracy, m in zip(
        result["k"], result["revealed_fraction"], result["class_accuracy"], result["mAP"], strict=True
    ):
        print(f"| {k} | {100 * fraction:.0f} | {accuracy:.1f} | {m:.1f} |")
    if args.json:
        write_json(args.json, {**result, "setting": "intervention"})
    return 0
