"""One-way attention at the paper's setting: re-conditioning vs a full prediction, and the evaluation sweep.

Re-conditioning (``Predictor.condition`` on cached features: what changing one image's known labels costs)
is timed against a full ``Predictor.predict`` of the same image, batch 1, for the same weights under both
attention patterns: ResNet-101 (random weights) at 576 x 576, L = 80 and L = 1000, in float32 and in bf16,
each prepared as ``ctran.load`` prepares it (``optimize_for_inference``: fusion, and channels-last in
bf16). Every ratio compares calls of one run at the same numerics, timed interleaved. The FLOPs of both
calls bound the possible speed-up; they are counted on the unfused models (with the label-projection
table), since the flop counter does not see oneDNN's fused convolutions. Each setting also checks that
one-way's cached logits equal its uncached forward (the whole masked sequence).

With ``full`` attention the image rows of every layer depend on the label states, so ``condition`` re-runs
the transformer over all T + L tokens; with ``one_way`` it runs only the L label rows over each layer's
cached image keys and values.

The sweep (``ctran.training.evaluation.collect_scores`` over regular + 25/50/75 % known: one encode per
batch) is timed against four passes with one setting each, for both patterns: two random 576 x 576 images
(L = 80, batch 2) and 512 digit-scenes test images (the demo's model shape, random weights).

Writes ``benchmarks/results/one_way.json`` and ``.md``. Run:
``PYTHONPATH=src .venv/bin/python benchmarks/one_way.py --threads 1`` (see ``--help``; ``--quick``: L = 80,
fp32, digits sweep only).
"""

from __future__ import annotations

import statistics
import time

import torch
from torch.utils.data import DataLoader, Dataset

from common import base_parser, budget_from, machine_info, make_model, setup, time_interleaved, write_report
from ctran.data.registry import build_dataset
from ctran.inference import Predictor
from ctran.inference.performance import optimize_for_inference
from ctran.model import CTran, build_model
from ctran.training.evaluation import Setting, collect_scores
from ctran.training.loaders import eval_loader
from ctran.training.precision import autocast
from peak import count_flops

PATTERNS = ("full", "one_way")
SWEEP = [Setting(), Setting(known_fraction=0.25), Setting(known_fraction=0.5), Setting(known_fraction=0.75)]


def parse_args(argv: list[str] | None = None):
    p = base_parser(__doc__, "one_way")
    p.add_argument("--labels", default="80,1000", help="label counts at the paper setting (default 80,1000)")
    p.add_argument("--precisions", default="fp32,bf16", help="comma-separated (default fp32,bf16)")
    p.add_argument("--scenes", type=int, default=512, help="digit scenes in the demo-size sweep")
    return p.parse_args(argv)


def pair(labels: int, backbone: str = "resnet101", dim: int = 2048) -> dict[str, CTran]:
    """The same random weights under both attention patterns (the pattern has no parameters)."""
    full = make_model(labels, backbone, dim)
    one_way = build_model(labels, backbone=backbone, dim=dim, attention="one_way").eval()
    one_way.load_state_dict(full.state_dict())
    return {"full": full, "one_way": one_way}


def recondition_rows(labels: int, precisions: list[str], budget, device: torch.device) -> list[dict]:
    """Predict vs condition for both patterns at L = ``labels``, one row per (precision, pattern)."""
    names = [f"label_{i}" for i in range(labels)]
    torch.manual_seed(1)
    image = torch.randn(1, 3, 576, 576, device=device)
    known = {"label_0": True, "label_1": False}
    flops = count_model_flops(labels, names, image, known, device)
    rows = []
    for precision in precisions:
        models = {  # fused for one precision, as ctran.load does: fresh models (the same weights) for each
            pattern: optimize_for_inference(model.to(device), precision != "fp32", precision=precision)
            for pattern, model in pair(labels).items()
        }
        predictors = {
            pattern: Predictor(model, names, image_size=576, device=device, precision=precision)
            for pattern, model in models.items()
        }
        features = {a: p.encode(image) for a, p in predictors.items()}
        calls = {}
        for pattern, predictor in predictors.items():
            calls[f"{pattern}_predict"] = lambda p=predictor: p.predict(image, known=known)
            calls[f"{pattern}_condition"] = lambda p=predictor, f=features[pattern]: p.condition(
                f, known=known
            )
        start = time.perf_counter()
        for call in calls.values():
            call()  # warm-up
        times = time_interleaved(calls, budget.repeats(time.perf_counter() - start), device)
        for pattern, predictor in predictors.items():
            predict_s = statistics.median(times[f"{pattern}_predict"])
            condition_s = statistics.median(times[f"{pattern}_condition"])
            rows.append(
                {
                    "name": f"recondition_r101_576_L{labels}_b1_{precision}_{pattern}",
                    "labels": labels,
                    "precision": precision,
                    "attention": pattern,
                    "predict_s": round(predict_s, 4),
                    "condition_s": round(condition_s, 4),
                    "speedup": round(predict_s / condition_s, 2),
                    "speedup_spread": spread(times[f"{pattern}_predict"], times[f"{pattern}_condition"]),
                    "gflops_predict": round(flops[pattern]["predict"] / 1e9, 2),
                    "gflops_condition": round(flops[pattern]["condition"] / 1e9, 2),
                    "flop_bound_speedup": round(flops[pattern]["predict"] / flops[pattern]["condition"], 2),
                    "repeats": len(times[f"{pattern}_predict"]),
                    "cached_vs_uncached_max_abs_logit_diff": cache_parity(predictor, image, known),
                }
            )
            print(f"{rows[-1]['name']}: condition {rows[-1]['speedup']}x cheaper than predict", flush=True)
    return rows


