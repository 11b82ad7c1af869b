"""Which labels the model is told: Label Mask Training, the evaluation known-sets, and the masked loss.

All functions take ground truth ``truth`` (B, L) in {-1, 0, 1} (-1: not annotated) and return input states
(B, L) in the same encoding (``ctran.states``). A label whose ground truth is missing is never revealed.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ctran.states import UNKNOWN


def sample_training_states(
    truth: torch.Tensor,
    indices: torch.Tensor | list[int],
    seed: int,
    epoch: int,
    max_known_fraction: float = 0.75,
    revealable: torch.Tensor | None = None,
) -> torch.Tensor:
    """Label Mask Training: per image reveal ``k ~ U{0..floor(f*A)}`` random labels among its A annotated
    ``revealable`` ones (a (L,) bool mask; None: every label).

    The known subset is uniform over labels (so mostly negatives, as in the paper); the model learns to
    use whatever it is told, and the loss covers the rest. On fully annotated data A is the number of
    revealable labels, the paper's rule; with missing annotations the cap follows what the image has, so
    that at least a quarter of its annotations are always left to the loss (a cap over all labels would
    reveal every annotation of a sparsely annotated image, leaving it nothing to learn from). CUB-312
    reveals only its concepts (the paper: 0..84 of 112 known, the bird class never), hence ``revealable``.
    Each image's draw depends only on (seed, epoch, image index), so it is the same however the batch is
    split across processes and when a killed run resumes.
    """
    num_labels = truth.shape[1]
    pool = np.ones(num_labels, dtype=bool) if revealable is None else revealable.cpu().numpy().astype(bool)
    if pool.shape != (num_labels,):
        raise ValueError(f"revealable must be a ({num_labels},) mask, got shape {pool.shape}")
    annotated = (truth != UNKNOWN).cpu().numpy() & pool  # (B, L): what may be revealed
    reveal = np.zeros(annotated.shape, dtype=bool)  # (B, L)
    for row, index in enumerate(torch.as_tensor(indices).tolist()):
        rng = np.random.default_rng([seed, epoch, index])
        max_known = math.floor(max_known_fraction * int(annotated[row].sum()))
        num_known = rng.integers(0, max_known + 1)
        keys = np.where(annotated[row], rng.random(num_labels), 2.0)  # the rest sort last
        reveal[row, np.argsort(keys, kind="stable")[:num_known]] = True
    reveal_t = torch.from_numpy(reveal & annotated).to(truth.device)
    return torch.where(reveal_t, truth, torch.full_like(truth, UNKNOWN))


def evaluation_states(
    truth: torch.Tensor, indices: torch.Tensor | list[int], fraction: float, seed: int
) -> torch.Tensor:
    """Reveal ``int(fraction * A)`` of each image's A annotated labels, chosen from (seed, image index) alone.

    The choice does not depend on batch composition, model or run, so every model is scored on the same
    known sets. The count follows what the image has, not the L labels: on sparse annotations (Open Images,
    ``unlisted=unknown``, ``data.keep_annotations``) a count over L would reveal every annotation and leave
    nothing to score. On fully annotated data A = L, so the known sets are the ones ``int(fraction * L)``
    always gave.
    """
    states = torch.full_like(truth, UNKNOWN)
    if fraction <= 0:
        return states
    truth_cpu = truth.cpu()
    for row, index in enumerate(torch.as_tensor(indices).tolist()):
        annotated = torch.nonzero(truth_cpu[row] != UNKNOWN).flatten().numpy()
        count = int(fraction * annotated.size)
        if count == 0:
            continue
        chosen = torch.as_tensor(np.random.default_rng([seed, index]).permutation(annotated)[:count])
        chosen = chosen.to(truth.device)
        states[row, chosen] = truth[row, chosen]
    return states


def scored_mask(truth: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """Entries that count in loss and metrics: annotated and not given to the model."""
    return (truth != UNKNOWN) & (inputs == UNKNOWN)
