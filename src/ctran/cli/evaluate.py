"""``ctran evaluate``: metrics of a checkpoint in one or several inference settings, in one pass."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ctran.cli.args import DATASET_FORMATS, add_quiet_flag, dataset_options, positive, show_progress
from ctran.errors import CTranError

EXTRA_CHOICES = ("no", "yes", "both")


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "evaluate",
        help="evaluate a checkpoint on a dataset: regular, partial, known-positives and extra-label "
        "settings, in one pass",
        description="Evaluate a checkpoint in one or several settings; the backbone runs once per image for "
        "all of them. --known P reveals a fraction P of each image's annotated target labels, positive or "
        "negative (the paper's protocol: mostly negatives); --known-positives P reveals a fraction P of its "
        "present labels only (what a tagged library knows). Both draw the same labels for every run and "
        "model; a list (--known 0,0.25,0.5,0.75) scores each fraction. --extra reveals every extra label in "
        "each of those settings (--extra both: each with and without). Settings are named regular, "
        "partial_0.5, positives_0.5, extra, partial_0.5+extra, positives_0.5+extra. Metrics are in percent, "
        "over the labels left unknown; every told setting also shows 'untold', the mAP of the same entries "
        "when nothing is told, and 'gain', its mAP minus untold: what being told does, measured on the same "
        "entries told vs not told. The table says how many images and labels each setting scored ('not "
        "scored: ...' when nothing was left to score), and --json adds the AP of every label.",
        epilog="examples:\n"
        "  ctran evaluate --checkpoint runs/demo/ctran.pt --known 0,0.25,0.5,0.75 --extra both\n"
        "  ctran evaluate --checkpoint runs/demo/ctran.pt --known 0.5 --known-positives 0.25,0.5,0.75\n"
        "  ctran evaluate --checkpoint runs/voc/best.pt --data voc --data-root /data/VOCdevkit --known 0.5",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, type=Path, help="a ctran checkpoint (.pt)")
    p.add_argument(
        "--data", default="digits", choices=DATASET_FORMATS, help="dataset format (default: digits)"
    )
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
    p.add_argument(
        "--known",
        default=None,
        metavar="P[,P...]",
        help="uniform, the paper's protocol: fractions of each image's annotated target labels known "
        "(positives and negatives alike), each in [0, 1), comma-separated (default: 0, regular, unless "
        "--known-positives is given)",
    )
    p.add_argument(
        "--known-positives",
        default=None,
        metavar="P[,P...]",
        help="what a tagged library has: fractions of each image's present target labels known (never a "
        "negative), each in (0, 1], comma-separated",
    )
    p.add_argument(
        "--extra",
        nargs="?",
        const="yes",
        default="no",
        choices=EXTRA_CHOICES,
        help="reveal all extra labels in every setting (--extra or --extra yes), or score every setting "
        "with and without them (--extra both); default: no",
    )
    p.add_argument(
        "--intervention",
        action="store_true",
        help="datasets with extra-label groups (CUB-312): class accuracy with k = 0..G groups revealed",
    )
    p.add_argument("--batch-size", type=int, default=64, help="images per batch (default: 64)")
    p.add_argument("--workers", type=int, default=0, help="data-loading processes (default: 0)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--json", type=Path, default=None, help="write the metrics (every setting) as JSON here")
    add_quiet_flag(p)
    p.set_defaults(run=run)


def parse_fractions(text: str, option: str = "--known") -> list[float]:
    """``"0,0.25,0.5"`` -> ``[0.0, 0.25, 0.5]``, duplicates dropped, order kept: each in [0, 1) for
    ``--known`` (every label known leaves nothing to score), in (0, 1] for ``--known-positives`` (0 is
    regular)."""
    try:
        fractions = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        fractions = []
    if not fractions:
        raise CTranError(f"{option} expects fractions like 0.5 or 0.25,0.5, got {text!r}")
    of_present = option == "--known-positives"
    for fraction in fractions:
        if not (0.0 < fraction <= 1.0 if of_present else 0.0 <= fraction < 1.0):
            raise CTranError(
                f"{option} fractions must be in {'(0, 1]' if of_present else '[0, 1)'}, got {fraction:g}"
            )
    return list(dict.fromkeys(fractions))


def requested_settings(known: str | None, extra: str, positives: str | None = None) -> list:
    """The settings of one ``evaluate`` call: every ``--known`` fraction (0, regular, when neither option
    is given), then every ``--known-positives`` one, with extras per ``--extra no|yes|both``."""
    from ctran.training.evaluation import Setting

    uniform = parse_fractions(known) if known is not None else [] if positives is not None else [0.0]
    present = parse_fractions(positives, "--known-positives") if positives is not None else []
    told = [Setting(fraction) for fraction in uniform] + [Setting(known_positives=f) for f in present]
    reveal = {"no": (False,), "yes": (True,), "both": (False, True)}[extra]
    return [dataclasses.replace(setting, reveal_extras=shown) for shown in reveal for setting in told]


def eval_split(args: argparse.Namespace) -> str:
    """The split named on the command line, else the format's test split."""
    from ctran.data.registry import default_split

    return args.split or default_split(args.data, "test")


