"""``ctran tag``: tag a whole library, starting from the tags its images already have."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ctran.cli.args import THRESHOLD_DEFAULT, add_quiet_flag, positive, show_progress
from ctran.errors import CTranError
from ctran.tagging.options import MODES, READS, WRITES


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "tag",
        help="tag a folder of images, told the tags each already has (captions, XMP keywords)",
        description="Tag image files, folders (searched recursively) and globs. Each image's existing tags "
        "(its IMAGE.txt caption, its XMP sidecar and embedded keywords) are given to the model as known "
        "labels, so the tags that go with them are predicted better; the new tags are appended after the "
        "existing ones, which keep every byte. A repeated run adds nothing, a killed run resumes (a manifest "
        "in --state), and an unreadable image or tag file is reported and skipped (exit code 1).",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders or glob patterns")
    p.add_argument("--checkpoint", required=True, type=Path, help="a ctran checkpoint (.pt)")
    p.add_argument(
        "--read",
        action="append",
        choices=READS,
        help="where each image's existing tags come from: txt (IMAGE.txt, default), xmp (IMAGE.EXT.xmp / "
        "IMAGE.xmp sidecars and the keywords embedded in the image), none (repeatable)",
    )
    p.add_argument(
        "--write",
        action="append",
        choices=WRITES,
        help="where new tags go: txt (default), xmp (a sidecar; the image file is never modified), none "
        "(repeatable)",
    )
    p.add_argument(
        "--mode",
        default="add",
        choices=MODES,
        help="add (default): append the new tags after the existing ones; replace: rewrite the tag list (the "
        "user's tags first, then the predicted ones; tags ctran added earlier are decided anew); dry-run: "
        "write nothing, print what would change",
    )
    p.add_argument(
        "--separator", default=",", help="the tag separator in .txt captions (default ','; line breaks too)"
    )
    p.add_argument("--aliases", type=Path, help="a file of 'user tag -> label' lines")
    p.add_argument(
        "--exclude",
        action="append",
        metavar="LABEL,...",
        help="labels never to add: told to the model as absent on every image (unless its own tags say "
        "present), so the labels that go with them move too (repeatable)",
    )
    p.add_argument(
        "--extra",
        action="append",
        metavar="LABEL=VALUE,...",
        help="extra (input-only) labels true of every image, e.g. place_indoor=1 (an image's own tags win)",
    )
    p.add_argument("--threshold", type=float, default=None, help=f"probability cut ({THRESHOLD_DEFAULT})")
    p.add_argument("--min-prob", type=float, default=0.0, help="never add a tag below this probability")
    p.add_argument(
        "--max-tags", type=int, default=None, help="add at most N tags per image, most probable first"
    )
    p.add_argument(
        "--jsonl", type=Path, help="one JSON line per image: known, every target's probability, added"
    )
    p.add_argument("--report", type=Path, help="write the summary as JSON here")
    p.add_argument(
        "--state",
        type=Path,
        default=None,
        help="folder of the manifest that makes runs resumable and repeatable (default: .ctran in the "
        "folder holding the images)",
    )
    p.add_argument("--force", action="store_true", help="re-tag images the manifest says are done")
    p.add_argument("--backup", action="store_true", help="keep each changed file's original as FILE.bak")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default: 32)")
    p.add_argument(
        "--workers", type=int, default=None, help="image-decoding processes (default: 1; 0 decodes in-line)"
    )
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument(
        "--precision", default="fp32", choices=("fp32", "bf16", "fp16", "auto"), help="as for ctran predict"
    )
    add_quiet_flag(p)
    p.set_defaults(run=_run_tag)


def _run_tag(args: argparse.Namespace) -> int:
    from ctran.cli.predict import expand_paths
    from ctran.files import file_sha256
    from ctran.inference import load
    from ctran.inference.known import parse_spec
    from ctran.report import write_json
    from ctran.tagging.matching import read_aliases
    from ctran.tagging.options import TagOptions
    from ctran.tagging.report import summary_text
    from ctran.tagging.tagger import tag_library

    options = TagOptions(
        reads=tuple(args.read or ["txt"]),
        writes=tuple(args.write or ["txt"]),
        mode=args.mode,
        separator=args.separator.replace("\\n", "\n").replace("\\t", "\t"),
        aliases=read_aliases(args.aliases) if args.aliases else {},
        exclude=tuple(n.strip() for text in args.exclude or [] for n in text.split(",") if n.strip()),
        extra=parse_spec(args.extra, "--extra"),
        threshold=args.threshold,
        max_tags=args.max_tags,
        min_prob=args.min_prob,
        backup=args.backup,
        force=args.force,
        workers=1 if args.workers is None else args.workers,
    )
    if options.workers < 0:
        raise CTranError(f"--workers must be 0 or more, got {options.workers}")
    predictor = load(args.checkpoint, args.device, positive(args.batch_size, "--batch-size"), args.precision)
    paths, missing = expand_paths(args.paths)
    for pattern in missing:
        print(f"ctran tag: error: {pattern}: no such file, folder or matching image", file=sys.stderr)
    if not paths:
        raise CTranError(f"no image files found in {', '.join(args.paths)}")
    state = args.state or _default_state(paths)
    summary = tag_library(
        predictor,
        paths,
        options,
        state,
        file_sha256(args.checkpoint),  # a retrained file at the same path is a new model
        args.jsonl,
        show_progress(args.quiet),
    )
    if missing:
        summary.skipped["no such file, folder or matching image"] = len(missing)
    print(summary_text(summary, options.mode == "dry-run"), file=sys.stderr, end="")
    if args.report:
        write_json(args.report, summary.to_dict())
    return 1 if summary.errors or missing else 0


def _default_state(paths: list[Path]) -> Path:
    """``.ctran`` in the deepest folder holding every image: the same for every run over one library."""
    return Path(os.path.commonpath([str(p.resolve().parent) for p in paths])) / ".ctran"
