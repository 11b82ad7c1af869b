"""Inference: images/s and peak memory of ours vs the official formulation, on the same weights.

For each setting (input size, number of labels L, batch size) it builds our C-Tran (random weights; speed
does not depend on them) and ``reference.ReferenceCTran`` holding the same weights, runs each once under the
memory profiler, refuses to go on unless their float32 logits agree, then times forward passes of the
reference and of each of our variants interleaved (median, min/max in the JSON). Our variants are the
switches of ``ctran.inference.performance``: float32 (the reference's numerics), channels_last, bf16
autocast, both, and ``torch.compile`` with ``--compile``. A bf16 variant's logits are checked against
float32 within ``BF16_ATOL``.

Settings: ResNet-101 at 576 x 576 (the paper's) and 448 x 448 with L = 80, 500, 1000 and batch 1 and 8 (the
default run takes the subset in ``DEFAULT``; ``--full`` all of them), and the digit-scenes model (the demo
checkpoint when given, batch 256). With ``--demo-checkpoint`` it also evaluates that model on the digit-scenes
test split in float32 and in the fastest variant and reports both mAPs.

Run: ``.venv/bin/python benchmarks/inference.py`` (see ``--help``).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch

from common import (
    COMPILED,
    VARIANTS,
    Budget,
    Variant,
    base_parser,
    budget_from,
    contract_row,
    forward,
    machine_info,
    make_model,
    markdown_table,
    prepared,
    rates,
    run_with_peak,
    setup,
    time_call,
    time_interleaved,
    write_report,
)
from ctran.checkpoint import load_checkpoint
from ctran.config import config_from_dict
from ctran.inference.performance import optimize_for_inference
from ctran.model import CTran
from ctran.training.evaluation import Setting, evaluate
from ctran.training.loaders import eval_loader
from ctran.training.run import build_datasets
from peak import count_flops, machine_peaks
from reference import PARITY_ATOL, check_parity, reference_from

BF16_ATOL = 0.1  # max abs logit difference of a bf16 variant from float32 (logits of order 1-10)
DEFAULT = [(576, 80, 1), (576, 1000, 1), (576, 80, 8), (448, 80, 1)]
FULL = [(size, labels, batch) for size in (576, 448) for labels in (80, 500, 1000) for batch in (1, 8)]
QUICK = [(448, 80, 1)]
DEMO_SHAPE = {"labels": 20, "backbone": "small_cnn", "dim": 128, "image_size": 48}


def parse_args(argv: list[str] | None = None):
    p = base_parser(__doc__, "inference")
    p.add_argument("--full", action="store_true", help="every size x L x batch setting (about 3x longer)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile (30-45 s to compile)")
    p.add_argument(
        "--demo-checkpoint",
        type=Path,
        default=Path("runs/demo/ctran.pt"),
        help="digit-scenes checkpoint (from `make demo`) for the digits rows and the mAP check",
    )
    return p.parse_args(argv)


def variants_for(first: bool, quick: bool, compile: bool) -> list[Variant]:
    """Every switch alone and combined on the first setting; float32 and the fastest elsewhere."""
    chosen = list(VARIANTS.values()) if first and not quick else [VARIANTS["fp32"], VARIANTS["bf16_cl"]]
    return [*chosen, COMPILED] if first and compile else chosen


def bench(
    name: str,
    model: CTran,
    images: torch.Tensor,
    states: torch.Tensor,
    variants: list[Variant],
    peaks: dict[str, float],
    budget: Budget,
) -> list[dict]:
    """Peak memory and parity on a first call of each, then interleaved timing; one row per variant."""
    device = images.device
    ref = reference_from(model)
    calls = {"ref": forward(ref, images, states)}
    calls |= {v.name: forward(prepared(model, v), images, states, v.precision) for v in variants}
    compile_s = {v.name: time_call(calls[v.name], device) for v in variants if v.compile}
    outputs, memory = {}, {}
    start = time.perf_counter()
    for key, call in calls.items():
        outputs[key], memory[key] = run_with_peak(call, device)
    repeats = budget.repeats(time.perf_counter() - start)
    diffs = {
        v.name: check_parity(outputs[v.name], outputs["ref"], f"{name} {v.name}", tolerance(v))
        for v in variants
    }
    flops = count_flops(forward(model, images[:1], states[:1]))  # per image, whatever the batch
    ref_flops = count_flops(forward(ref, images[:1], states[:1]))
    times = time_interleaved(calls, repeats, device)
    ref_rate = rates(times["ref"], len(images))["per_s"]
    return [
        contract_row(
            f"{name}_{v.name}",
            len(images),
            times[v.name],
            times["ref"],
            memory[v.name],
            memory["ref"],
            flops,
            peaks.get(v.precision),
            variant=v.name,
            max_abs_logit_diff_vs_ref=diffs[v.name],
            logit_tolerance=tolerance(v),
            ref_gflops_per_item=round(ref_flops / 1e9, 2),
            ref_fraction_of_peak=round(ref_flops * ref_rate / peaks["fp32"], 4),
            **({"compile_s": round(compile_s[v.name], 1)} if v.compile else {}),
        )
        for v in variants
    ]


def tolerance(variant: Variant) -> float:
    """Allowed max abs logit difference from the float32 reference."""
    return BF16_ATOL if variant.precision == "bf16" else PARITY_ATOL


def paper_rows(settings: list, args, peaks: dict[str, float], device: torch.device) -> list[dict]:
    """ResNet-101 C-Tran (random weights) at each (size, labels, batch) setting."""
    rows = []
    for i, (size, labels, batch) in enumerate(settings):
        model = make_model(labels).to(device)
        torch.manual_seed(1)
        images = torch.randn(batch, 3, size, size, device=device)
        states = torch.full((batch, labels), -1, device=device)
        variants = variants_for(i == 0, args.quick, args.compile)
        name = f"infer_r101_{size}_L{labels}_b{batch}"
        rows += bench(name, model, images, states, variants, peaks, budget_from(args, 20.0))
        print(markdown_table(rows[-len(variants) :]).split("\n", 2)[2], flush=True)
    return rows


def demo_model(path: Path, device: torch.device) -> tuple[CTran, dict | None]:
    """The demo checkpoint when it exists (with its payload), else random weights of the demo's shape."""
    if path.is_file():
        model, payload = load_checkpoint(path, device)
        return model, payload
    print(f"{path} not found (run `make demo`): digits rows use random weights, no mAP check")
    return make_model(DEMO_SHAPE["labels"], DEMO_SHAPE["backbone"], DEMO_SHAPE["dim"]).to(device), None


