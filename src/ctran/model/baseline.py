"""The standard CNN recipe C-Tran is compared with: backbone, global average pooling, one linear layer.

It has the same ``encode`` / ``decode`` / ``forward(images, states)`` interface as ``CTran`` so the same
training and evaluation code runs both; it ignores the label states, as any plain CNN must.
"""

from __future__ import annotations

import torch
from torch import nn


class PooledLinear(nn.Module):
    """Backbone -> global average pool -> Linear(C, L)."""

    takes_states = False  # known labels cannot inform it: training skips LMT, evaluation the extra setting
    label_parameters = ("head.weight", "head.bias")  # one row per label: what fine-tuning matches by name

    def __init__(self, backbone: nn.Module, num_labels: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_labels = num_labels
        self.head = nn.Linear(backbone.num_channels, num_labels)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> pooled features (B, C)."""
        return self.backbone(images).mean(dim=(2, 3))

    def decode(self, features: torch.Tensor, states: torch.Tensor | None = None) -> torch.Tensor:
        """Pooled features (B, C) -> logits (B, L); known states cannot inform a plain CNN."""
        return self.head(features)

    def forward(self, images: torch.Tensor, states: torch.Tensor | None = None) -> torch.Tensor:
        return self.decode(self.encode(images))
