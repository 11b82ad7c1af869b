"""``ctran predict``: label probabilities for image files, folders and globs, given what is already known."""

from __future__ import annotations

import argparse
import csv
import glob
import io
import sys
from pathlib import Path

from ctran.cli.args import THRESHOLD_DEFAULT, add_quiet_flag, positive, show_progress
from ctran.errors import CTranError

FORMATS = ("table", "json", "csv")
GLOB_CHARS = frozenset("*?[")


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "predict",
        help="predict the labels of images, optionally told some labels (known) or metadata (extra)",
        description="Predict label probabilities for image files, folders (searched recursively) and globs. "
        "Labels given with --known are inputs, not predictions: they are listed under 'known' and the other "
        "labels are predicted knowing them. Unreadable images are reported on stderr and skipped; the exit "
        "code is then 1.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders or glob patterns")
    p.add_argument("--checkpoint", required=True, type=Path, help="a ctran checkpoint (.pt)")
    add_label_options(p)
    cut = p.add_mutually_exclusive_group()
    cut.add_argument("--threshold", type=float, default=None, help=f"probability cut ({THRESHOLD_DEFAULT})")
    cut.add_argument(
        "--calibrated",
        action="store_true",
        help="the per-label thresholds stored in the checkpoint (an error if it has none)",
    )
    p.add_argument(
        "--top-k", type=int, default=None, metavar="K", help="list only each image's K best labels"
    )
    p.add_argument(
        "--suggest",
        type=int,
        default=None,
        metavar="K",
        help="also list each image's K unknown labels most worth telling next (by the expected reduction of "
        "the other labels' uncertainty; see --suggest-method)",
    )
    p.add_argument(
        "--suggest-method",
        default="information",
        choices=("information", "uncertainty"),
        help="rank --suggest by information (default: re-predicts with both answers for every label) or "
        "uncertainty (the labels' own, no extra model call)",
    )
    p.add_argument("--format", default="table", choices=FORMATS, help="output format (default: table)")
    p.add_argument("--output", type=Path, default=None, help="write the output here instead of stdout")
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default: 32)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument(
        "--precision",
        default="fp32",
        choices=("fp32", "bf16", "fp16", "auto"),
        help="fp32 (default: the model's exact numbers), bf16 (about 3x faster on CPUs with AVX512-BF16 and "
        "on GPUs; probabilities move by at most about 0.01), fp16 (CUDA), or auto (bf16 where supported)",
    )
    add_quiet_flag(p)
    p.set_defaults(run=_run_predict)


def add_label_options(p: argparse.ArgumentParser) -> None:
    """--known and --extra, shared with ``ctran explain``."""
    p.add_argument(
        "--known",
        action="append",
        metavar="LABEL=VALUE,...",
        help="target labels you already know, e.g. person=1,car=0 (values 1/0, true/false, yes/no, +/-; "
        "repeatable)",
    )
    p.add_argument(
        "--extra",
        action="append",
        metavar="LABEL=VALUE,...",
        help="extra (input-only) labels, e.g. context_beach=1 (repeatable)",
    )


def expand_paths(patterns: list[str]) -> tuple[list[Path], list[str]]:
    """Files, folders (recursive, image files only) and globs -> (image paths, patterns matching nothing)."""
    from PIL import Image

    extensions = set(Image.registered_extensions())
    found: list[Path] = []
    missing: list[str] = []
    for pattern in patterns:
        path = Path(pattern)
        if not path.exists() and GLOB_CHARS & set(pattern):
            matches = [Path(m) for m in sorted(glob.glob(pattern, recursive=True))]
        else:
            matches = [path] if path.exists() else []
        for match in matches:
            if match.is_dir():
                found += sorted(f for f in match.rglob("*") if f.is_file() and f.suffix.lower() in extensions)
            else:
                found.append(match)
        if not matches:
            missing.append(pattern)
    return list(dict.fromkeys(found)), missing


