"""Label scaling: time and peak memory per image as L grows from 80 to 10,000, ours vs the reference.

The backbone is fixed and small (the digit-scenes model: small CNN at 48 x 48, 36 image tokens, D = 128,
3 layers, 4 heads), so the cost that grows with L dominates: the transformer over 36 + L tokens and the
readout. Batch 8 (and batch 1 at the largest L, where the reference fits in memory), float32, same
weights, logits checked equal on mixed unknown/negative/positive states before timing. Ours is what
``ctran.load`` runs; its table of the label tokens' first-layer projections (9 L D values, held like a
weight) is reported as ``label_table_mb``, apart from the per-call peak.

Ours must never materialise a (B, L, L) tensor: its fused attention keeps no (B, heads, N, N) scores and its
readout is O(L * D). The script checks it (where one (B, L, L) float32 tensor would take 256 MiB or more,
ours' whole peak must stay below that) and stops otherwise. The reference builds the (B, heads, N, N)
scores, their softmax and the averaged weights of every layer (kept, as the official forward returns them),
and the (B, L, L) readout product: ``reference_bytes`` estimates that memory. It is run only where the
estimate fits ``--ref-max-gib``; above, the row records the estimate (``ref_peak_mb_estimate``; tables mark
it "estimate, not run", and it never counts as a measurement) and the reason in ``ref_failed``.

Run: ``.venv/bin/python benchmarks/label_scaling.py`` (see ``--help``).
"""

from __future__ import annotations

import time

import torch

from common import (
    Variant,
    base_parser,
    budget_from,
    contract_row,
    forward,
    machine_info,
    make_model,
    markdown_table,
    memory_gib,
    mixed_states,
    prepared,
    print_rows,
    run_with_peak,
    setup,
    time_interleaved,
    write_report,
)
from peak import count_flops, machine_peaks
from reference import check_parity, reference_from

BATCH, IMAGE_SIZE, DIM, HEADS, LAYERS, IMAGE_TOKENS = 8, 48, 128, 4, 3, 36
CHECKED_PRODUCT_BYTES = 2**28  # below this a (B, L, L) tensor is smaller than the backbone's activations


def reference_bytes(batch: int, labels: int) -> int:
    """The reference's main float32 buffers: scores and softmax (B, heads, N, N), the averaged weights of
    every layer (B, N, N), and the readout's product, mask and masked product (B, L, L)."""
    n = IMAGE_TOKENS + labels
    return 4 * (2 * batch * HEADS * n * n + LAYERS * batch * n * n + 3 * batch * labels * labels)


def parse_args(argv: list[str] | None = None):
    p = base_parser(__doc__, "label_scaling")
    p.add_argument("--labels", default="80,300,1000,3000,10000", help="comma-separated label counts L")
    p.add_argument(
        "--batch-1-labels",
        default="10000",
        help="label counts also run at batch 1, where the reference's memory fits (default: 10000)",
    )
    p.add_argument(
        "--ref-max-gib",
        type=float,
        default=6.0,
        help="run the reference only where its estimated peak is below this (default: 6)",
    )
    return p.parse_args(argv)


def bench_labels(
    labels: int, args, peaks: dict[str, float], device: torch.device, batch: int = BATCH
) -> dict:
    """One row: per-image time and peak memory at ``labels`` labels and ``batch`` images."""
    model = make_model(labels, backbone="small_cnn", dim=DIM).to(device)
    images = torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(1)).to(
        device
    )
    states = mixed_states(batch, labels, device=device)
    ours = prepared(model, Variant())
    calls = {"ours": forward(ours, images, states)}
    estimate = reference_bytes(batch, labels)
    details: dict = {
        "labels": labels,
        "batch": batch,
        "numerics": "fp32",
        "ref_peak_mb_estimate": round(estimate / 1e6, 1),
        "states": "mixed unknown/negative/positive",
    }
    start = time.perf_counter()
    ours_out, ours_peak = run_with_peak(calls["ours"], device)
    product = 4 * batch * labels * labels
    if product >= CHECKED_PRODUCT_BYTES and ours_peak >= product:
        raise RuntimeError(f"L={labels}: ours peaked at {ours_peak / 1e6:.0f} MB, a (B, L, L) tensor's size")
    ref_peak = None
    if estimate <= args.ref_max_gib * 2**30:
        ref = reference_from(model)
        calls["ref"] = forward(ref, images, states)
        ref_out, ref_peak = run_with_peak(calls["ref"], device)
        details["max_abs_logit_diff_vs_ref"] = check_parity(ours_out, ref_out, f"L={labels}")
    else:
        details["ref_failed"] = (
            f"not run: needs about {estimate / 2**30:.1f} GiB (> --ref-max-gib {args.ref_max_gib:g}; "
            f"this machine has {memory_gib():.1f} GiB)"
        )
    times = time_interleaved(calls, budget_from(args, 20.0).repeats(time.perf_counter() - start), device)
    return contract_row(
        f"labels_{labels}_b{batch}",
        batch,
        times["ours"],
        times.get("ref"),
        ours_peak,
        ref_peak,
        count_flops(forward(model, images[:1], states[:1])),  # per image
        peaks["fp32"],
        **details,
    )


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = setup(args)
    peaks = machine_peaks(device, args.quick)
    labels = [80, 1000] if args.quick else [int(x) for x in args.labels.split(",")]
    rows = []
    runs = [(count, BATCH) for count in labels]
    if not args.quick:
        runs += [(int(x), 1) for x in args.batch_1_labels.split(",") if x.strip()]
    for count, batch in runs:
        rows.append(bench_labels(count, args, peaks, device, batch))
        print_rows(rows[-1:])
    print(markdown_table(rows))
    for row in rows:
        if "ref_failed" in row:
            print(f"L={row['labels']}: reference {row['ref_failed']}")
    write_report(args.out, "label_scaling", machine_info(device), rows)
    return {"rows": rows}


if __name__ == "__main__":
    main()
