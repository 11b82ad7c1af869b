"""One-way vs full attention: test accuracy on the digit scenes, two seeds, the same epochs.

Each (attention, seed) pair is one ``ctran train`` run of the demo's C-Tran (``configs/digits.yaml``: the
small CNN under the paper's 3-layer, 4-head transformer, 10 epochs), the same as

    ctran train --config digits --out runs/one_way_accuracy/<A>_seed<S> seed=<S> model.attention=<A>

and is evaluated on the test split in every setting (regular, 25/50/75% known, extra labels). A finished run
folder (its ``metrics.json``) is reused, so the script can be stopped and started again.

Acceptance (issue 15): on every seed, one-way within 0.5 mAP of full in the regular setting, and keeping at
least 80% of full's gain over regular in each partial setting and in the extra setting.

Writes ``benchmarks/results/one_way_accuracy.json`` and ``.md``. Run (about 5 minutes per run on 2 cores):
``PYTHONPATH=src .venv/bin/python benchmarks/one_way_accuracy.py [--seeds 0,1] [--epochs 10]``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from common import RESULTS, machine_info
from ctran.config import load_config
from ctran.report import write_json
from ctran.training.run import train_run

ROOT = Path(__file__).resolve().parent.parent
PATTERNS = ("full", "one_way")
SETTINGS = ("regular", "partial_0.25", "partial_0.5", "partial_0.75", "extra")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1", help="comma-separated seeds (default: 0,1)")
    p.add_argument("--epochs", type=int, default=None, help="epochs of every run (default: the config's, 10)")
    p.add_argument("--runs", type=Path, default=ROOT / "runs/one_way_accuracy", help="run folders go here")
    p.add_argument("--out", type=Path, default=RESULTS / "one_way_accuracy.json", help="JSON output")
    p.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="more config overrides for every run (smoke runs)"
    )
    return p.parse_args(argv)


def run(pattern: str, seed: int, epochs: int | None, folder: Path, extra: list[str]) -> dict:
    """The test metrics of one training run (trained now, or read from a finished run folder)."""
    done = folder / "metrics.json"
    if not done.exists():
        overrides = [f"seed={seed}", f"model.attention={pattern}", *extra]
        overrides += [f"train.epochs={epochs}"] if epochs else []
        start = time.perf_counter()
        train_run(load_config("digits", overrides), folder, progress=False)
        print(f"{folder.name}: trained in {time.perf_counter() - start:.0f} s", flush=True)
    return json.loads(done.read_text())


def scores(metrics: dict) -> dict[str, float]:
    """mAP per setting, in percent."""
    settings = metrics["settings"]
    found = {"regular": settings["regular"]["mAP"], "extra": settings["extra"]["mAP"]}
    found |= {f"partial_{fraction}": m["mAP"] for fraction, m in settings["partial"].items()}
    return {name: found[name] for name in SETTINGS}


def verdict(full: dict[str, float], one_way: dict[str, float]) -> dict:
    """The acceptance checks of one seed: the regular gap and the share of each gain kept."""
    kept = {}
    for name in SETTINGS[1:]:
        gain_full, gain_one_way = full[name] - full["regular"], one_way[name] - one_way["regular"]
        kept[name] = gain_one_way / gain_full if gain_full > 0 else None
    gap = one_way["regular"] - full["regular"]
    return {
        "regular_gap": gap,
        "gain_kept": kept,
        "regular_ok": abs(gap) <= 0.5,
        "gains_ok": all(k is not None and k >= 0.8 for k in kept.values()),
    }


def render(rows: list[dict], checks: dict[int, dict]) -> str:
    """Markdown: mAP per run and setting, then each seed's acceptance checks."""
    lines = [
        "| attention | seed | regular | 25% known | 50% known | 75% known | extra |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        cells = " | ".join(f"{row['mAP'][name]:.2f}" for name in SETTINGS)
        lines.append(f"| {row['attention']} | {row['seed']} | {cells} |")
    lines += [
        "",
        "| seed | regular gap (one-way - full) | gain kept: 25% | 50% | 75% | extra | accepted |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    for seed, check in checks.items():
        kept = " | ".join("n/a" if k is None else f"{k:.0%}" for k in check["gain_kept"].values())
        accepted = "yes" if check["regular_ok"] and check["gains_ok"] else "no"
        lines.append(f"| {seed} | {check['regular_gap']:+.2f} | {kept} | {accepted} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    rows = []
    for seed in seeds:
        for pattern in PATTERNS:
            metrics = run(pattern, seed, args.epochs, args.runs / f"{pattern}_seed{seed}", args.overrides)
            rows.append({"attention": pattern, "seed": seed, "mAP": scores(metrics), "metrics": metrics})
    by = {(r["attention"], r["seed"]): r["mAP"] for r in rows}
    checks = {seed: verdict(by["full", seed], by["one_way", seed]) for seed in seeds}
    table = render(rows, checks)
    print(table)
    epochs = args.epochs or load_config("digits").train.epochs
    write_json(
        args.out,
        {
            "benchmark": "one_way_accuracy",
            "machine": machine_info(torch.device("cpu")),
            "epochs": epochs,
            "overrides": args.overrides,
            "rows": [{k: v for k, v in r.items() if k != "metrics"} for r in rows],
            "checks": {str(seed): check for seed, check in checks.items()},
            "accepted": all(c["regular_ok"] and c["gains_ok"] for c in checks.values()),
        },
    )
    args.out.with_suffix(".md").write_text(table)
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return {"rows": rows, "checks": checks}


if __name__ == "__main__":
    main()
