"""Training with missing labels on the digit scenes: test mAP against the fraction of annotations kept.

The protocol of the partial-annotation literature (SST, SARB, HST, DualCoOp): each (training image, target
label) annotation is kept with probability F (``data.keep_annotations``), the rest are *not annotated*; the
test split stays fully annotated and the regular setting (nothing known) is scored. Four recipes, each a
real ``ctran train`` run (``ctran.training.run.train_run``) with the same data, epochs and seed:

- C-Tran, missing labels ignored (the default: never revealed, never in the loss);
- C-Tran, missing labels taken as negatives (``train.missing=negative``, the common baseline);
- the pooled-CNN baseline (``model.kind=baseline``), ignoring them / taking them as negatives.

Writes ``benchmarks/results/missing_labels.{json,md,png}``. Run:
``.venv/bin/python benchmarks/missing_labels.py`` (24 runs, about 40 minutes with one thread per run;
runs already in the JSON with the same settings are kept, so a cut-short invocation resumes; ``--quick``
for a smoke run).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from ctran.config import load_config
from ctran.training.run import train_run

FRACTIONS = (0.1, 0.3, 0.5, 0.7, 0.9, 1.0)
RECIPES = {
    "C-Tran (ignore)": ["model.kind=ctran", "train.missing=ignore"],
    "C-Tran (negative)": ["model.kind=ctran", "train.missing=negative"],
    "baseline (ignore)": ["model.kind=baseline", "train.missing=ignore"],
    "baseline (negative)": ["model.kind=baseline", "train.missing=negative"],
}
RESULTS = Path(__file__).parent / "results"


def run_one(recipe: list[str], fraction: float, common: list[str]) -> dict:
    """One training run; its test metrics (regular setting) and time."""
    config = load_config("digits", [*common, *recipe, f"data.keep_annotations={fraction}"])
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        metrics = train_run(config, out, progress=False)
    return {"mAP": round(metrics["mAP"], 2), "seconds": round(time.perf_counter() - start, 1)}


def previous_results(path: Path, common: list[str]) -> dict[str, dict[str, dict]]:
    """The runs an earlier, cut-short invocation with the same settings finished: they are not run again."""
    table: dict[str, dict[str, dict]] = {name: {} for name in RECIPES}
    if path.exists():
        old = json.loads(path.read_text())
        if old.get("settings") == common:
            for name in RECIPES:
                table[name].update(old["results"].get(name, {}))
    return table


def markdown(table: dict[str, dict[str, dict]], fractions: tuple[float, ...]) -> str:
    header = "| recipe | " + " | ".join(f"F = {f:g}" for f in fractions) + " | mean |"
    lines = [header, "|---|" + "---:|" * (len(fractions) + 1)]
    for recipe, row in table.items():
        values = [row[f"{f:g}"]["mAP"] for f in fractions]
        cells = " | ".join(f"{v:.1f}" for v in values)
        lines.append(f"| {recipe} | {cells} | {sum(values) / len(values):.1f} |")
    return "\n".join(lines)


def plot(table: dict[str, dict[str, dict]], fractions: tuple[float, ...], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for recipe, row in table.items():
        style = "-" if recipe.startswith("C-Tran") else "--"
        ax.plot(fractions, [row[f"{f:g}"]["mAP"] for f in fractions], style, marker="o", label=recipe)
    ax.set_xlabel("fraction of training annotations kept")
    ax.set_ylabel("test mAP (%)")
    ax.set_title("Digit scenes: training with missing labels")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--train-size", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="2 fractions, 1 epoch, 600 scenes: a smoke run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    fractions = (0.3, 1.0) if args.quick else FRACTIONS
    train = 600 if args.quick else args.train_size
    epochs = 1 if args.quick else args.epochs
    common = [
        f"seed={args.seed}",
        f"train.epochs={epochs}",
        f"data.sizes={{train: {train}, val: {train // 4}, test: 2000}}",
        "train.precision=fp32",
        "eval.known_fractions=[]",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "missing_labels_quick" if args.quick else "missing_labels"
    table = previous_results(args.out / f"{stem}.json", common)
    # every recipe at one fraction before the next, saved as it goes: a cut-short run stays comparable
    for fraction in fractions:
        for name, recipe in RECIPES.items():
            if f"{fraction:g}" in table[name]:
                continue
            result = run_one(recipe, fraction, common)
            table[name][f"{fraction:g}"] = result
            print(
                f"{name:<20} F={fraction:<4g} test mAP {result['mAP']:5.1f}  ({result['seconds']} s)",
                flush=True,
            )
            report = {"benchmark": "missing_labels", "settings": common, "fractions": list(fractions)}
            (args.out / f"{stem}.json").write_text(json.dumps({**report, "results": table}, indent=2) + "\n")
    text = markdown(table, fractions)
    (args.out / f"{stem}.md").write_text(text + "\n")
    plot(table, fractions, args.out / f"{stem}.png")
    print(text)


if __name__ == "__main__":
    main()
