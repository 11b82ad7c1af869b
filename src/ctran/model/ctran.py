"""C-Tran: a transformer over image-feature tokens and one token per label (Lanchantin et al., CVPR 2021).

    images (B, 3, H, W) --backbone--> (B, C, h, w) --1x1 proj--> image tokens (B, h*w, D) [+ sine pos]
    label tokens (B, L, D) = label embedding (L, D) + state embedding[state] (B, L, D)
    LayerNorm(cat[image tokens ; label tokens]) --N post-norm layers--> label outputs (B, L, D)
    logits (B, L) = per-label linear readout of the L label output tokens

Only the label outputs are read, so the last layer computes only their rows (exact; see ``transformer``).

The work is split so the expensive half can be cached: ``encode`` computes everything that does not depend
on the label states, once per image, and ``decode`` the rest for any set of known labels. What that memory
holds depends on the attention pattern (``attention``), never on the caller:

- ``full`` (the paper's): the image tokens (B, T, D); ``decode`` runs label tokens + transformer + readout;
- ``one_way`` (image tokens never attend to label tokens): every layer's image keys and values
  (B, T, layers * 2D); ``decode`` runs only the L label rows of each layer + readout.

``forward(..., return_attention=True)`` runs the whole [image ; label] sequence explicitly and returns every
layer's attention weights (for explanations); its logits equal ``decode(encode(images), states)``.

``decode``/``forward`` take an optional ``label_index`` (K,): run only those K label tokens (their
embedding and readout rows), states (B, K) and logits (B, K) in that order. Training uses it to leave out
the label tokens that carry neither a loss nor a known state (``train.label_tokens``); the other tokens
are then absent from attention, so the logits differ from the full model's (evaluation always runs all).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ctran.model.position_encoding import PositionEmbeddingSine
from ctran.model.readout import PerLabelLinear
from ctran.model.transformer import Encoder, one_way_mask
from ctran.states import check_states, state_index


@dataclass
class Output:
    """What ``forward``/``decode`` return when attention is asked for."""

    logits: torch.Tensor  # (B, L)
    attentions: list[torch.Tensor]  # per layer (B, heads, T + L, T + L); image tokens first


class CTran(nn.Module):
    """The C-Tran classifier; ``forward(images, states)`` returns logits (B, L)."""

    takes_states = True
    label_parameters = ("label_embed.weight", "readout.weight", "readout.bias")  # row l belongs to label l

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
        attention: str = "full",
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
        self.encoder = Encoder(dim, heads, layers, ffn_dim or dim, dropout, attention)
        self.readout = PerLabelLinear(num_labels, dim)
        self.register_buffer("label_qkv", None, persistent=False)  # (3, L, 3D): freeze_label_projections
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

    @property
    def attention(self) -> str:
        """``full`` or ``one_way``: which tokens the image tokens attend to (see ``transformer``)."""
        return self.encoder.attention

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) -> memory (B, T, M): all that ``decode`` needs from the images, cacheable
        across label states. M = D image tokens (``full``) or layers * 2D image keys/values (``one_way``)."""
        tokens = self.image_tokens(images)  # (B, T, D)
        return self.encoder.encode_images(self.norm(tokens)) if self.attention == "one_way" else tokens

    def decode(
        self, memory: torch.Tensor, states: torch.Tensor, label_index: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``encode`` memory (B, T, M) + label states (B, L) in {-1, 0, 1} -> logits (B, L); with
        ``label_index`` (K,), states (B, K) of those labels -> their logits (B, K).

        A memory of one image (1, T, M) serves any number of state rows: several hypotheses about it.
        """
        labels = self.label_tokens(states, label_index).to(memory.dtype)  # (B, K, D)
        first_qkv = None  # (B, K, 3D) the first layer's label projections, when tabulated
        if self.label_qkv is not None and not self.training:
            rows = torch.arange(self.num_labels, device=states.device) if label_index is None else label_index
            first_qkv = self.label_qkv[state_index(states), rows]  # rows (K,)
        if self.attention == "one_way":
            h = self.encoder.decode_labels(self.norm(labels), memory, first_qkv)  # (B, K, D)
        else:
            tokens = memory.expand(labels.shape[0], -1, -1)  # (B, T, D)
            x = self.norm(torch.cat([tokens, labels], dim=1))  # (B, T + K, D)
            h, _ = self.encoder(x, keep=labels.shape[1], first_qkv=first_qkv)  # (B, K, D)
        return self.readout(h, label_index)  # (B, K)

    def freeze_label_projections(self, dtype: torch.dtype = torch.float32) -> None:
        """Tabulate the first layer's Q/K/V of every label token, for inference with fixed weights.

        A label token is ``norm(label_embed[l] + state_embed[s])`` whatever the image, so its first-layer
        projections take one of three values per label: a (3, L, 3D) table that ``decode`` looks up in eval
        mode instead of recomputing (at the paper's setting 2 of one-way re-conditioning's 13 GFLOPs).
        ``dtype`` is the precision decode runs in (bf16/fp16: computed under autocast, as decode is). The
        table does not follow later changes of the weights: call this again, or set ``label_qkv = None``.
        """
        device = self.label_embed.weight.device
        with torch.no_grad(), torch.autocast(device.type, dtype, enabled=dtype != torch.float32):
            labels = (self.label_embed.weight + self.state_embed.weight[:, None]).to(dtype)  # (3, L, D)
            self.label_qkv = self.encoder.layers[0].qkv(self.norm(labels))  # (3, L, 3D)

    def forward(
        self,
        images: torch.Tensor,
        states: torch.Tensor,
        return_attention: bool = False,
        label_index: torch.Tensor | None = None,
        shown: torch.Tensor | None = None,
    ) -> torch.Tensor | Output:
        """Normalised images (B, 3, H, W), states (B, L) -> logits (B, L) (``Output`` with attention);
        with ``label_index`` (K,) the states and logits are those labels' (B, K) (see ``decode``).

        ``shown`` (B,) bool, in training only (``train.image_dropout``): a False row's image memory is
        zeroed, so its labels are predicted from the known labels alone.
        """
        if not return_attention:
            memory = self.encode(images)  # (B, T, M)
            if shown is not None:
                memory = memory * shown.to(memory.dtype)[:, None, None]
            return self.decode(memory, states, label_index)
        tokens = self.image_tokens(images)  # (B, T, D)
        labels = self.label_tokens(states, label_index).to(tokens.dtype)  # (B, K, D)
        x = self.norm(torch.cat([tokens, labels], dim=1))  # (B, T + K, D)
        count = labels.shape[1]
        mask = one_way_mask(tokens.shape[1], count, x.device) if self.attention == "one_way" else None
        h, attentions = self.encoder(x, need_weights=True, keep=count, mask=mask)  # (B, K, D)
        return Output(self.readout(h, label_index), attentions)

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) -> image tokens (B, h*w, D): backbone, projection, position."""
        features = self.input_proj(self.backbone(images))  # (B, D, h, w)
        tokens = features.flatten(2).transpose(1, 2)  # (B, h*w, D)
        if self.position is not None:
            h, w = features.shape[-2:]
            tokens = tokens + self.position(h, w, tokens.device, tokens.dtype)
        return tokens

    def label_tokens(self, states: torch.Tensor, label_index: torch.Tensor | None = None) -> torch.Tensor:
        """Label states (B, K) in {-1, 0, 1} -> label tokens (B, K, D): label + state embedding, of every
        label (K = L) or of ``label_index`` (K,).

        In training the states come from Label Mask Training, valid by construction, and only their shape
        is checked: checking values would wait for the GPU on every step. Every other call checks them.
        """
        count = self.num_labels if label_index is None else len(label_index)
        check_states(states, count, values=not self.training)
        embed = self.label_embed.weight if label_index is None else self.label_embed.weight[label_index]
        return embed + self.state_embed(state_index(states))  # (B, K, D)
