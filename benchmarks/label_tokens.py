"""Thousands of label tokens: what a training step costs against L, and what ``train.label_tokens`` saves.

Three parts (``--parts``, default all):

- ``flops``: FLOPs of one training step (forward + backward) per image at the paper's size (ResNet-101,
  576 x 576, D = 2048, 3 layers, 4 heads), counted with ``torch.utils.flop_counter`` on the meta device (no
  memory, no time: nothing runs), for L = 80, 1,000, 9,605 with every label token, and at L = 9,605 with K
  kept tokens (``label_index``) and with ``model.attention=one_way``; the backbone apart from the rest
  (input projection, transformer over image and label tokens, readout).
- ``cpu``: time and peak memory of one training step (LMT draw, kept tokens, forward, backward, AdamW) on
  this CPU at a small width (small CNN at 48 x 48: 36 image tokens; D = 32, 2 layers, 1 head; batch 2,
  float32; sparse truth: about 10 labels annotated per image, the rest unknown, as Open Images), every
  token vs ``train.label_tokens`` = ``--kept`` (interleaved rounds; the peak from the profiler's
  allocation events, as every benchmark here).
- ``accuracy``: ``ctran train`` twice on the same synthetic many-label data (``ctran data synth``), the same
  seed and recipe, with every token and with ``train.label_tokens`` = each of ``--budgets``; the test
  split's regular and partial mAP (``metrics.json``) and the training time. What is recommended must stay
  within 0.5 mAP of every token in every setting.

Run: ``.venv/bin/python benchmarks/label_tokens.py --threads 2`` (see ``--help``; the accuracy part trains
several models: about an hour on two cores).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from common import (
    base_parser,
    budget_from,
    machine_info,
    run_with_peak,
    setup,
    time_interleaved,
    write_report,
)
from ctran.config import load_config
from ctran.data.synthetic import write_synthetic
from ctran.model import build_model
from ctran.states import UNKNOWN
from ctran.training.label_mask import kept_labels, sample_training_states
from ctran.training.losses import bce_terms
from ctran.training.run import train_run

PAPER = {"backbone": "resnet101", "dim": 2048, "layers": 3, "heads": 4, "image_size": 576}
SMALL = {"backbone": "small_cnn", "dim": 32, "layers": 2, "heads": 1, "image_size": 48, "batch": 2}
ANNOTATED = 10  # labels annotated per image (Open Images: about 10 of 9,605)
OPEN_IMAGES = 9605
# Over the folder's ctran.yaml (small CNN, D = 64, 2 layers, AdamW, cosine): a batch of 16 and 2 heads,
# so that training with every one of the 500 tokens fits this 2-core machine.
ACCURACY_RECIPE = ["train.batch_size=16", "model.heads=2", "data.num_workers=0", "train.device=cpu"]


def parse_args(argv: list[str] | None = None):
    p = base_parser(__doc__, "label_tokens")
    p.add_argument("--parts", default="flops,cpu,accuracy", help="comma-separated: flops, cpu, accuracy")
    p.add_argument("--kept", type=int, default=256, help="train.label_tokens of the cpu part (default 256)")
    p.add_argument("--data", type=Path, default=Path("/tmp/ctran-label-tokens-synth"), help="synthetic set")
    p.add_argument("--runs", type=Path, default=Path("/tmp/ctran-label-tokens-runs"), help="run folders")
    p.add_argument("--images", type=int, default=1000, help="synthetic training images (default 1000)")
    p.add_argument("--labels", type=int, default=500, help="synthetic labels (default 500)")
    p.add_argument("--epochs", type=int, default=5, help="epochs of each accuracy run (default 5)")
    p.add_argument("--budgets", default="0,128", help="train.label_tokens to compare (0: every token)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds of the accuracy runs (default 0)")
    return p.parse_args(argv)


def _model(labels: int, shape: dict, attention: str = "full") -> torch.nn.Module:
    """A random C-Tran of ``shape``'s backbone, width, layers and heads, in training mode."""
    sizes = {key: shape[key] for key in ("backbone", "dim", "layers", "heads")}
    return build_model(labels, pretrained=False, attention=attention, **sizes).train()


# ------------------------------------------------------------------------------------------------ flops