def spread(predict_s: list[float], condition_s: list[float]) -> list[float]:
    """The speed-up of the slowest and of the fastest interleaved round."""
    ratios = sorted(p / c for p, c in zip(predict_s, condition_s, strict=True))
    return [round(ratios[0], 2), round(ratios[-1], 2)]


def count_model_flops(labels: int, names: list[str], image: torch.Tensor, known: dict, device) -> dict:
    """FLOPs of predict and condition per pattern, on unfused models with the label-projection table."""
    flops = {}
    for pattern, model in pair(labels).items():
        model.to(device).freeze_label_projections()
        predictor = Predictor(model, names, image_size=576, device=device)
        features = predictor.encode(image)
        flops[pattern] = {
            "predict": count_flops(lambda p=predictor: p.predict(image, known=known)),
            "condition": count_flops(lambda p=predictor, f=features: p.condition(f, known=known)),
        }
    return flops


def cache_parity(predictor: Predictor, image: torch.Tensor, known: dict) -> float:
    """Largest |logit| difference between ``condition`` on cached features and the whole masked sequence."""
    states = predictor.states(known, None, 1).to(image.device)
    with torch.inference_mode(), autocast(image.device, predictor.precision):
        cached = predictor.model.decode(predictor.model.encode(image), states).float()
        whole = predictor.model(image, states, return_attention=True).logits.float()
    return float((cached - whole).abs().max())


class RandomImages(Dataset):
    """Random normalised images with random targets: the loader shape ``collect_scores`` reads."""

    def __init__(self, count: int, labels: int, size: int = 576) -> None:
        generator = torch.Generator().manual_seed(2)
        self.images = torch.randn(count, 3, size, size, generator=generator)
        self.targets = (torch.rand(count, labels, generator=generator) < 0.1).long()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i], self.targets[i], torch.zeros(0, dtype=torch.long), i


def sweep_rows(name: str, models: dict[str, CTran], loader: DataLoader, budget, device) -> list[dict]:
    """The four-setting sweep vs four one-setting passes, for each pattern (interleaved together)."""
    calls = {}
    for pattern, model in models.items():
        model.to(device)
        calls[f"{pattern}_sweep"] = lambda m=model: collect_scores(m, loader, SWEEP, device=device)
        calls[f"{pattern}_four_passes"] = lambda m=model: [
            collect_scores(m, loader, [s], device=device) for s in SWEEP
        ]
    start = time.perf_counter()
    calls["one_way_sweep"]()
    times = time_interleaved(calls, budget.repeats(10 * (time.perf_counter() - start)), device)
    images = len(loader.dataset)
    rows = []
    for pattern in models:
        sweep, four = (statistics.median(times[f"{pattern}_{kind}"]) for kind in ("sweep", "four_passes"))
        rows.append(
            {
                "name": f"sweep_{name}_{pattern}",
                "attention": pattern,
                "images": images,
                "settings": [s.name for s in SWEEP],
                "sweep_images_per_s": round(images / sweep, 3),
                "four_passes_images_per_s": round(images / four, 3),
                "speedup": round(four / sweep, 2),
                "repeats": len(times[f"{pattern}_sweep"]),
            }
        )
        print(f"{rows[-1]['name']}: sweep {rows[-1]['speedup']}x faster than four passes", flush=True)
    return rows


def render(recondition: list[dict], sweeps: list[dict]) -> str:
    """Markdown tables: re-conditioning per setting, then the sweeps."""
    lines = [
        "| L | precision | attention | predict (s) | condition (s) | condition cheaper by | GFLOPs predict | "
        "GFLOPs condition | FLOP bound | cached vs uncached |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in recondition:
        lines.append(
            f"| {r['labels']} | {r['precision']} | {r['attention']} | {r['predict_s']:.3f} | "
            f"{r['condition_s']:.3f} | **{r['speedup']:.1f}x** | {r['gflops_predict']:.1f} | "
            f"{r['gflops_condition']:.1f} | {r['flop_bound_speedup']:.1f}x | "
            f"{r['cached_vs_uncached_max_abs_logit_diff']:.1e} |"
        )
    lines += [
        "",
        "| sweep | attention | images | sweep (images/s) | four passes (images/s) | sweep faster by |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in sweeps:
        lines.append(
            f"| {r['name'].removeprefix('sweep_').removesuffix('_' + r['attention'])} | {r['attention']} | "
            f"{r['images']} | {r['sweep_images_per_s']:.3g} | {r['four_passes_images_per_s']:.3g} | "
            f"{r['speedup']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = setup(args)
    budget = budget_from(args, 60.0)
    labels = [80] if args.quick else [int(n) for n in args.labels.split(",")]
    precisions = ["fp32"] if args.quick else [p.strip() for p in args.precisions.split(",")]
    started = machine_info(device)
    recondition = [row for n in labels for row in recondition_rows(n, precisions, budget, device)]
    scenes = 128 if args.quick else args.scenes
    digits = build_dataset("digits", None, "test", image_size=48, scale_size=None, size=scenes)
    demo_models = pair(len(digits.label_names), "small_cnn", 128)
    sweeps = sweep_rows("digits", demo_models, eval_loader(digits, 256), budget, device)
    if not args.quick:
        loader = DataLoader(RandomImages(2, 80), batch_size=2)
        sweeps += sweep_rows("r101_576_L80", pair(80), loader, budget, device)
    table = render(recondition, sweeps)
    print(table)
    machine = {**machine_info(device), "load_average_1min_at_start": started["load_average_1min"]}
    write_report(args.out, "one_way", machine, recondition + sweeps)
    args.out.with_suffix(".md").write_text(table)
    print(f"wrote {args.out.with_suffix('.md')}")
    return {"recondition": recondition, "sweeps": sweeps}


if __name__ == "__main__":
    main()