def evaluation_seed(args: argparse.Namespace, meta: dict) -> int:
    """``--seed``, else the checkpoint's training seed; for digits, refuse a seed whose scenes reuse digits
    the model was trained on (each seed splits the source digits differently)."""
    train_seed = (meta.get("config") or {}).get("seed", 0)
    seed = train_seed if args.seed is None else args.seed
    if args.data == "digits" and seed != train_seed:
        from ctran.data.digit_scenes import training_overlap

        split = eval_split(args)
        overlap = training_overlap(train_seed, seed, split)
        if overlap > 0:
            raise CTranError(
                f"--seed {seed}: {100 * overlap:.0f}% of the source digits of the digits {split} split under "
                f"seed {seed} were in this checkpoint's training pool (it was trained with seed "
                f"{train_seed}); the scores would measure memory. Leave --seed out to use {train_seed}"
            )
    return seed


def load_eval_dataset(args: argparse.Namespace, meta: dict, seed: int):
    """The dataset split named on the command line, prepared the way the checkpoint's images were."""
    from ctran.data.registry import build_dataset
    from ctran.normalization import as_normalization

    options = dataset_options(args.option)
    if args.data == "digits":
        if args.size is not None:
            options["size"] = args.size
    elif args.data_root is None:
        raise CTranError(f"--data-root is required for --data {args.data}")
    return build_dataset(
        args.data,
        args.data_root,
        eval_split(args),
        image_size=meta.get("image_size") or 576,
        scale_size=meta.get("scale_size"),
        seed=seed,
        norm=as_normalization(meta.get("normalization")),
        **options,
    )


def run(args: argparse.Namespace) -> int:
    from ctran.checkpoint import load_checkpoint
    from ctran.data.partial import in_label_order
    from ctran.devices import resolve_device
    from ctran.model.backbone import describe_weights
    from ctran.report import metrics_table, settings_by_name, write_json
    from ctran.training.evaluation import evaluate
    from ctran.training.loaders import eval_loader

    settings = requested_settings(args.known, args.extra, args.known_positives)  # mistakes before loading
    device = resolve_device(args.device)
    model, meta = load_checkpoint(args.checkpoint, device)
    seed = evaluation_seed(args, meta)
    dataset = load_eval_dataset(args, meta, seed)
    dataset = in_label_order(dataset, meta["target_names"], meta["extra_names"], str(args.checkpoint))
    loader = eval_loader(dataset, positive(args.batch_size, "--batch-size"), workers=args.workers)
    if args.intervention:
        return _run_intervention(args, model, loader, device, seed)
    if args.extra != "no" and not dataset.extra_names:
        raise CTranError(f"--extra: this {args.data} dataset has no extra labels to reveal")
    results = evaluate(model, loader, settings, seed, device, progress=show_progress(args.quiet))
    rows = settings_by_name(results)
    where = f"{args.checkpoint} on {args.data} {eval_split(args)}"
    print(f"{where}; metrics in %, over the labels left unknown")
    if any(setting.name != "regular" for setting in settings):
        print("untold: mAP of the same entries with nothing told; gain: mAP - untold")
    print(f"initial weights: {describe_weights(meta.get('pretrained_weights'))}\n")
    print(metrics_table(rows, counts=True))
    if args.json:
        first = settings[0]
        summary = {
            **rows[first.name],
            "setting": first.name,
            "known": first.known_fraction,
            "known_positives": first.known_positives,
            "extra": first.reveal_extras,
            "checkpoint": str(args.checkpoint),
            "data": args.data,
            "split": eval_split(args),
            "seed": seed,
            "settings": results,
        }
        write_json(args.json, summary)
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
    result = group_intervention(model, loader, groups, seed, device, progress=show_progress(args.quiet))
    print("| groups known | concepts known (%) | class accuracy (%) | mAP (%) |\n|---:|---:|---:|---:|")
    for k, fraction, accuracy, m in zip(
        result["k"], result["revealed_fraction"], result["class_accuracy"], result["mAP"], strict=True
    ):
        print(f"| {k} | {100 * fraction:.0f} | {accuracy:.1f} | {m:.1f} |")
    if args.json:
        write_json(args.json, {**result, "setting": "intervention"})
    return 0
