"""The C-Tran transformer encoder: post-norm layers over [image tokens ; label tokens].

Each layer is ``x = norm1(x + attn(x)); x = norm2(x + ffn(x))`` with ReLU and dropout, as in the paper.
Attention uses ``nn.MultiheadAttention``, which dispatches to the fused ``scaled_dot_product_attention``
kernel (and, in eval mode, PyTorch's native fast path) unless attention weights are asked for. Parameter
names match the official implementation's, so its checkpoints map key by key.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class EncoderLayer(nn.Module):
    """One post-norm self-attention layer that returns per-head attention weights only when asked."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: (B, N, D) -> (B, N, D), and attention (B, heads, N, N) when need_weights."""
        attended, weights = self.self_attn(x, x, x, need_weights=need_weights, average_attn_weights=False)
        x = self.norm1(x + self.dropout1(attended))
        x = self.norm2(x + self.dropout2(self.linear2(self.dropout(F.relu(self.linear1(x))))))
        return x, weights


class Encoder(nn.Module):
    """A stack of ``EncoderLayer``; collects each layer's attention when asked (for explanations)."""

    def __init__(self, dim: int, heads: int, layers: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(dim, heads, ffn_dim, dropout) for _ in range(layers))

    def forward(self, x: torch.Tensor, need_weights: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x: (B, N, D) -> (B, N, D), and per-layer attention (B, heads, N, N) when asked (else empty)."""
        attentions = []
        for layer in self.layers:
            x, weights = layer(x, need_weights)
            if need_weights:
                attentions.append(weights)
        return x, attentions
