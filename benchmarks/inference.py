"""Inference: images/s and peak memory of ours vs the official formulation, same weights, same numerics.

For each setting (input size, number of labels L, batch size) it builds our C-Tran (random weights; speed
does not depend on them) and ``reference.ReferenceCTran`` holding the same weights. Each precision is run
by both sides with the same switches: ``fp32`` (NCHW on both), ``fp32_cl`` (channels-last on both),
``bf16_cl`` (bf16 autocast and channels-last on both), and ``bf16_cl_compiled`` (``torch.compile`` of
both) with ``--compile``; ``--variants`` chooses. Ours is what ``ctran.load`` runs
(``ctran.inference.performance.optimize_for_inference``).

Before timing, each implementation runs once under the memory profiler on the same images and *mixed*
label states (unknown, negative and positive), and the benchmark stops unless ours and the reference agree
at each precision (float32 within ``reference.PARITY_ATOL``, bf16 within ``BF16_ATOL``). Then every call of
every precision, ours and the reference, is timed in interleaved rounds (at least ``HEADLINE_ROUNDS``), so
each row's ratio (ours / reference at the same numerics) and the precision gain (ours bf16 / ours fp32)
come from the same rounds; the JSON has the per-round range of each ratio.

Settings: the paper's ResNet-101 at 576 x 576 with L = 80 and 1000, batch 1 and 8 (``--full`` adds 448),
and the digit-scenes model (the demo checkpoint when given, batch 256). With ``--demo-checkpoint`` it also
evaluates that model on the digit-scenes test split in float32 and bf16 (as ``ctran.load`` runs them) and
reports both mAPs.

Run: ``.venv/bin/python benchmarks/inference.py --threads 1`` (see ``--help``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from common import (
    COMPILED,
    VARIANTS,
    Budget,
    Variant,
    base_parser,
    bf16_supported,
    budget_from,
    contract_row,
    forward,
    machine_info,
    make_model,
    markdown_table,
    mixed_states,
    prepared,
    print_rows,
    rates,
    reference_prepared,
    run_with_peak,
    setup,
    time_interleaved,
    write_report,
)
from ctran.checkpoint import load_checkpoint
from ctran.config import config_from_dict
from ctran.model import CTran
from ctran.training.evaluation import Setting, evaluate
from ctran.training.loaders import eval_loader
from ctran.training.run import build_datasets
from peak import count_flops, machine_peaks
from reference import PARITY_ATOL, REFERENCE, check_parity, reference_from

BF16_ATOL = 0.1  # max abs logit difference between ours and the reference, both in bf16 (logits ~1-10)
HEADLINE_ROUNDS = 5
HEADLINE = [(576, 80, 1), (576, 1000, 1), (576, 80, 8), (576, 1000, 8)]
FULL = HEADLINE + [(448, labels, batch) for labels in (80, 1000) for batch in (1, 8)]
QUICK = [(224, 80, 1)]
DEMO_SHAPE = {"labels": 20, "backbone": "small_cnn", "dim": 128, "image_size": 48}


def parse_args(argv: list[str] | None = None):
    p = base_parser(__doc__, "inference")
    p.add_argument("--full", action="store_true", help="also 448 x 448")
    p.add_argument("--compile", action="store_true", help="also torch.compile on both (30-45 s each)")
    p.add_argument(
        "--variants",
        default="fp32,fp32_cl,bf16_cl",
        help=f"comma-separated, from {', '.join(VARIANTS)} (with bf16, fp32 is run too: the gain needs it)",
    )
    p.add_argument("--no-digits", action="store_true", help="skip the digit-scenes rows and mAP check")
    p.add_argument(
        "--settings",
        default=None,
        metavar="SIZExLxB,...",
        help="only these paper settings, e.g. 576x1000x8 (default: the headline ones, or --full/--quick)",
    )
    p.add_argument(
        "--demo-checkpoint",
        type=Path,
        default=Path("runs/demo/ctran.pt"),
        help="digit-scenes checkpoint (from `make demo`) for the digits rows and the mAP check",
    )
    return p.parse_args(argv)


def variants_for(device: torch.device, names: str, compile: bool, first: bool) -> list[Variant]:
    """The ``names`` asked for (bf16 ones where bf16 is in hardware, and then fp32 too, for the precision
    gain); the compiled bf16 variant on the first setting with ``--compile``."""
    wanted = {n.strip() for n in names.split(",") if n.strip()}
    wanted |= {"fp32"} if any(VARIANTS.get(n, Variant()).precision != "fp32" for n in wanted) else set()
    unknown = wanted - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)} (choose from {', '.join(VARIANTS)})")
    chosen = [v for name, v in VARIANTS.items() if name in wanted]
    chosen = [v for v in chosen if v.precision == "fp32" or bf16_supported(device)]
    return [*chosen, COMPILED] if compile and first and bf16_supported(device) else chosen


def tolerance(variant: Variant) -> float:
    """Allowed max abs logit difference between ours and the reference at ``variant``'s precision."""
    return PARITY_ATOL if variant.precision == "fp32" else BF16_ATOL


