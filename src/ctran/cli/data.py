"""``ctran data check``, ``stats``, ``synth``, ``emoji``, ``pack``: check, describe, generate, build or pack
a dataset."""

from __future__ import annotations

import argparse
import os
import warnings
from pathlib import Path

from ctran.cli.args import DATASET_FORMATS, add_quiet_flag, dataset_options, show_progress
from ctran.errors import CTranError
from ctran.extras import require


def add_dataset_arguments(
    parser: argparse.ArgumentParser, split_help: str, several_splits: bool = False
) -> None:
    """``--format/--root/--split/--option``, shared with any command that reads a dataset."""
    parser.add_argument("--format", required=True, choices=DATASET_FORMATS, help="dataset format")
    parser.add_argument("--root", type=Path, default=None, help="dataset folder (or file, for csv/jsonl)")
    parser.add_argument(
        "--split", default=None, action="append" if several_splits else "store", help=split_help
    )
    parser.add_argument(
        "--option",
        "-o",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="format option, repeatable: voc difficult=ignore|negative|positive, year=2007; coco year=2014; "
        "vg500 names=FILE; cub source=auto|cbm|raw, attributes=class|instance; openimages classes=FILE, "
        "cache=auto|off|DIR; csv/jsonl vocabulary=FILE, extra_vocabulary=FILE, unlisted=negative|unknown; "
        "digits size=N; shards buffer=N (shuffle buffer, samples per loader worker)",
    )


def register(commands: argparse._SubParsersAction) -> None:
    group = commands.add_parser(
        "data",
        help="check a dataset or plot its label statistics",
        description="Validate and describe a dataset in any supported format without training.",
    )
    actions = group.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = actions.add_parser(
        "check",
        help="count images and labels, find missing and unreadable files",
        description="Read the annotations of one split, count images, labels per image and positives per "
        "label, list missing and unreadable image files and labels that are never positive; print a table "
        "and optionally write JSON. Exit code 2 for a missing folder or malformed annotation file.",
    )
    add_dataset_arguments(check, "split, as the publisher names it (default: the training split)")
    check.add_argument("--json", type=Path, default=None, help="write the report as JSON here")
    check.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="decoding threads")
    check.add_argument("--no-decode", action="store_true", help="only check that image files exist")
    check.add_argument("--strict", action="store_true", help="exit 1 if any image is missing or unreadable")
    add_quiet_flag(check)
    check.set_defaults(run=_run_check)
    stats = actions.add_parser(
        "stats",
        help="plot label frequencies and label co-occurrence",
        description="Write label_frequency.png (positives per label), cooccurrence.png (P(B | A) for the "
        "most frequent labels) and stats.json (counts and the co-occurrence matrix) to --out.",
    )
    add_dataset_arguments(stats, "split, as the publisher names it (default: the training split)")
    stats.add_argument("--out", type=Path, required=True, help="output folder")
    stats.add_argument(
        "--top", type=int, default=100, help="labels to plot, most frequent first (default: 100)"
    )
    stats.set_defaults(run=_run_stats)
    _register_synth(actions)
    _register_emoji(actions)
    _register_pack(actions)


