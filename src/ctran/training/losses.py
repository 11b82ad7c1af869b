"""Multi-label losses restricted to the scored entries (annotated and not revealed to the model).

Each returns the *sum* over scored entries and their count, so the caller can normalise by the count over
every process and micro-batch: a mean over unknown labels that does not depend on how the batch was split.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ctran.training.label_mask import scored_mask


def bce_terms(
    logits: torch.Tensor, truth: torch.Tensor, inputs: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary cross-entropy (the paper's loss): (sum over scored entries, count)."""
    weight = scored_mask(truth, inputs).to(logits.dtype)
    losses = F.binary_cross_entropy_with_logits(logits, truth.clamp(min=0).to(logits.dtype), reduction="none")
    return (losses * weight).sum(), weight.sum()


def asl_terms(
    logits: torch.Tensor,
    truth: torch.Tensor,
    inputs: torch.Tensor,
    gamma_neg: float = 4.0,
    gamma_pos: float = 0.0,
    clip: float = 0.05,
    eps: float = 1e-8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric loss (Ben-Baruch et al., ICCV 2021): focusing down-weights easy negatives, and the
    probability margin ``clip`` discards very easy ones. (sum over scored entries, count)."""
    weight = scored_mask(truth, inputs).to(logits.dtype)
    target = truth.clamp(min=0).to(logits.dtype)
    prob = torch.sigmoid(logits)
    prob_neg = (1 - prob + clip).clamp(max=1) if clip > 0 else 1 - prob
    # the focusing bases are clamped too: x ** gamma with 0 < gamma < 1 has an infinite slope at x = 0, and
    # infinity times log(1) = 0 would make the gradient of a very confident, correct output NaN
    positive = target * torch.log(prob.clamp(min=eps)) * (1 - prob).clamp(min=eps) ** gamma_pos
    negative = (1 - target) * torch.log(prob_neg.clamp(min=eps)) * (1 - prob_neg).clamp(min=eps) ** gamma_neg
    return -((positive + negative) * weight).sum(), weight.sum()
