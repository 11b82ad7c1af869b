"""Training: images/s of one training step (forward, backward, AdamW), ours vs the reference.

A step is what ``ctran.training.trainer`` does per batch: Label Mask Training states, the forward pass in
train mode (dropout on), BCE on the unknown labels averaged over them, backward, an AdamW update. Each
precision runs on both sides: float32, and bf16 autocast (the trainer's ``precision=bf16``, chosen by
``auto`` on CPUs with AVX512-BF16) where the hardware has it. Both start from the same weights, checked to
give the same logits in eval mode on mixed unknown/negative/positive states before timing, and each has
its own optimiser; all four steps are timed in the same interleaved rounds, so the row's ratio (ours /
reference, same precision) and the precision gain (ours bf16 / ours fp32) come from the same rounds. Models:

- the digit-scenes model (small CNN at 48 x 48, D = 128, L = 20), batch 64 (the demo's);
- ResNet-101 at a reduced 224 x 224 (49 image tokens, D = 2048, L = 80), batch 4.

Peak memory is that of one whole step; FLOPs per image count the forward and backward passes.

Run: ``.venv/bin/python benchmarks/training.py`` (see ``--help``).
"""

from __future__ import annotations

import copy
import time

import torch
from torch import nn

from common import (
    Variant,
    base_parser,
    budget_from,
    contract_row,
    forward,
    machine_info,
    make_model,
    markdown_table,
    mixed_states,
    print_rows,
    rates,
    run_with_peak,
    setup,
    time_interleaved,
    write_report,
)
from ctran.training.label_mask import sample_training_states
from ctran.training.losses import bce_terms
from ctran.training.precision import autocast
from peak import count_flops, machine_peaks
from reference import PARITY_ATOL, check_parity, reference_from

BF16_ATOL = 0.1  # eval-mode logits of ours and the reference, both under bf16 autocast

MODELS = {
    "digits": {"backbone": "small_cnn", "dim": 128, "labels": 20, "image_size": 48, "batch": 64},
    "r101_224": {"backbone": "resnet101", "dim": 2048, "labels": 80, "image_size": 224, "batch": 4},
}


def train_step(model: nn.Module, images: torch.Tensor, truth: torch.Tensor, precision: str = "fp32"):
    """A call doing one training step of ``model`` (its own AdamW), as the trainer does (fp16: with a
    ``GradScaler``)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=1e-4)
    scaler = torch.amp.GradScaler(images.device.type, enabled=precision == "fp16")
    indices = torch.arange(len(images))
    step = 0

    def call() -> torch.Tensor:
        nonlocal step
        step += 1
        model.train()
        states = sample_training_states(truth, indices, seed=0, epoch=step).to(images.device)
        with autocast(images.device, precision):
            out = model(images, states)
        logits = out[0] if isinstance(out, tuple) else out
        loss_sum, count = bce_terms(logits.float(), truth, states)
        scaler.scale(loss_sum / count.clamp(min=1)).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return loss_sum.detach()

    return call


def bench_model(name: str, args, peaks: dict[str, float], device: torch.device) -> list[dict]:
    """Ours vs the reference at each precision (fp32, and bf16 where supported), one step each per round."""
    spec = MODELS[name]
    batch = 16 if args.quick and name == "digits" else spec["batch"]
    model = make_model(spec["labels"], spec["backbone"], spec["dim"]).to(device)
    ref = reference_from(model)
    images = torch.randn(
        batch, 3, spec["image_size"], spec["image_size"], generator=torch.Generator().manual_seed(1)
    )
    images = images.to(device)
    truth = torch.randint(0, 2, (batch, spec["labels"]), generator=torch.Generator().manual_seed(2)).to(
        device
    )
    states = mixed_states(batch, spec["labels"], device=device)
    precisions = ["fp32", "bf16"] if "bf16" in peaks else ["fp32"]
    diffs = {
        p: check_parity(
            forward(model, images, states, p)(),
            forward(ref, images, states, p)(),
            f"training {name} {p}",
            PARITY_ATOL if p == "fp32" else BF16_ATOL,
        )
        for p in precisions
    }
    calls = {}
    for p in precisions:
        calls[f"ours_{p}"] = train_step(copy.deepcopy(model), images, truth, p)
        calls[f"ref_{p}"] = train_step(copy.deepcopy(ref), images, truth, p)
    for call in calls.values():
        call()  # the first step also creates AdamW's state: not part of a step's working memory
    start = time.perf_counter()
    memory = {key: run_with_peak(call, device)[1] for key, call in calls.items()}
    repeats = budget_from(args, 30.0).repeats(time.perf_counter() - start)
    flops = count_flops(calls["ours_fp32"])
    times = time_interleaved(calls, repeats, device)
    per_s = {key: rates(t, batch)["per_s"] for key, t in times.items()}
    rows = []
    for p in precisions:
        gain = p != "fp32"
        rows.append(
            contract_row(
                f"train_{name}_b{batch}_{p}",
                batch,
                times[f"ours_{p}"],
                times[f"ref_{p}"],
                memory[f"ours_{p}"],
                memory[f"ref_{p}"],
                flops / batch,
                peaks.get(p),
                numerics=Variant(p).numerics,
                variant=p,
                precision_gain=round(per_s[f"ours_{p}"] / per_s["ours_fp32"], 3) if gain else None,
                ref_precision_gain=round(per_s[f"ref_{p}"] / per_s["ref_fp32"], 3) if gain else None,
                max_abs_logit_diff_vs_ref=diffs[p],
                states="mixed unknown/negative/positive (parity); LMT states (steps)",
            )
        )
    return rows


def main(argv: list[str] | None = None) -> dict:
    p = base_parser(__doc__, "training")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
    args = p.parse_args(argv)
    device = setup(args)
    peaks = machine_peaks(device, args.quick)
    names = ["digits"] if args.quick else [n.strip() for n in args.models.split(",") if n.strip()]
    rows = []
    for name in names:
        rows += bench_model(name, args, peaks, device)
        print_rows(rows[-2:])
    print(markdown_table(rows))
    write_report(args.out, "training", machine_info(device), rows)
    return {"rows": rows}


if __name__ == "__main__":
    main()
