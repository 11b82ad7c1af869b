"""Per-label readout: an independent linear classifier on each label's own output token.

``logit_l = <w_l, h_l> + b_l``. The official code applies one ``Linear(D, L)`` to all L tokens, building a
``(B, L, L)`` tensor, and keeps its diagonal: O(L^2 * D) time and memory for the same numbers. This module
computes only the diagonal, O(L * D).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class PerLabelLinear(nn.Module):
    """Holds W (L, D) and b (L,) laid out like ``nn.Linear(D, L)``, so official weights load unchanged."""

    def __init__(self, num_labels: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_labels, dim))
        self.bias = nn.Parameter(torch.empty(num_labels))
        bound = 1 / math.sqrt(dim)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, h: torch.Tensor, label_index: torch.Tensor | None = None) -> torch.Tensor:
        """h: (B, L, D) -> logits (B, L); with ``label_index`` (K,), h (B, K, D) of those labels -> (B, K)."""
        weight, bias = self.weight, self.bias  # (L, D), (L,)
        if label_index is not None:
            weight, bias = weight[label_index], bias[label_index]  # (K, D), (K,)
        return torch.einsum("bld,ld->bl", h, weight.to(h.dtype)) + bias.to(h.dtype)
