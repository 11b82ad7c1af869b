"""Which labels the model is told: Label Mask Training, the evaluation known-sets, and the masked loss.

All functions take ground truth ``truth`` (B, L) in {-1, 0, 1} (-1: not annotated) and return input states
(B, L) in the same encoding (``ctran.states``). A label whose ground truth is missing is never revealed.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ctran.states import UNKNOWN


def sample_training_states(
    truth: torch.Tensor, max_known_fraction: float = 0.75, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Label Mask Training: per image reveal ``k ~ U{0..floor(f*L)}`` random annotated labels.

    The known subset is uniform over labels (so mostly negatives, as in the paper); the model learns to
    use whatever it is told, and the loss covers the rest.
    """
    batch, num_labels = truth.shape
    max_known = math.floor(max_known_fraction * num_labels)
    num_known = torch.randint(0, max_known + 1, (batch, 1), generator=generator)  # (B, 1)
    keys = torch.rand(batch, num_labels, generator=generator)  # (B, L)
    keys = keys.masked_fill(truth.cpu() == UNKNOWN, 2.0)  # unannotated labels sort last
    rank = keys.argsort(dim=1).argsort(dim=1)  # (B, L): position of each label in a random order
    reveal = (rank < num_known).to(truth.device)
    return torch.where(reveal, truth, torch.full_like(truth, UNKNOWN))


def evaluation_states(
    truth: torch.Tensor, indices: torch.Tensor | list[int], fraction: float, seed: int
) -> torch.Tensor:
    """Reveal ``int(fraction * L)`` annotated labels per image, chosen from (seed, image index) alone.

    The choice does not depend on batch composition, model or run, so every model is scored on the same
    known sets.
    """
    states = torch.full_like(truth, UNKNOWN)
    count = int(fraction * truth.shape[1])
    if count == 0:
        return states
    truth_cpu = truth.cpu()
    for row, index in enumerate(torch.as_tensor(indices).tolist()):
        annotated = torch.nonzero(truth_cpu[row] != UNKNOWN).flatten().numpy()
        chosen = torch.as_tensor(np.random.default_rng([seed, index]).permutation(annotated)[:count])
        chosen = chosen.to(truth.device)
        states[row, chosen] = truth[row, chosen]
    return states


def scored_mask(truth: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """Entries that count in loss and metrics: annotated and not given to the model."""
    return (truth != UNKNOWN) & (inputs == UNKNOWN)


def masked_bce(logits: torch.Tensor, truth: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """BCE averaged over the scored entries only (a mean, so the step size does not scale with B or L)."""
    weight = scored_mask(truth, inputs).to(logits.dtype)
    losses = F.binary_cross_entropy_with_logits(logits, truth.clamp(min=0).to(logits.dtype), reduction="none")
    return (losses * weight).sum() / weight.sum().clamp(min=1.0)
