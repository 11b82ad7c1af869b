"""Training: images/s of one training step (forward, backward, AdamW), ours vs the reference.

A step is what ``ctran.training.trainer`` does per batch: Label Mask Training states, the forward pass in
train mode (dropout on), BCE on the unknown labels averaged over them, backward, an AdamW update. Ours runs
in float32 and with bf16 autocast (the trainer's ``precision=bf16``, chosen by ``auto`` on CPUs with
AVX512-BF16); the reference in float32. Both start from the same weights, checked to give the same logits
in eval mode before timing, and each has its own optimiser. Models:

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
    base_parser,
    budget_from,
    contract_row,
    forward,
    machine_info,
    make_model,
    markdown_table,
    run_with_peak,
    setup,
    time_interleaved,
    write_report,
)
from ctran.training.label_mask import sample_training_states
from ctran.training.losses import bce_terms
from ctran.training.precision import autocast
from peak import count_flops, machine_peaks
from reference import check_parity, reference_from

MODELS = {
    "digits": {"backbone": "small_cnn", "dim": 128, "labels": 20, "image_size": 48, "batch": 64},
    "r101_224": {"backbone": "resnet101", "dim": 2048, "labels": 80, "image_size": 224, "batch": 4},
}


def train_step(model: nn.Module, images: torch.Tensor, truth: torch.Tensor, precision: str = "fp32"):
    """A call doing one training step of ``model`` (its own AdamW), as the trainer does."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=1e-4)
    indices = torch.arange(len(images))
    step = 0

    def call() -> torch.Tensor:
        nonlocal step
        step += 1
        model.train()
        states = sample_training_states(truth, indices, seed=0, epoch=step)
        with autocast(images.device, precision):
            out = model(images, states)
        logits = out[0] if isinstance(out, tuple) else out
        loss_sum, count = bce_terms(logits.float(), truth, states)
        (loss_sum / count.clamp(min=1)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss_sum.detach()

    return call


def bench_model(name: str, args, peaks: dict[str, float], device: torch.device) -> list[dict]:
    """Ours (fp32, and bf16 where supported) vs the reference, one training step each per round."""
    spec = MODELS[name]
    batch = 16 if args.quick and name == "digits" else spec["batch"]
    model = make_model(spec["labels"], spec["backbone"], spec["dim"]).to(device)
    ref = reference_from(model)
    torch.manual_seed(1)
    images = torch.randn(batch, 3, spec["image_size"], spec["image_size"], device=device)
    truth = torch.randint(0, 2, (batch, spec["labels"]), device=device)
    states = torch.full_like(truth, -1)
    diff = check_parity(forward(model, images, states)(), forward(ref, images, states)(), f"training {name}")
    precisions = ["fp32", "bf16"] if "bf16" in peaks else ["fp32"]
    calls = {
        p: train_step(copy.deepcopy(model) if p != "fp32" else model, images, truth, p) for p in precisions
    }
    calls["ref"] = train_step(ref, images, truth)
    for call in calls.values():
        call()  # the first step also creates AdamW's state: not part of a step's working memory
    start = time.perf_counter()
    memory = {key: run_with_peak(call, device)[1] for key, call in calls.items()}
    repeats = budget_from(args, 20.0).repeats(time.perf_counter() - start)
    flops = count_flops(calls["fp32"])
    times = time_interleaved(calls, repeats, device)
    return [
        contract_row(
            f"train_{name}_b{batch}_{precision}",
            batch,
            times[precision],
            times["ref"],
            memory[precision],
            memory["ref"],
            flops / batch,
            peaks.get(precision),
            variant=precision,
            max_abs_logit_diff_vs_ref=diff,
        )
        for precision in precisions
    ]


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
        print(markdown_table(rows[-2:]).split("\n", 2)[2], flush=True)
    print(markdown_table(rows))
    write_report(args.out, "training", machine_info(device), rows)
    print(f"wrote {args.out}")
    return {"rows": rows}


if __name__ == "__main__":
    main()
