"""``ctran explain``: where each label token looks in an image (heat-maps), and at which other labels."""

from __future__ import annotations

import argparse
from pathlib import Path

from ctran.cli.args import positive
from ctran.cli.predict import add_label_options
from ctran.extras import require


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "explain",
        help="attention heat-maps of label tokens over an image, and the label-to-label attention",
        description="For each chosen label, overlay its token's attention over the image tokens on the image "
        "(last layer, heads averaged; --rollout follows the attention through all layers). Writes "
        "overview.png, attention_<label>.png per label, label_attention.png and explanation.json (the raw "
        "maps) to --out.",
    )
    p.add_argument("image", type=Path, metavar="IMAGE", help="an image file")
    p.add_argument("--checkpoint", required=True, type=Path, help="a ctran checkpoint (.pt)")
    p.add_argument(
        "--labels",
        default=None,
        help="comma-separated labels to explain (default: the --top-k most probable)",
    )
    p.add_argument(
        "--top-k", type=int, default=5, metavar="K", help="labels explained by default (default: 5)"
    )
    add_label_options(p)
    p.add_argument(
        "--rollout", action="store_true", help="attention rollout across layers, not the last layer"
    )
    p.add_argument(
        "--out", type=Path, default=None, help="output folder (default: runs/explain/<image name>)"
    )
    p.add_argument("--json", type=Path, default=None, help="also write explanation.json here")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.set_defaults(run=_run_explain)


def _run_explain(args: argparse.Namespace) -> int:
    from ctran.inference import load
    from ctran.inference.explain import save_explanation
    from ctran.inference.known import parse_spec
    from ctran.report import write_json

    require("viz", "ctran explain")
    predictor = load(args.checkpoint, args.device)
    labels = [name.strip() for name in args.labels.split(",") if name.strip()] if args.labels else None
    explanation = predictor.explain(
        args.image,
        labels=labels,
        known=parse_spec(args.known, "--known"),
        extra=parse_spec(args.extra, "--extra"),
        rollout=args.rollout,
        top_k=positive(args.top_k, "--top-k"),
    )
    out = args.out or Path("runs/explain") / args.image.stem
    written = save_explanation(explanation, out)
    lines = ["| label | probability | attention peak (row, col) of the grid |", "|---|---:|---|"]
    for label in explanation.labels:
        grid = explanation.maps[label]
        peak = tuple(int(i) for i in divmod(int(grid.argmax()), grid.shape[1]))
        if label in explanation.known:
            shown = f"given {int(explanation.known[label])}"
        else:
            shown = f"{explanation.probs[label]:.3f}" if label in explanation.probs else "-"
        lines.append(f"| {label} | {shown} | {peak} of {explanation.grid} |")
    print(f"{explanation.image} ({explanation.method} attention)\n" + "\n".join(lines))
    print("wrote " + ", ".join(str(path) for path in written))
    if args.json:
        write_json(args.json, explanation.to_dict())
    return 0
