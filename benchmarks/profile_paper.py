"""Where the time goes: ``torch.profiler`` of ours and the reference at the paper's setting, by kind of op.

One forward pass of each (after a warm-up pass), same weights, same numerics, mixed label states, profiled
with ``torch.profiler``; every op's self time is put in one category (convolutions, BatchNorm, backbone
element-wise passes, max-pool, linear layers, attention, layer norm, casts and copies, other). The JSON
also keeps the top ops of each side. Settings: ResNet-101 at 576 x 576, batch 1, L = 80 and 1000, float32
(NCHW) and bf16 autocast + channels-last, each on both sides.

The profiler reports wall time per op; on a shared machine run it with ``--threads 1`` when it is quiet,
or compare shares rather than milliseconds.

Run: ``.venv/bin/python benchmarks/profile_paper.py --threads 1`` (see ``--help``).
"""

from __future__ import annotations

import torch
from torch.profiler import ProfilerActivity, profile

from common import (
    VARIANTS,
    base_parser,
    bf16_supported,
    forward,
    machine_info,
    make_model,
    mixed_states,
    prepared,
    reference_prepared,
    setup,
    write_report,
)
from reference import reference_from

CATEGORIES = {  # category -> op names (without the "aten::"/"mkldnn::" namespace)
    "convolution": {
        "mkldnn_convolution",
        "_slow_conv2d_forward",
        "_convolution_pointwise",
        "convolution_overrideable",
    },
    "batch norm": {"native_batch_norm", "_native_batch_norm_legit_no_training"},
    "backbone element-wise (ReLU, residual add)": {"clamp_min_", "relu_", "add_", "clamp_min", "relu"},
    "max-pool": {"max_pool2d_with_indices", "maximum", "constant_pad_nd", "max_pool2d"},
    "linear layers (matmul)": {"addmm", "mm", "matmul"},
    "attention (scores, softmax, weighted sum)": {
        "_scaled_dot_product_flash_attention_for_cpu",
        "bmm",
        "baddbmm",
        "_softmax",
    },
    "layer norm": {"native_layer_norm"},
    "casts and copies": {"copy_", "_to_copy", "cat", "clone", "index", "index_select", "fill_", "zero_"},
}


def parse_args(argv: list[str] | None = None):
    p = base_parser(__doc__, "profile")
    p.add_argument("--labels", default="80,1000", help="comma-separated label counts L (default: 80,1000)")
    p.add_argument("--size", type=int, default=576, help="input size (default: 576, the paper's)")
    p.add_argument("--top", type=int, default=12, help="top ops by self time kept per side in the JSON")
    return p.parse_args(argv)


def category(op: str) -> str:
    name = op.split("::", 1)[-1]
    return next((c for c, names in CATEGORIES.items() if name in names), "other")


def profile_call(call) -> tuple[dict[str, float], list[tuple[str, float, int]], float]:
    """Self ms per category, the top ops (name, self ms, calls) and the total self ms of one call."""
    call()  # warm-up
    with profile(
        activities=[ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])]
    ) as prof:
        call()
    by_category: dict[str, float] = {}
    ops = []
    for event in prof.key_averages():
        ms = event.self_cpu_time_total / 1e3
        by_category[category(event.key)] = by_category.get(category(event.key), 0.0) + ms
        ops.append((event.key, round(ms, 2), event.count))
    ops.sort(key=lambda item: -item[1])
    return by_category, ops, sum(by_category.values())


def markdown(setting: str, result: dict) -> str:
    lines = [
        f"{setting}: self time ours {result['ours_total_ms']:.0f} ms, ref {result['ref_total_ms']:.0f} ms"
    ]
    lines += ["", "| category | ours ms | ref ms | ref - ours ms | ours share |", "|---|---:|---:|---:|---:|"]
    for name in [*CATEGORIES, "other"]:
        ours, ref = result["ours_ms"].get(name, 0.0), result["ref_ms"].get(name, 0.0)
        share = ours / result["ours_total_ms"]
        lines.append(f"| {name} | {ours:.0f} | {ref:.0f} | {ref - ours:+.0f} | {share:.0%} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = setup(args)
    size = 224 if args.quick else args.size
    variants = [VARIANTS["fp32"]] + ([VARIANTS["bf16_cl"]] if bf16_supported(device) else [])
    results, tables = [], []
    for labels in [int(x) for x in args.labels.split(",") if x.strip()]:
        model = make_model(labels).to(device)
        ref = reference_from(model)
        images = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)
        states = mixed_states(1, labels, device=device)
        for v in variants:
            ours_ms, ours_top, ours_total = profile_call(
                forward(prepared(model, v), images, states, v.precision)
            )
            ref_ms, ref_top, ref_total = profile_call(
                forward(reference_prepared(ref, v), images, states, v.precision)
            )
            setting = f"profile_{size}_L{labels}_b1_{v.name}"
            result = {
                "name": setting,
                "numerics": v.numerics,
                "ours_ms": {k: round(x, 1) for k, x in ours_ms.items()},
                "ref_ms": {k: round(x, 1) for k, x in ref_ms.items()},
                "ours_total_ms": round(ours_total, 1),
                "ref_total_ms": round(ref_total, 1),
                "ours_top_ops": ours_top[: args.top],
                "ref_top_ops": ref_top[: args.top],
            }
            results.append(result)
            tables.append(markdown(f"{setting} ({v.numerics} on both)", result))
            print(tables[-1] + "\n", flush=True)
    write_report(args.out, "profile", machine_info(device), results, markdown="\n\n".join(tables))
    return {"rows": results}


if __name__ == "__main__":
    main()
