"""``ctran compare``: the metrics of several runs side by side, in every setting they were scored in."""

from __future__ import annotations

import argparse
from pathlib import Path

from ctran.errors import CTranError
from ctran.extras import require


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "compare",
        help="compare runs (C-Tran, baselines, ablations): every setting's metrics side by side",
        description="Read run folders (ctran train: metrics.json; ctran demo: report.json, C-Tran and the "
        "baseline) and JSON files of ctran evaluate/train/demo --json, and print, per setting (regular, "
        "partial_0.5, extra, partial_0.5+extra, ...), one metric for every run (best in bold), then every "
        "metric with the number of images and labels scored, then what each run trained. Writes "
        "compare.md, compare.json and compare.png (a bar per run and setting) to --out.",
        epilog="examples:\n  ctran compare runs/ctran runs/baseline runs/no-lmt\n"
        "  ctran compare runs/a eval_a.json --metric CF1 --out runs/compare-cf1",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("sources", nargs="+", type=Path, metavar="RUN", help="run folders or results JSON files")
    p.add_argument("--metric", default="mAP", help="metric of the first table and the plot (default: mAP)")
    p.add_argument(
        "--out", type=Path, default=Path("runs/compare"), help="output folder (default: runs/compare)"
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ctran.comparison import compare_runs, load_results, markdown, plot, unique_names
    from ctran.report import write_json

    require("viz", "ctran compare (its compare.png)")
    runs = unique_names([result for source in args.sources for result in load_results(source)])
    comparison = compare_runs(runs)
    available = {key for row in comparison["settings"].values() for m in row.values() if m for key in m}
    if args.metric not in available:
        raise CTranError(
            f"--metric {args.metric!r} is not in these results; they have {', '.join(sorted(available))}"
        )
    table = markdown(comparison, args.metric)
    print(table, end="")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compare.md").write_text(table)
    write_json(args.out / "compare.json", comparison)
    plot(comparison, args.out / "compare.png", args.metric)
    print(f"\nwrote {args.out}/compare.md, compare.json, compare.png")
    return 0
