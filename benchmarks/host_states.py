"""Host time per training step spent on label states: the Label Mask Training draw and the state check.

Batch 16, L = 80 (every label annotated, the COCO case) and L = 9,605 (about 10 annotated per image, the
rest unknown: Open Images), and L = 9,605 fully annotated (the worst case for the draw). Two sides, timed
in interleaved rounds on the same truth:

- ``ours``: ``ctran.training.label_mask.sample_training_states`` as the trainer calls it (on the host,
  before the batch moves to the device) and the check ``CTran.label_tokens`` runs in training mode
  (``ctran.states.check_states(..., values=False)``: the shape only, no device sync);
- ``before``: the draw and check as they were before issue 21 (``reference_training_states``: one argsort
  of all L keys and Python masking per image; ``reference_check``: min/max/round over the states, which on
  a GPU synchronises the device on every forward). The draws must be equal before anything is timed.

On this machine there is no GPU, so the device-to-host copy and the synchronisations the old path caused
are not in the numbers: the GPU saving is larger than what is shown here.

Run: ``.venv/bin/python benchmarks/host_states.py --threads 1`` (see ``--help``).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from common import base_parser, budget_from, machine_info, setup, time_interleaved, write_report
from ctran.states import POSITIVE, UNKNOWN, check_states
from ctran.training.label_mask import sample_training_states

BATCH, SEED, EPOCH = 16, 0, 3
SETTINGS = (("L=80 dense", 80, None), ("L=9605 sparse", 9605, 10), ("L=9605 dense", 9605, None))


def reference_training_states(
    truth: torch.Tensor,
    indices: torch.Tensor | list[int],
    seed: int,
    epoch: int,
    max_known_fraction: float = 0.75,
    revealable: torch.Tensor | None = None,
) -> torch.Tensor:
    """Label Mask Training's draw as it was before issue 21: the formula the new one must reproduce."""
    num_labels = truth.shape[1]
    pool = np.ones(num_labels, dtype=bool) if revealable is None else revealable.cpu().numpy().astype(bool)
    annotated = (truth != UNKNOWN).cpu().numpy() & pool  # (B, L)
    reveal = np.zeros(annotated.shape, dtype=bool)  # (B, L)
    for row, index in enumerate(torch.as_tensor(indices).tolist()):
        rng = np.random.default_rng([seed, epoch, index])
        max_known = math.floor(max_known_fraction * int(annotated[row].sum()))
        num_known = rng.integers(0, max_known + 1)
        keys = np.where(annotated[row], rng.random(num_labels), 2.0)  # the rest sort last
        reveal[row, np.argsort(keys, kind="stable")[:num_known]] = True
    reveal_t = torch.from_numpy(reveal & annotated).to(truth.device)
    return torch.where(reveal_t, truth, torch.full_like(truth, UNKNOWN))


def reference_check(states: torch.Tensor, num_labels: int) -> None:
    """The state check every forward ran before issue 21 (three device syncs on a GPU)."""
    if states.dim() != 2 or states.shape[1] != num_labels:
        raise ValueError("shape")
    if states.is_floating_point() and not torch.equal(states, states.round()):
        raise ValueError("integers")
    if states.numel() and (states.min() < UNKNOWN or states.max() > POSITIVE):
        raise ValueError("range")


def make_truth(labels: int, annotated: int | None, seed: int = 0) -> torch.Tensor:
    """(BATCH, labels) truth: every label annotated (``None``) or ``annotated`` random ones per image."""
    g = torch.Generator().manual_seed(seed)
    truth = (torch.rand(BATCH, labels, generator=g) < 0.3).long()
    if annotated is not None:
        keep = torch.rand(BATCH, labels, generator=g).argsort(1)[:, :annotated]  # (B, annotated)
        sparse = torch.full_like(truth, UNKNOWN)
        sparse.scatter_(1, keep, truth.gather(1, keep))
        truth = sparse
    return truth


def main(argv: list[str] | None = None) -> None:
    p = base_parser(__doc__, "host_states")
    args = p.parse_args(argv)
    device = setup(args)
    budget = budget_from(args, 10.0)
    rows = []
    for name, labels, annotated in SETTINGS:
        truth = make_truth(labels, annotated)
        indices = torch.arange(1000, 1000 + BATCH)
        ours_states = sample_training_states(truth, indices, SEED, EPOCH)
        if not torch.equal(ours_states, reference_training_states(truth, indices, SEED, EPOCH)):
            raise SystemExit(f"{name}: the draw differs from the formula before issue 21")

        def ours(truth=truth, labels=labels, indices=indices) -> None:
            states = sample_training_states(truth, indices, SEED, EPOCH)
            check_states(states, labels, values=False)

        def before(truth=truth, labels=labels, indices=indices) -> None:
            reference_check(reference_training_states(truth, indices, SEED, EPOCH), labels)

        ours(), before()  # warm-up
        times = time_interleaved({"ours": ours, "before": before}, budget.repeats(0.05), device)
        ours_ms, before_ms = (1e3 * float(np.median(times[k])) for k in ("ours", "before"))
        rows.append(
            {
                "name": name,
                "labels": labels,
                "annotated_per_image": annotated or labels,
                "batch": BATCH,
                "ours_ms_per_step": round(ours_ms, 3),
                "before_ms_per_step": round(before_ms, 3),
                "speedup": round(before_ms / ours_ms, 1),
                "repeats": len(times["ours"]),
            }
        )
        print(rows[-1], flush=True)
    write_report(args.out, "host_states", machine_info(device), rows)
    lines = ["| setting | host ms/step before | host ms/step now | speedup |", "|---|---:|---:|---:|"]
    lines += [
        f"| {r['name']} | {r['before_ms_per_step']} | {r['ours_ms_per_step']} | {r['speedup']}x |"
        for r in rows
    ]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