def _run_predict(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ctran.inference import load
    from ctran.inference.known import parse_spec
    from ctran.report import write_json

    batch_size = positive(args.batch_size, "--batch-size")
    top_k = None if args.top_k is None else positive(args.top_k, "--top-k")
    suggest = None if args.suggest is None else positive(args.suggest, "--suggest")
    predictor = load(args.checkpoint, args.device, batch_size, args.precision)
    known, extra = parse_spec(args.known, "--known"), parse_spec(args.extra, "--extra")
    predictor.states(known, extra, 1)  # every label mistake ends here, before any image is read
    threshold = "calibrated" if args.calibrated else args.threshold  # None: the checkpoint's default
    predictor.cutoffs(threshold)

    paths, missing = expand_paths(args.paths)
    failures = [f"{pattern}: no such file, folder or matching image" for pattern in missing]
    for message in failures:
        print(f"ctran predict: error: {message}", file=sys.stderr)
    if not paths:
        raise CTranError(f"no image files found in {', '.join(args.paths)}")

    results, suggestions, moved = [], [], []
    bars = show_progress(args.quiet) and len(paths) > batch_size
    with tqdm(total=len(paths), unit="img", desc="predict", disable=not bars) as bar:
        for start in range(0, len(paths), batch_size):
            pixels, names = [], []
            for path in paths[start : start + batch_size]:
                try:
                    pixels.append(predictor.read(path)[0])
                    names.append(str(path))
                except CTranError as err:
                    failures.append(str(err))
                    tqdm.write(f"ctran predict: error: {err}", file=sys.stderr)
            if pixels:
                features = predictor.encode(pixels, names=names)
                results += predictor.condition(features, known, extra, threshold)
                if suggest:
                    found = predictor.suggest(features, known, extra, suggest, args.suggest_method)
                    suggestions += [[s.to_dict() for s in image] for image in found]
                if known or extra:
                    moved += [m.to_dict() for m in predictor.influence(features, known, extra)]
            bar.update(len(paths[start : start + batch_size]))

    rows = [_limited(r.to_dict(), top_k) for r in results]
    if suggest:
        rows = [{**row, "suggest": asked} for row, asked in zip(rows, suggestions, strict=True)]
    if moved:
        rows = [{**row, "moved_by_known": m} for row, m in zip(rows, moved, strict=True)]
    _emit(render(rows, args.format, predictor.target_names, top_k), args.output)
    if args.json:
        write_json(args.json, rows)
    if failures:
        print(f"ctran predict: {len(failures)} of {len(paths) + len(missing)} inputs failed", file=sys.stderr)
    return 1 if failures else 0


def _limited(row: dict, top_k: int | None) -> dict:
    """With --top-k, keep each image's K most probable labels (most probable first)."""
    if top_k is None:
        return row
    best = sorted(row["probs"].items(), key=lambda item: -item[1])[:top_k]
    return {**row, "probs": dict(best), "predicted": [n for n in row["predicted"] if n in dict(best)]}


def render(rows: list[dict], fmt: str, target_names: list[str], top_k: int | None = None) -> str:
    """The results as a Markdown table, JSON or CSV (one row per image, one column per target label); rows
    with ``suggest`` (``--suggest``) get an "ask next" column, and rows with ``moved_by_known`` (``--known``
    or ``--extra``) a "telling the model moved" block under the table."""
    asking = bool(rows) and "suggest" in rows[0]
    if fmt == "json":
        import json

        return json.dumps(rows, indent=2) + "\n"
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["image", "predicted", "known", *(["ask_next"] if asking else []), *target_names])
        for row in rows:
            given = ";".join(f"{name}={int(value)}" for name, value in row["known"].items())
            probs = [_number(row["probs"].get(name)) for name in target_names]
            ask = [";".join(s["label"] for s in row["suggest"])] if asking else []
            writer.writerow([row["image"], ";".join(row["predicted"]), given, *ask, *probs])
        return buffer.getvalue()
    title = f"top {top_k} (* = above threshold)" if top_k else "predicted (probability)"
    lines = [
        f"| image | known | {title} |{' ask next |' if asking else ''}",
        "|---|---|---|" + "---|" * asking,
    ]
    for row in rows:
        given = ", ".join(f"{name}={int(value)}" for name, value in row["known"].items()) or "-"
        if top_k:
            shown = [(n, p, "*" if n in row["predicted"] else "") for n, p in row["probs"].items()]
        else:
            shown = [(n, row["probs"][n], "") for n in row["predicted"]]
        labels = ", ".join(f"{n}{mark} {p:.2f}" for n, p, mark in shown) or "-"
        ask = f" {_asked(row['suggest'])} |" if asking else ""
        lines.append(f"| {row['image']} | {given} | {labels} |{ask}")
    for row in rows:
        if "moved_by_known" in row:
            lines += ["", *_moved(row["image"], row["moved_by_known"])]
    return "\n".join(lines) + "\n"


def _moved(image: str, moved: dict) -> list[str]:
    """The "telling the model moved" block of one image: the largest changes of the other labels, then
    each known label's own share when several were told (with one, it is the same list)."""
    overall = ", ".join(
        f"{c['label']} {c['delta']:+.3f} ({c['p_without']:.3f} -> {c['p_with']:.3f})"
        for c in moved["overall"]
    )
    lines = [f"telling the model moved ({image}):", f"  {overall or '-'}"]
    if len(moved["by_label"]) > 1:
        for name, changes in moved["by_label"].items():
            lines.append(
                f"  {name}, given the others: "
                + ", ".join(f"{c['label']} {c['delta']:+.3f}" for c in changes)
            )
    return lines


def _asked(suggestions: list[dict]) -> str:
    """``digit_3 (0.42 bits), ...``: the labels to ask next, and the uncertainty each should settle."""
    if not suggestions:
        return "-"
    bits = [s["information"] if s["information"] is not None else s["uncertainty"] for s in suggestions]
    return ", ".join(f"{s['label']} ({b:.2f} bits)" for s, b in zip(suggestions, bits, strict=True))


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


def _emit(text: str, output: Path | None) -> None:
    if output is None:
        sys.stdout.write(text)
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    print(f"wrote {output}", file=sys.stderr)
