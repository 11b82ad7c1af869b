"""What each inference optimisation bought: ours with the changes added one at a time, vs the reference.

At the paper's setting (ResNet-101, 576 x 576, batch 1, L = 80 and 1000), in float32 (NCHW on both sides)
and in bf16 autocast + channels-last (on both sides), it times in the same interleaved rounds:

- ``ref``: ``reference.ReferenceCTran`` (the official formulation);
- ``base``: ours without ``ctran.inference.fusion`` (fused attention and label-rows-only last layer were
  already in place: ``optimize_for_inference(fuse=False)``);
- ``fold``: + BatchNorm folded into the convolutions (ReLU and residual adds still separate passes);
- ``post_ops``: + ReLU and residual add inside the convolutions (oneDNN; channels-last only, so the same
  as ``fold`` in NCHW);
- ``stored``: + convolution and linear weights stored in bf16 instead of cast by autocast at every call
  (bf16 only): all of ``ctran.load``'s inference path.

Every step is first checked against the reference on mixed unknown/negative/positive states (float32
within ``reference.PARITY_ATOL``, bf16 within ``inference.BF16_ATOL``). Each row is one step: its ratio to
the reference, and ``gain_over_previous`` (its speed over the step before, same rounds).

Run: ``.venv/bin/python benchmarks/ablation.py --threads 1`` (see ``--help``).
"""

from __future__ import annotations

import copy
import time

import torch

from common import (
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
    print_rows,
    rates,
    reference_prepared,
    setup,
    time_interleaved,
    write_report,
)
from ctran.inference.fusion import fuse_backbone, store_weights
from ctran.inference.performance import DTYPES, optimize_for_inference
from ctran.model import CTran
from inference import HEADLINE_ROUNDS, tolerance
from reference import check_parity, reference_from

STEPS = ("base", "fold", "post_ops", "stored")


def parse_args(argv: list[str] | None = None):
    p = base_parser(__doc__, "ablation")
    p.add_argument("--labels", default="80,1000", help="comma-separated label counts L (default: 80,1000)")
    p.add_argument("--size", type=int, default=576, help="input size (default: 576, the paper's)")
    return p.parse_args(argv)


def step_model(model: CTran, variant: Variant, step: str) -> CTran:
    """Ours with the optimisations up to ``step`` (see the module docstring)."""
    dtype = DTYPES[variant.precision]
    ours = optimize_for_inference(copy.deepcopy(model), variant.channels_last, fuse=False)
    if step == "base":
        return ours
    stored = STEPS.index(step) >= STEPS.index("stored")
    post_ops = STEPS.index(step) >= STEPS.index("post_ops")
    ours.backbone = fuse_backbone(ours.backbone, dtype if stored else torch.float32, post_ops)
    if stored and dtype != torch.float32:
        store_weights(ours, dtype)
    return ours.eval()


def steps_for(variant: Variant) -> list[str]:
    """Steps that differ at ``variant``: post-ops need channels-last; stored weights a reduced precision."""
    skip = set() if variant.channels_last else {"post_ops"}
    skip |= {"stored"} if variant.precision == "fp32" else set()
    return [s for s in STEPS if s not in skip]


def bench(labels: int, variant: Variant, args, device: torch.device) -> list[dict]:
    model = make_model(labels).to(device)
    images = torch.randn(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(1)).to(device)
    states = mixed_states(1, labels, device=device)
    ref = reference_prepared(reference_from(model), variant)
    steps = steps_for(variant)
    calls = {"ref": forward(ref, images, states, variant.precision)}
    calls |= {s: forward(step_model(model, variant, s), images, states, variant.precision) for s in steps}
    start = time.perf_counter()
    outputs = {key: call() for key, call in calls.items()}
    name = f"ablation_{args.size}_L{labels}_b1_{variant.name}"
    diffs = {s: check_parity(outputs[s], outputs["ref"], f"{name} {s}", tolerance(variant)) for s in steps}
    budget = budget_from(args, 40.0)
    if not args.quick:
        budget = Budget(budget.seconds, least=HEADLINE_ROUNDS, fixed=budget.fixed)
    times = time_interleaved(calls, budget.repeats(time.perf_counter() - start), device)
    per_s = {key: rates(t, 1)["per_s"] for key, t in times.items()}
    rows = []
    for i, step in enumerate(steps):
        previous = steps[i - 1] if i else "ref"
        rows.append(
            contract_row(
                f"{name}_{step}",
                1,
                times[step],
                times["ref"],
                numerics=variant.numerics,
                step=step,
                gain_over_previous=round(per_s[step] / per_s[previous], 3),
                previous=previous,
                max_abs_logit_diff_vs_ref=diffs[step],
                states="mixed unknown/negative/positive",
            )
        )
    return rows


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = setup(args)
    if args.quick:
        args.size = 224
    variants = [VARIANTS["fp32"]] + ([VARIANTS["bf16_cl"]] if bf16_supported(device) else [])
    rows = []
    for labels in [int(x) for x in args.labels.split(",") if x.strip()]:
        for variant in variants:
            rows += bench(labels, variant, args, device)
            print_rows(rows[-len(steps_for(variant)) :])
    print(markdown_table(rows))
    for row in rows:
        print(f"{row['name']}: {row['gain_over_previous']:.3f}x over {row['previous']}")
    write_report(args.out, "ablation", machine_info(device), rows)
    return {"rows": rows}


if __name__ == "__main__":
    main()
