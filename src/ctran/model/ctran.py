"""C-Tran: a transformer over image-feature tokens and one token per label (Lanchantin et al., CVPR 2021).

    images (B, 3, H, W) --backbone--> (B, C, h, w) --1x1 proj--> image tokens (B, h*w, D) [+ sine pos]
    label tokens (B, L, D) = label embedding (L, D) + state embedding[state] (B, L, D)
    LayerNorm(cat[image tokens ; label tokens]) --N post-norm layers--> label outputs (B, L, D)
    logits (B, L) = per-label linear readout of the L label output tokens

Only the label outputs are read, so the last layer computes only their rows (exact; see ``transformer``).

The work is split so the expensive half can be cached: ``encode`` runs the backbone once per image;
``decode`` re-runs only label tokens + transformer + readout for any set of known labels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ctran.model.position_encoding import PositionEmbeddingSine
from ctran.model.readout import PerLabelLinear
from ctran.model.transformer import Encoder
from ctran.states import check_states, state_index


@dataclass
class Output:
    """What ``forward``/``decode`` return when attention is asked for."""

    logits: torch.Tensor  # (B, L)
    attentions: list[torch.Tensor]  # per layer (B, heads, T + L, T + L); image tokens first


class CTran(nn.Module):
    """The C-Tran classifier; ``forward(images, states)`` returns logits (B, L)."""

    def __init__(
        self,
        backbone: nn.Module,
        num_labels: int,
        dim: int = 2048,
        layers: int = 3,
        heads: int = 4,
        ffn_dim: int | None = None,
        dropout: float = 0.1,
        position_encoding: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_labels = num_labels
        channels = backbone.num_channels
        self.input_proj = nn.Conv2d(channels, dim, 1) if channels != dim else nn.Identity()
        self.position = PositionEmbeddingSine(dim) if position_encoding else None
        self.label_embed = nn.Embedding(num_labels, dim)
        # Row 0 (unknown) is a padding row: it never receives gradient. It starts at zero here; an imported
        # official checkpoint keeps its own non-zero row.
        self.state_embed = nn.Embedding(3, dim, padding_idx=0)
        self.norm = nn.LayerNorm(dim)
        self.encoder = Encoder(dim, heads, layers, ffn_dim or dim, dropout)
        self.readout = PerLabelLinear(num_labels, dim)
        self.register_buffer("label_qkv", None, persistent=False)  # see freeze_label_projections
        self._init_embeddings(dim)

    def _init_embeddings(self, dim: int) -> None:
        """Label and state embeddings on the same small scale (±1/sqrt(D), as the official code).

        With PyTorch's default N(0, 1) state rows and small label rows, a known label's token loses its
        identity and the model learns to ignore known labels.
        """
        bound = 1 / math.sqrt(dim)
        nn.init.uniform_(self.label_embed.weight, -bound, bound)
        nn.init.uniform_(self.state_embed.weight, -bound, bound)
        with torch.no_grad():
            self.state_embed.weight[0].zero_()

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) -> image tokens (B, h*w, D): the expensive half, cacheable across states."""
        features = self.input_proj(self.backbone(images))  # (B, D, h, w)
        tokens = features.flatten(2).transpose(1, 2)  # (B, h*w, D)
        if self.position is not None:
            h, w = features.shape[-2:]
            tokens = tokens + self.position(h, w, tokens.device, tokens.dtype)
        return tokens

    def freeze_label_projections(self, dtype: torch.dtype = torch.float32) -> None:
        """Tabulate the first layer's Q/K/V of every label token, for inference with fixed weights.

        A label token is ``norm(label_embed[l] + state_embed[s])`` whatever the image, so its first-layer
        projections take one of three values per label: a (3, L, 3D) table (9 L D values) looked up by
        ``decode`` in eval mode instead of recomputed for each image (at L = 1000, D = 2048, 25 of an
        image's 330 GFLOPs). ``dtype`` is the one label tokens are cast to (that of the image tokens). The
        table does not follow later changes of the weights: call this again, or set ``label_qkv = None``.
        """
        with torch.no_grad():
            labels = self.label_embed.weight + self.state_embed.weight[:, None]  # (3, L, D)
            self.label_qkv = self.encoder.layers[0].project(self.norm(labels.to(dtype)))  # (3, L, 3D)

    def decode(
        self, tokens: torch.Tensor, states: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | Output:
        """Image tokens (B, T, D) + label states (B, L) in {-1, 0, 1} -> logits (B, L)."""
        check_states(states, self.num_labels)
        index = state_index(states)  # (B, L) rows of the state embedding
        labels = self.label_embed.weight + self.state_embed(index)  # (B, L, D)
        x = self.norm(torch.cat([tokens, labels.to(tokens.dtype)], dim=1))  # (B, T + L, D)
        first_qkv = None
        if self.label_qkv is not None and not (self.training or return_attention):
            first_qkv = self.label_qkv[
                index, torch.arange(self.num_labels, device=index.device)
            ]  # (B, L, 3D)
        h, attentions = self.encoder(
            x, need_weights=return_attention, keep=self.num_labels, first_qkv=first_qkv
        )  # (B, L, D)
        logits = self.readout(h)  # (B, L)
        return Output(logits, attentions) if return_attention else logits

    def forward(
        self, images: torch.Tensor, states: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | Output:
        """Normalised images (B, 3, H, W), states (B, L) -> logits (B, L) (``Output`` with attention)."""
        return self.decode(self.encode(images), states, return_attention)
