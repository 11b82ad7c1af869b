"""Benchmark the per-label readout against the official C-Tran diagonal formulation.

Both compute ``logit_l = <w_l, h_l> + b_l``. Ours (``PerLabelLinear``) computes only those L dot products,
O(L * D). The official code applies ``Linear(D, L)`` to all L tokens, masks the (B, L, L) result with
``eye(L)`` and sums the last dim, O(L^2 * D) time and memory. This script checks that they agree on the same
weights, measures the peak memory of one forward pass of each, then times them interleaved.

Run: ``.venv/bin/python benchmarks/readout.py`` (see ``--help``).
"""

from __future__ import annotations

import time

import torch
from torch import nn

from common import (
    base_parser,
    budget_from,
    contract_row,
    machine_info,
    markdown_table,
    run_with_peak,
    setup,
    time_interleaved,
    write_report,
)
from ctran.model.readout import PerLabelLinear
from peak import count_flops, machine_peaks
from reference import check_parity


def parse_args(argv: list[str] | None = None):
    p = base_parser(__doc__, "readout")
    p.add_argument("--labels", default="80,1000,10000", help="comma-separated label counts L")
    p.add_argument("--dim", type=int, default=2048, help="token width D")
    p.add_argument("--batch", type=int, default=8, help="batch size B")
    p.add_argument(
        "--ref-max-gib",
        type=float,
        default=6.0,
        help="skip the reference when its (B, L, L) product is larger",
    )
    return p.parse_args(argv)


def reference_readout(weight: torch.Tensor, bias: torch.Tensor):
    """The official formulation: every label's classifier on every token, then keep the diagonal."""
    num_labels = weight.shape[0]

    def readout(h: torch.Tensor) -> torch.Tensor:
        all_pairs = nn.functional.linear(h, weight, bias)  # (B, L, L)
        return (all_pairs * torch.eye(num_labels, device=h.device, dtype=h.dtype)).sum(-1)

    return readout


def bench_labels(labels: int, args, peaks: dict[str, float], device: torch.device) -> dict:
    """Check, measure and time both readouts for one label count; one row (items: images of the batch)."""
    torch.manual_seed(0)
    ours = PerLabelLinear(labels, args.dim).to(device).eval()
    ref = reference_readout(ours.weight.detach(), ours.bias.detach())
    h = torch.randn(args.batch, labels, args.dim, device=device)
    calls = {"ours": lambda: ours(h)}
    details: dict = {"labels": labels, "dim": args.dim, "batch": args.batch}
    peak: dict[str, int] = {}
    product_bytes = args.batch * labels * labels * 4
    with torch.inference_mode():
        start = time.perf_counter()
        ours_out, peak["ours"] = run_with_peak(calls["ours"], device)
        if product_bytes > args.ref_max_gib * 2**30:
            details["ref_failed"] = f"(B, L, L) product needs {product_bytes / 2**30:.1f} GiB > --ref-max-gib"
        else:
            ref_out, peak["ref"] = run_with_peak(lambda: ref(h), device)
            details["max_abs_diff"] = check_parity(ours_out, ref_out, f"readout L={labels}")
            calls["ref"] = lambda: ref(h)
            del ref_out
        repeats = budget_from(args, 10.0).repeats(time.perf_counter() - start)
        flops = count_flops(calls["ours"]) / args.batch
        times = time_interleaved(calls, repeats, device)
    if "ref" in peak and peak["ours"] > 0:
        details["memory_ratio"] = round(peak["ref"] / peak["ours"], 1)
    return contract_row(
        f"readout_L{labels}_b{args.batch}",
        args.batch,
        times["ours"],
        times.get("ref"),
        peak["ours"],
        peak.get("ref"),
        flops,
        peaks["fp32"],
        **details,
    )


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = setup(args)
    peaks = machine_peaks(device, args.quick)
    labels = [80, 1000] if args.quick else [int(x) for x in args.labels.split(",")]
    rows = []
    for count in labels:
        rows.append(bench_labels(count, args, peaks, device))
        print(f"L={count}: done, {rows[-1]['repeats']} timed calls each", flush=True)
    print(markdown_table(rows))
    for row in rows:
        if "ref_failed" in row:
            print(f"L={row['labels']}: reference not run: {row['ref_failed']}")
    write_report(args.out, "readout", machine_info(device), rows)
    return {"rows": rows}


if __name__ == "__main__":
    main()
