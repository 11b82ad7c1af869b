"""2-D sine position encoding for the image-feature grid (as in DETR; optional in C-Tran).

The official ``--pos_emb`` was a hard-coded 18x18 tensor called like a module (it crashed); here the encoding
is computed for whatever grid the backbone returns, on the tokens' device and dtype.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class PositionEmbeddingSine(nn.Module):
    """Half the channels encode the row, half the column: sines and cosines of geometric frequencies."""

    def __init__(self, dim: int, temperature: float = 10000.0) -> None:
        super().__init__()
        if dim % 4:
            raise ValueError(f"sine position encoding needs a hidden size divisible by 4, got {dim}")
        self.dim = dim
        self.temperature = temperature

    def forward(self, h: int, w: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """Return the encoding of an h x w grid flattened row-major: (h*w, D)."""
        quarter = self.dim // 4
        freqs = self.temperature ** (-torch.arange(quarter, device=device, dtype=torch.float32) / quarter)
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h * 2 * math.pi
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w * 2 * math.pi
        y = ys[:, None] * freqs  # (h, D/4)
        x = xs[:, None] * freqs  # (w, D/4)
        y = torch.cat([y.sin(), y.cos()], dim=1)[:, None, :].expand(h, w, self.dim // 2)
        x = torch.cat([x.sin(), x.cos()], dim=1)[None, :, :].expand(h, w, self.dim // 2)
        return torch.cat([y, x], dim=2).reshape(h * w, self.dim).to(dtype)  # (h*w, D)
