"""Benchmark re-conditioning: ``Predictor.condition`` on cached image tokens vs a full ``predict``.

``predict`` runs backbone + label tokens + transformer + readout; ``condition`` reuses the tokens of
``encode`` and runs only the second half, which is what changing the known labels of an image costs. Both are
timed on one image (batch 1) on CPU, interleaved, after a warm-up call, for

- ``paper``: ResNet-101 at 576 x 576 (324 image tokens), L = 80, D = 2048, 3 layers, 4 heads;
- ``demo``: the digit-scenes model, small CNN at 48 x 48 (36 tokens), L = 20, D = 128, 3 layers, 4 heads.

Weights are random (speed does not depend on them) and the input is an already-normalised tensor, so image
decoding is not timed. FLOPs of each half are counted with ``torch.utils.flop_counter``: at the paper's
setting the transformer over 404 tokens of width 2048 is itself about 40% of the model's FLOPs, which bounds
what skipping the backbone can save to about 2.6x.

Run: ``.venv/bin/python benchmarks/recondition.py`` (see ``--help``).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from ctran.inference import Predictor
from ctran.model import build_model
from ctran.report import write_json

MODELS = {
    "paper": {"backbone": "resnet101", "image_size": 576, "labels": 80, "dim": 2048},
    "demo": {"backbone": "small_cnn", "image_size": 48, "labels": 20, "dim": 128},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; the defaults take about a minute on a 2-core CPU."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="paper,demo", help=f"comma-separated, from {', '.join(MODELS)}")
    p.add_argument("--repeats", type=int, default=5, help="timed calls of each (default: 5)")
    p.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/recondition.json"), help="JSON output"
    )
    return p.parse_args(argv)


def make_predictor(spec: dict) -> Predictor:
    """A randomly initialised C-Tran with the paper's transformer shape (3 layers, 4 heads, FFN = D)."""
    torch.manual_seed(0)
    model = build_model(spec["labels"], backbone=spec["backbone"], dim=spec["dim"], layers=3, heads=4)
    names = [f"label_{i}" for i in range(spec["labels"])]
    return Predictor(model, names, image_size=spec["image_size"])


def time_calls(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Milliseconds per call, the calls interleaved so that load changes hit all of them alike."""
    for call in calls.values():
        call()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append((time.perf_counter() - start) * 1000)
    return times


def count_flops(call: Callable[[], object]) -> int:
    """FLOPs of one call. The fused attention fast path is one op the counter does not know, so it is off
    while counting (the regular path does the same arithmetic)."""
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with FlopCounterMode(display=False) as counter:
            call()
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)
    return counter.get_total_flops()


def bench_model(name: str, repeats: int) -> dict:
    """Time predict / encode / condition on one image and count the FLOPs of each half."""
    spec = MODELS[name]
    predictor = make_predictor(spec)
    image = torch.randn(1, 3, spec["image_size"], spec["image_size"])
    features = predictor.encode(image)
    known = {"label_0": True, "label_1": False}
    calls = {
        "predict": lambda: predictor.predict(image, known=known),
        "encode": lambda: predictor.encode(image),
        "condition": lambda: predictor.condition(features, known=known),
    }
    times = time_calls(calls, repeats)
    median = {call: statistics.median(values) for call, values in times.items()}
    flops = {call: count_flops(calls[call]) for call in ("encode", "condition")}
    return {
        "name": name,
        **spec,
        "image_tokens": features.tokens.shape[1],
        "repeats": repeats,
        **{f"{call}_ms": round(value, 2) for call, value in median.items()},
        **{f"{call}_ms_min_max": [round(min(v), 2), round(max(v), 2)] for call, v in times.items()},
        "speedup_condition_vs_predict": round(median["predict"] / median["condition"], 2),
        "gflops_encode": round(flops["encode"] / 1e9, 4),
        "gflops_condition": round(flops["condition"] / 1e9, 4),
        "flop_bound_speedup": round(sum(flops.values()) / flops["condition"], 2),
    }


def summary_line(row: dict) -> str:
    return (
        f"{row['name']:>6}: predict {row['predict_ms']:.1f} ms = encode {row['encode_ms']:.1f} + condition "
        f"{row['condition_ms']:.1f} ms; condition {row['speedup_condition_vs_predict']:.2f}x faster "
        f"(GFLOPs: backbone {row['gflops_encode']:.3g}, condition {row['gflops_condition']:.3g}; "
        f"FLOP bound {row['flop_bound_speedup']:.2f}x)"
    )


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown or args.repeats < 1:
        raise SystemExit(f"unknown models {unknown} (choose from {list(MODELS)}) or --repeats < 1")
    rows = []
    with torch.inference_mode():
        for name in names:
            rows.append(bench_model(name, args.repeats))
            print(summary_line(rows[-1]))
    machine = {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": "cpu",
    }
    result = {"machine": machine, "rows": rows}
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