def digits_rows(args, peaks: dict[str, float], device: torch.device) -> tuple[list[dict], dict | None]:
    """The digit-scenes model on random 48 x 48 inputs, and its mAP check when it is the demo checkpoint."""
    model, payload = demo_model(args.demo_checkpoint, device)
    batch = 64 if args.quick else 256
    size, labels = DEMO_SHAPE["image_size"], model.num_labels
    torch.manual_seed(1)
    images = torch.randn(batch, 3, size, size, device=device)
    states = torch.full((batch, labels), -1, device=device)
    variants = [VARIANTS["fp32"], VARIANTS["fp32_cl"], VARIANTS["bf16_cl"]]
    rows = bench(f"infer_digits_b{batch}", model, images, states, variants, peaks, budget_from(args, 10.0))
    check = None if payload is None or args.quick else digits_map_check(model, payload, device)
    return rows, check


def digits_map_check(model: CTran, payload: dict, device: torch.device) -> dict:
    """Test-split mAP (regular inference) in float32 and in bf16 + channels_last, same weights."""
    config = config_from_dict(payload["config"])
    test = build_datasets(config)["test"]
    loader = eval_loader(test, config.eval.batch_size)
    fast = optimize_for_inference(copy.deepcopy(model), channels_last=True)
    fp32 = evaluate(model, loader, [Setting()], config.seed, device, "fp32")["regular"]["mAP"]
    bf16 = evaluate(fast, loader, [Setting()], config.seed, device, "bf16")["regular"]["mAP"]
    result = {"images": len(test), "map_fp32": round(fp32, 3), "map_bf16_cl": round(bf16, 3)}
    result["map_difference"] = round(abs(fp32 - bf16), 3)
    print(f"digit-scenes test mAP: fp32 {fp32:.3f}, bf16 + channels_last {bf16:.3f}")
    return result


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = setup(args)
    peaks = machine_peaks(device, args.quick)
    settings = QUICK if args.quick else FULL if args.full else DEFAULT
    rows = paper_rows(settings, args, peaks, device)
    digits, check = digits_rows(args, peaks, device)
    rows += digits
    print(markdown_table(rows))
    peaks_gflops = {name: round(rate / 1e9, 1) for name, rate in peaks.items()}
    write_report(
        args.out,
        "inference",
        machine_info(device),
        rows,
        matmul_peak_gflops=peaks_gflops,
        bf16_logit_tolerance=BF16_ATOL,
        digits_map_check=check,
    )
    print(f"wrote {args.out}")
    return {"rows": rows, "digits_map_check": check, "peaks": peaks}


if __name__ == "__main__":
    main()