def step_flops(labels: int, kept: int | None = None, attention: str = "full") -> dict:
    """GFLOPs per image of a training step (forward + backward, batch 1) at the paper's size."""
    with torch.device("meta"):
        model = _model(labels, PAPER, attention=attention)
        size = PAPER["image_size"]
        images = torch.empty(1, 3, size, size)
        index = None if kept is None else torch.arange(kept)
        states = torch.full((1, kept or labels), UNKNOWN, dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        model(images, states, label_index=index).sum().backward()
    total = counter.get_total_flops()
    backbone = counter.get_flop_counts().get("CTran.backbone", {})
    backbone_flops = sum(backbone.values())
    return {
        "labels": labels,
        "tokens": kept or labels,
        "attention": attention,
        "step_gflops": round(total / 1e9, 1),
        "backbone_gflops": round(backbone_flops / 1e9, 1),
        "rest_gflops": round((total - backbone_flops) / 1e9, 1),
        "rest_over_backbone": round((total - backbone_flops) / backbone_flops, 1),
    }


def flops_rows() -> list[dict]:
    rows = [step_flops(labels) for labels in (80, 1000, OPEN_IMAGES)]
    rows += [step_flops(OPEN_IMAGES, kept) for kept in (2000, 1000, 500)]
    rows += [step_flops(OPEN_IMAGES, None, "one_way"), step_flops(OPEN_IMAGES, 1000, "one_way")]
    return rows


# ------------------------------------------------------------------------------------------------ cpu


def sparse_truth(batch: int, labels: int, seed: int = 0) -> torch.Tensor:
    """(B, L) truth with ``ANNOTATED`` random labels annotated per image (30% of them positive)."""
    g = torch.Generator().manual_seed(seed)
    chosen = torch.rand(batch, labels, generator=g).argsort(1)[:, :ANNOTATED]  # (B, A)
    values = (torch.rand(batch, ANNOTATED, generator=g) < 0.3).long()
    return torch.full((batch, labels), UNKNOWN, dtype=torch.long).scatter_(1, chosen, values)


def training_step(model, optimizer, images, truth, budget: int):
    """One step as the trainer runs it; returns a call. ``budget`` 0: every label token."""
    indices = torch.arange(len(truth))

    def call() -> None:
        states = sample_training_states(truth, indices, 0, 1)
        target, inputs, options = truth, states, {}
        if budget:
            keep = kept_labels(truth, states, truth.shape[1], budget, 0, 1, indices)
            target, inputs, options = truth[:, keep], states[:, keep], {"label_index": keep}
        loss_sum, count = bce_terms(model(images, inputs, **options), target, inputs)
        (loss_sum / count.clamp(min=1)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return call


def cpu_rows(args, device: torch.device) -> list[dict]:
    rows = []
    budget = budget_from(args, 20.0)
    for labels in (80, 1000, OPEN_IMAGES):
        torch.manual_seed(0)
        model = _model(labels, SMALL)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        images = torch.randn(SMALL["batch"], 3, SMALL["image_size"], SMALL["image_size"])
        truth = sparse_truth(SMALL["batch"], labels)
        calls = {
            "every token": training_step(model, optimizer, images, truth, 0),
            f"label_tokens={args.kept}": training_step(model, optimizer, images, truth, args.kept),
        }
        peaks = {name: run_with_peak(call, device)[1] for name, call in calls.items()}  # also warms up
        start = time.perf_counter()
        for call in calls.values():
            call()
        times = time_interleaved(calls, budget.repeats(time.perf_counter() - start), device)
        for name in calls:
            median = sorted(times[name])[len(times[name]) // 2]
            rows.append(
                {
                    "name": f"L={labels} {name}",
                    "labels": labels,
                    "policy": name,
                    "ms_per_image": round(1e3 * median / SMALL["batch"], 2),
                    "peak_mb": round(peaks[name] / 1e6, 1),
                    "repeats": len(times[name]),
                }
            )
            print(rows[-1], flush=True)
    return rows


# ------------------------------------------------------------------------------------------------ accuracy


def accuracy_rows(args) -> list[dict]:
    if not (args.data / "ctran.yaml").is_file():
        write_synthetic(args.data, args.images, args.labels, val_images=150, test_images=400, workers=2)
    rows = []
    runs = [(int(seed), int(budget)) for seed in args.seeds.split(",") for budget in args.budgets.split(",")]
    for seed, budget in runs:
        out = args.runs / f"label_tokens_{budget}_seed{seed}"
        metrics_file = out / "metrics.json"
        if not metrics_file.is_file():
            overrides = [f"train.label_tokens={budget}", f"train.epochs={args.epochs}", f"seed={seed}"]
            config = load_config(str(args.data / "ctran.yaml"), [*overrides, *ACCURACY_RECIPE])
            train_run(config, out, progress=False)
        metrics = json.loads(metrics_file.read_text())
        settings = metrics["settings"]
        row = {
            "name": ("every token" if budget == 0 else f"label_tokens={budget}") + f", seed {seed}",
            "label_tokens": budget,
            "seed": seed,
            "mAP": round(metrics["mAP"], 2),
            "train_seconds": round(metrics["train_seconds"], 1),
        }
        for fraction, values in settings.get("partial", {}).items():
            row[f"partial_{fraction}_mAP"] = None if values.get("mAP") is None else round(values["mAP"], 2)
        rows.append(row)
        print(row, flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = setup(args)
    parts = set(args.parts.split(","))
    previous = json.loads(args.out.read_text()) if args.out.is_file() else {}
    report = {key: previous.get(key) for key in ("flops", "cpu", "accuracy")}
    if "flops" in parts:
        report["flops"] = flops_rows()
        print(json.dumps(report["flops"], indent=1))
    if "cpu" in parts:
        report["cpu"] = cpu_rows(args, device)
    if "accuracy" in parts:
        report["accuracy"] = accuracy_rows(args)
    rows = [row for key in ("flops", "cpu", "accuracy") for row in report[key] or []]
    write_report(args.out, "label_tokens", machine_info(device), rows, **report)
    args.out.with_suffix(".md").write_text(markdown(report))


def markdown(report: dict) -> str:
    """The three tables of ``report`` (a part not run yet is left out)."""
    lines = []
    if report["flops"]:
        lines += [
            "Training step per image at 576 px, D = 2048, 3 layers (GFLOPs, forward + backward, counted):",
            "",
            "| L | label tokens run | attention | step | backbone | the rest | rest / backbone |",
            "|---:|---:|---|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {r['labels']} | {r['tokens']} | {r['attention']} | {r['step_gflops']:.0f} | "
            f"{r['backbone_gflops']:.0f} | {r['rest_gflops']:.0f} | {r['rest_over_backbone']}x |"
            for r in report["flops"]
        ]
    if report["cpu"]:
        lines += ["", f"Training step on this CPU ({SMALL}):", "", "| L | policy | ms/image | peak MB |"]
        lines += ["|---:|---|---:|---:|"]
        lines += [
            f"| {r['labels']} | {r['policy']} | {r['ms_per_image']} | {r['peak_mb']} |" for r in report["cpu"]
        ]
    if report["accuracy"]:
        partial = [key for key in report["accuracy"][0] if key.startswith("partial_")]
        lines += ["", "Synthetic many-label data, test mAP:", ""]
        lines += ["| policy | regular | " + " | ".join(partial) + " | train s |"]
        lines += ["|---|---:|" + "---:|" * len(partial) + "---:|"]
        rows = report["accuracy"] + seed_means(report["accuracy"], ["mAP", *partial, "train_seconds"])
        lines += [
            f"| {r['name']} | {r['mAP']} | "
            + " | ".join(str(r.get(k)) for k in partial)
            + f" | {r['train_seconds']} |"
            for r in rows
        ]
    return "\n".join(lines) + "\n"


def seed_means(rows: list[dict], keys: list[str]) -> list[dict]:
    """One row per ``label_tokens`` value with each key's mean over its seeds (where several ran)."""
    means = []
    for budget in dict.fromkeys(r["label_tokens"] for r in rows):
        runs = [r for r in rows if r["label_tokens"] == budget]
        if len(runs) > 1:
            name = (
                "every token" if budget == 0 else f"label_tokens={budget}"
            ) + f", mean of {len(runs)} seeds"
            means.append({"name": name, **{k: round(sum(r[k] for r in runs) / len(runs), 2) for k in keys}})
    return means


if __name__ == "__main__":
    main()