def _register_synth(actions: argparse._SubParsersAction) -> None:
    synth = actions.add_parser(
        "synth",
        help="write a synthetic many-label dataset (sparse annotations, long-tailed labels)",
        description="Write a synthetic dataset in the CSV layout of your own data: thousands of labels with "
        "a long-tailed frequency, about --annotated labels annotated per image (its positives and verified "
        "negatives, like Open Images) and every other label not annotated, tiny PNG images whose pixels "
        "carry the labels, and label groups so that known labels help (some labels are never drawn, only "
        "implied by their group). Also writes labels.txt, synthetic.json (the label model) and ctran.yaml "
        "(a small training config that reads the folder with unlisted=unknown). Prints a JSON summary with "
        "the training command. Deterministic from --seed.",
        epilog="example:\n  ctran data synth --out data/synth --images 20000 --labels 2000\n"
        "  ctran train --config data/synth/ctran.yaml --out runs/synth",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    synth.add_argument("--out", type=Path, required=True, help="output folder (new or empty)")
    synth.add_argument("--images", type=int, default=10_000, help="training images (default: 10000)")
    synth.add_argument("--val", type=int, default=None, help="validation images (default: a tenth, >= 50)")
    synth.add_argument("--test", type=int, default=None, help="test images (default: a tenth, >= 50)")
    synth.add_argument("--labels", type=int, default=2000, help="labels in the vocabulary (default: 2000)")
    synth.add_argument("--annotated", type=int, default=10, help="annotated labels per image (default: 10)")
    synth.add_argument("--image-size", type=int, default=32, help="pixels, a multiple of 8 (default: 32)")
    synth.add_argument("--group-size", type=int, default=8, help="labels per group (default: 8)")
    synth.add_argument(
        "--zipf", type=float, default=1.0, help="Zipf exponent of the group popularity (default: 1.0)"
    )
    synth.add_argument(
        "--hidden", type=float, default=0.25, help="fraction of labels never drawn (default: 0.25)"
    )
    synth.add_argument(
        "--missed", type=float, default=0.1, help="fraction of positives left unannotated (default: 0.1)"
    )
    synth.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    synth.add_argument(
        "--workers", type=int, default=min(4, os.cpu_count() or 1), help="processes writing images"
    )
    add_quiet_flag(synth)
    synth.set_defaults(run=_run_synth)


def _register_emoji(actions: argparse._SubParsersAction) -> None:
    emoji = actions.add_parser(
        "emoji",
        help="build a real tagged set: emoji artwork from npm with the Unicode CLDR keywords as tags",
        description="Render the emoji artwork of the npm packages @twemoji/svg, @iconify-json/noto and "
        "@iconify-json/fluent-emoji (whichever are installed) and tag each icon with the CLDR keywords of "
        "emojibase-data (the N most frequent as the vocabulary), its Unicode group as an extra label. "
        "Writes the CSV layout of your own data (train/val/test.csv, labels.txt, extras.txt) and "
        "emoji.json; the variants of one emoji share a split. Needs rsvg-convert (librsvg2-bin). "
        "Re-running keeps the icons already rendered.",
        epilog="example:\n  npm install --prefix data/npm @twemoji/svg @iconify-json/noto "
        "@iconify-json/fluent-emoji emojibase-data\n"
        "  ctran data emoji --npm data/npm --out data/emoji\n"
        '  ctran train --config own-cpu --data csv --data-root data/emoji --backbone-weights "$W" '
        "--out runs/emoji",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    emoji.add_argument("--npm", type=Path, default=Path("."), help="folder holding node_modules (default: .)")
    emoji.add_argument("--out", type=Path, required=True, help="output folder")
    emoji.add_argument("--labels", type=int, default=60, help="tags in the vocabulary (default: 60)")
    emoji.add_argument("--size", type=int, default=144, help="icon side in pixels (default: 144)")
    emoji.add_argument("--locale", default="en", help="CLDR keyword language (default: en)")
    emoji.add_argument("--seed", type=int, default=0, help="split seed (default: 0)")
    emoji.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="rsvg-convert processes at once"
    )
    add_quiet_flag(emoji)
    emoji.set_defaults(run=_run_emoji)


def _register_pack(actions: argparse._SubParsersAction) -> None:
    pack = actions.add_parser(
        "pack",
        help="write a dataset as WebDataset tar shards, for training at scale (data.format: shards)",
        description="Write a dataset, in any format ctran reads, as WebDataset tar shards: each "
        "image's bytes as stored (or re-encoded with --max-side) and a JSON record of its target and extra "
        "states, id and source file; the vocabulary once, in vocabulary.json; one manifest per split "
        "(<split>.json: the shards' URL pattern and sample counts). Without --split it packs train, val "
        "and test exactly as `ctran train` reads them (val held out of train, by --val-fraction and "
        "--seed, where the format has none), so that `ctran train --data shards --data-root OUT` trains on "
        "the same data. Shards are written under a temporary name and renamed when complete; a stopped "
        "pack re-run with the same arguments goes on from its last complete shard. Prints a JSON summary.",
        epilog="examples:\n"
        "  ctran data pack --format openimages --root /data/openimages --out /data/oi --max-side 640\n"
        "  torchrun --nproc_per_node=8 -m ctran train --config configs/coco80.yaml --data shards \\\n"
        "      --data-root /data/oi --out runs/oi\n"
        "  ctran data pack --format voc --root /data/VOCdevkit --split val --out /data/voc  # one more split",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_dataset_arguments(
        pack,
        "a split to pack under its own name, as the publisher names it; repeatable (default: train, val "
        "and test as training reads them)",
        several_splits=True,
    )
    pack.add_argument("--out", type=Path, required=True, help="output folder")
    pack.add_argument(
        "--max-side", type=int, default=None, help="re-encode images whose longest side is larger (JPEG q90)"
    )
    pack.add_argument(
        "--shard-size",
        type=int,
        default=None,
        help="samples per shard (default: a 64th of the split, so 8 processes x 8 workers each read one)",
    )
    pack.add_argument(
        "--shard-bytes", type=float, default=1e9, help="bytes per shard at most (default: 1e9, one GB)"
    )
    pack.add_argument(
        "--val-fraction", type=float, default=0.1, help="held out of train without a val split (default: 0.1)"
    )
    pack.add_argument("--seed", type=int, default=0, help="seed of the held-out val split (default: 0)")
    add_quiet_flag(pack)
    pack.set_defaults(run=_run_pack)


def _open(args: argparse.Namespace):
    """The split to inspect; missing files are reported by the command, not warned about."""
    from ctran.data.registry import build_dataset, default_split

    if args.format == "shards":
        raise CTranError(
            f"data {args.action} reads a dataset's label tables, which a shard folder keeps in its records; "
            "run it on the source before packing (--format F --root R)"
        )
    split = args.split or default_split(args.format, "train")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return split, build_dataset(args.format, args.root, split, **dataset_options(args.option))


def _run_check(args: argparse.Namespace) -> int:
    from ctran.data.inspection import dataset_report, verify_images
    from ctran.report import write_json

    split, dataset = _open(args)
    progress = show_progress(args.quiet)
    unreadable = {} if args.no_decode else verify_images(dataset, args.workers, progress=progress)
    report = {
        "format": args.format,
        "root": str(args.root) if args.root else None,
        "split": split,
        **dataset_report(dataset, unreadable),
    }
    print(check_table(report))
    if args.json:
        write_json(args.json, report)
    problems = report["missing_files"] or report["unreadable_files"]
    return 1 if args.strict and problems else 0


def check_table(report: dict) -> str:
    """The human-readable side of the check report: one Markdown table, then the notes."""
    per_image = report["labels_per_image"]
    counts = sorted(report["label_counts"].items(), key=lambda item: -item[1])
    never = report["labels_never_positive"]
    rows = [
        ("images", report["images"]),
        ("labels", report["labels"]),
        ("positive labels per image (mean / median / max)", _spread(per_image)),
        ("images with no positive label", report["images_without_positive"]),
        ("not-annotated (image, label) entries", report["not_annotated_entries"]),
        ("most frequent labels", ", ".join(f"{name} ({count})" for name, count in counts[:5])),
        ("least frequent labels", ", ".join(f"{name} ({count})" for name, count in counts[-5:][::-1])),
        ("labels never positive", f"{len(never)}: {', '.join(never[:10])}" if never else "none"),
        ("missing image files", len(report["missing_files"])),
        ("unreadable image files", len(report["unreadable_files"])),
    ]
    if "extras" in report:
        extras = report["extras"]
        groups = f" in {extras['groups']} groups" if extras["groups"] else ""
        rows.insert(2, ("extra labels", f"{extras['labels']}{groups}"))
    lines = [f"| {report['format']} {report['split']} | |", "|---|---:|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    lines += [f"- {note}" for note in report["notes"]]
    lines += [f"- missing: {path}" for path in report["missing_files"][:5]]
    lines += [
        f"- unreadable: {path}: {reason}" for path, reason in list(report["unreadable_reasons"].items())[:5]
    ]
    return "\n".join(lines)


def _spread(stats: dict) -> str:
    return f"{stats['mean']:.2f} / {stats['median']:g} / {stats['max']}"


def _run_stats(args: argparse.Namespace) -> int:
    from ctran.cli.args import positive
    from ctran.data import inspection
    from ctran.report import write_json

    require("viz", "ctran data stats")
    top = positive(args.top, "--top")
    split, dataset = _open(args)
    names = list(dataset.target_names)
    summary = inspection.label_summary(dataset.target_table, tuple(names))
    counts = dataset.target_table.counts(1)
    chosen = inspection.top_labels(counts, top)
    chosen_names = [names[i] for i in chosen]
    matrix = inspection.cooccurrence(dataset.target_table, chosen)
    args.out.mkdir(parents=True, exist_ok=True)
    title = f"{args.format} {split}: {len(dataset)} images"
    inspection.plot_label_frequency(chosen_names, counts[chosen], args.out / "label_frequency.png", title)
    inspection.plot_cooccurrence(chosen_names, matrix, args.out / "cooccurrence.png", title)
    stats = {"format": args.format, "split": split, "images": len(dataset), **summary}
    stats["cooccurrence"] = {"labels": chosen_names, "counts": matrix.tolist()}
    write_json(args.out / "stats.json", stats)
    print(f"wrote {args.out}/label_frequency.png, cooccurrence.png, stats.json ({len(chosen_names)} labels)")
    return 0


def _run_synth(args: argparse.Namespace) -> int:
    import json

    from tqdm import tqdm

    from ctran.cli.args import positive
    from ctran.data.synthetic import split_sizes, write_synthetic

    images, workers = positive(args.images, "--images"), positive(args.workers, "--workers")
    total = sum(split_sizes(images, args.val, args.test).values())
    with tqdm(total=total, desc="synth", unit=" img", disable=not show_progress(args.quiet)) as bar:
        summary = write_synthetic(
            args.out,
            images,
            args.labels,
            val_images=args.val,
            test_images=args.test,
            annotated_per_image=args.annotated,
            image_size=args.image_size,
            group_size=args.group_size,
            zipf=args.zipf,
            hidden_fraction=args.hidden,
            missed_positives=args.missed,
            seed=args.seed,
            workers=workers,
            progress=bar.update,
        )
    print(json.dumps(summary, indent=2))
    return 0


def _run_emoji(args: argparse.Namespace) -> int:
    import json

    from tqdm import tqdm

    from ctran.cli.args import positive
    from ctran.data.emoji import build_emoji_dataset

    labels, size = positive(args.labels, "--labels"), positive(args.size, "--size")

    def advance(done: int, total: int) -> None:
        bar.total = total  # known once the packages are read: they are read once, by the builder
        bar.update(done - bar.n)

    with tqdm(desc="emoji", unit=" icon", disable=not show_progress(args.quiet)) as bar:
        summary = build_emoji_dataset(
            args.npm,
            args.out,
            labels,
            size,
            args.seed,
            positive(args.workers, "--workers"),
            args.locale,
            progress=advance,
        )
    print(json.dumps({key: summary[key] for key in ("packages", "emoji", "images", "images_per_artwork")}))
    for icon, reason in summary["not_rendered"].items():
        print(f"skipped {icon}: {reason}")
    print(f"train: ctran train --config own-cpu --data csv --data-root {args.out} --out runs/emoji")
    return 0


def _run_pack(args: argparse.Namespace) -> int:
    import json

    from tqdm import tqdm

    from ctran.cli.args import positive
    from ctran.data.pack import pack_split

    if args.format == "digits":
        raise CTranError("the digit scenes are generated, not files: there is nothing to pack")
    shard_size = None if args.shard_size is None else positive(args.shard_size, "--shard-size")
    max_side = None if args.max_side is None else positive(args.max_side, "--max-side")
    summary: dict = {"out": str(args.out), "splits": {}}
    for name, (dataset, source) in _packed_splits(args).items():
        with tqdm(desc=f"pack {name}", unit=" img", disable=not show_progress(args.quiet)) as bar:

            def advance(done: int, total: int, bar=bar) -> None:
                bar.total = total
                bar.update(done - bar.n)

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # counted in the summary instead
                manifest = pack_split(
                    dataset,
                    args.out,
                    name,
                    source,
                    max_side=max_side,
                    shard_size=shard_size,
                    shard_bytes=int(args.shard_bytes),
                    progress=advance,
                )
        summary["splits"][name] = {
            "samples": manifest["samples"],
            "shards": len(manifest["shard_samples"]),
            "bytes": sum(manifest["shard_bytes"]),
            "missing_on_disk": len(getattr(dataset, "missing_files", [])),
            "unreadable": len(manifest["unreadable"]),
        }
    summary["train"] = f"ctran train --config CONFIG --data shards --data-root {args.out} --out RUN"
    print(json.dumps(summary, indent=2))
    return 0


def _packed_splits(args: argparse.Namespace) -> dict:
    """{name: (dataset, source)}: the named publisher splits, or train/val/test as training reads them."""
    from ctran.data.registry import build_dataset, load_splits

    options = dataset_options(args.option)
    source = {"format": args.format, "root": str(Path(args.root).resolve()) if args.root else None}
    source["options"] = options
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # missing files: counted in the summary
        if args.split:
            return {
                split: (build_dataset(args.format, args.root, split, **options), {**source, "split": split})
                for split in dict.fromkeys(args.split)
            }
        splits = load_splits(
            args.format, args.root, seed=args.seed, val_fraction=args.val_fraction, **options
        )
    held = {"val_fraction": args.val_fraction, "seed": args.seed}
    return {role: (dataset, {**source, **held, "role": role}) for role, dataset in splits.items()}