def bench(
    name: str,
    model: CTran,
    images: torch.Tensor,
    states: torch.Tensor,
    variants: list[Variant],
    peaks: dict[str, float],
    budget: Budget,
    reference: Callable[[CTran], nn.Module] = reference_from,
    against: str = REFERENCE,
) -> list[dict]:
    """Peak memory and parity on a first call of each, then interleaved timing; one row per variant.

    ``reference(model)`` builds what ours is timed against (by default the re-implemented official forward
    pass; ``benchmarks/vs_official.py`` passes the official code itself), named by ``against`` in each row.
    """
    device = images.device
    ref = reference(model)
    calls = {}
    for v in variants:
        calls[f"ours_{v.name}"] = forward(prepared(model, v), images, states, v.precision)
        calls[f"ref_{v.name}"] = forward(reference_prepared(ref, v), images, states, v.precision)
    outputs, memory = {}, {}
    start = time.perf_counter()
    for key, call in calls.items():
        outputs[key], memory[key] = run_with_peak(call, device)  # compiles the compiled variants
    repeats = budget.repeats((time.perf_counter() - start) / 2)
    diffs = {
        v.name: check_parity(
            outputs[f"ours_{v.name}"], outputs[f"ref_{v.name}"], f"{name} {v.name}", tolerance(v)
        )
        for v in variants
    }
    fp32_ref = outputs["ref_fp32"].float()
    flops = count_flops(forward(prepared(model, Variant()), images[:1], states[:1]))  # per image, as run
    ref_flops = count_flops(forward(ref, images[:1], states[:1]))
    times = time_interleaved(calls, repeats, device)
    per_s = {key: rates(t, len(images))["per_s"] for key, t in times.items()}
    rows = []
    for v in variants:
        gain = v.precision != "fp32" and not v.compile and "ours_fp32" in per_s
        rows.append(
            contract_row(
                f"{name}_{v.name}",
                len(images),
                times[f"ours_{v.name}"],
                times[f"ref_{v.name}"],
                memory[f"ours_{v.name}"],
                memory[f"ref_{v.name}"],
                flops,
                peaks.get(v.precision),
                numerics=v.numerics,
                variant=v.name,
                precision_gain=round(per_s[f"ours_{v.name}"] / per_s["ours_fp32"], 3) if gain else None,
                ref_precision_gain=round(per_s[f"ref_{v.name}"] / per_s["ref_fp32"], 3) if gain else None,
                max_abs_logit_diff_vs_ref=diffs[v.name],
                max_abs_logit_diff_vs_fp32_ref=round(
                    (outputs[f"ours_{v.name}"].float() - fp32_ref).abs().max().item(), 5
                ),
                logit_tolerance=tolerance(v),
                against=against,
                states="mixed unknown/negative/positive",
                ref_gflops_per_item=round(ref_flops / 1e9, 2),
                ref_fraction_of_peak=round(ref_flops * per_s[f"ref_{v.name}"] / peaks[v.precision], 4),
            )
        )
    return rows


def paper_rows(settings: list, args, peaks: dict[str, float], device: torch.device) -> list[dict]:
    """ResNet-101 C-Tran (random weights) at each (size, labels, batch) setting."""
    rows = []
    for i, (size, labels, batch) in enumerate(settings):
        model = make_model(labels).to(device)
        images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)
        states = mixed_states(batch, labels, device=device)
        variants = variants_for(device, args.variants, args.compile, i == 0)
        budget = budget_from(args, 30.0)
        if not args.quick:
            budget = Budget(budget.seconds, least=HEADLINE_ROUNDS, fixed=budget.fixed)
        rows += bench(f"infer_r101_{size}_L{labels}_b{batch}", model, images, states, variants, peaks, budget)
        print_rows(rows[-len(variants) :])
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
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)
    states = mixed_states(batch, labels, device=device)
    variants = variants_for(device, "fp32,fp32_cl,bf16_cl", False, False)
    rows = bench(f"infer_digits_b{batch}", model, images, states, variants, peaks, budget_from(args, 10.0))
    check = None if payload is None or args.quick else digits_map_check(model, payload, device)
    return rows, check


def digits_map_check(model: CTran, payload: dict, device: torch.device) -> dict:
    """Test-split mAP (regular inference) in float32 and in bf16 + channels-last, as ``ctran.load`` runs
    each (same weights)."""
    config = config_from_dict(payload["config"])
    test = build_datasets(config)["test"]
    loader = eval_loader(test, config.eval.batch_size)
    result: dict = {"images": len(test)}
    for v in (VARIANTS["fp32"], VARIANTS["bf16_cl"]):
        scores = evaluate(prepared(model, v), loader, [Setting()], config.seed, device, v.precision)
        result[f"map_{v.name}"] = round(scores["regular"]["mAP"], 3)
    result["map_difference"] = round(abs(result["map_fp32"] - result["map_bf16_cl"]), 3)
    print(f"digit-scenes test mAP: fp32 {result['map_fp32']}, bf16 + channels-last {result['map_bf16_cl']}")
    return result


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = setup(args)
    peaks = machine_peaks(device, args.quick)
    settings = QUICK if args.quick else FULL if args.full else HEADLINE
    if args.settings:
        settings = [tuple(int(n) for n in item.split("x")) for item in args.settings.split(",")]
    rows = paper_rows(settings, args, peaks, device)
    check = None
    if not args.no_digits:
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
    return {"rows": rows, "digits_map_check": check, "peaks": peaks}


if __name__ == "__main__":
    main()
