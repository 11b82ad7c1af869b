"""``ctran convert-official``: weights saved by the official C-Tran code as a ctran checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

from ctran.cli.args import positive


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "convert-official",
        help="convert an official C-Tran checkpoint (QData/C-Tran) to a ctran checkpoint",
        description="Read a state dict saved by the official C-Tran code (a 'module.' prefix and a "
        "'state_dict' wrapper are handled), map its keys onto ctran's model, and write a checkpoint that "
        "ctran predict/explain/export and ctran.load read. Labels, hidden size, layers and the ResNet depth "
        "are read off the weights. The head count is NOT stored in them: any --heads dividing the hidden "
        "size loads without error but gives different outputs, so pass the --heads the model was trained "
        "with (its training command or log; official default 4). --no-lmt is for models trained without "
        "--use_lmt: with it the state embedding is zeroed and known labels have no effect; without it, a "
        "no-LMT model gets its untrained state rows added to every label token (wrong logits). The command "
        "warns when the state rows look untrained.",
    )
    p.add_argument("source", type=Path, metavar="OFFICIAL.pt", help="the official checkpoint")
    p.add_argument("out", type=Path, metavar="OUT.pt", help="the ctran checkpoint to write")
    p.add_argument(
        "--labels", required=True, type=Path, help="label names, one per line, in the model's order"
    )
    p.add_argument("--heads", type=int, default=4, help="attention heads (official default: 4)")
    p.add_argument("--image-size", type=int, default=576, help="input size (official: 576)")
    p.add_argument(
        "--scale-size", type=int, default=640, help="resize before the centre crop (official: 640; 0: none)"
    )
    p.add_argument(
        "--no-lmt",
        action="store_true",
        help="the model was trained without Label Mask Training (its forward pass adds no state embedding)",
    )
    p.add_argument("--json", type=Path, default=None, help="write a JSON summary here")
    p.set_defaults(run=_run_convert)


def _run_convert(args: argparse.Namespace) -> int:
    from ctran.inference.official import convert_official, read_official, state_rows_look_untrained
    from ctran.report import write_json

    untrained = state_rows_look_untrained(read_official(args.source))
    if untrained and not args.no_lmt:
        print(
            "warning: the negative/positive state rows look untrained (same spread as the unknown row): "
            "this model was probably trained without --use_lmt. If so, convert again with --no-lmt, or "
            "every label token gets an untrained state row added"
        )
    if args.no_lmt and not untrained:
        print("warning: --no-lmt given, but the state rows look trained: known labels will be ignored")
    print(
        f"assuming {args.heads} attention heads: the head count is not stored in the weights; a wrong "
        "--heads loads without error but changes every output (check the model's training command)"
    )
    path, config = convert_official(
        args.source,
        args.out,
        args.labels,
        heads=positive(args.heads, "--heads"),
        image_size=positive(args.image_size, "--image-size"),
        scale_size=args.scale_size or None,
        lmt=not args.no_lmt,
    )
    summary = {"checkpoint": str(path), "source": str(args.source), "lmt": not args.no_lmt, **config}
    print("\n".join(["| field | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in summary.items()]))
    if args.json:
        write_json(args.json, summary)
    return 0
