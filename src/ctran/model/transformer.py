"""The C-Tran transformer encoder: post-norm layers over [image tokens ; label tokens].

Each layer is ``x = norm1(x + attn(x)); x = norm2(x + ffn(x))`` with ReLU and dropout, as in the paper.
Parameters live in an ``nn.MultiheadAttention`` (packed Q/K/V, as the official implementation), so official
checkpoints map key by key. Without attention weights, attention is one fused
``F.scaled_dot_product_attention`` call over those parameters: on CPU its flash kernel is faster than
``nn.MultiheadAttention``'s native fast path and never materialises the (B, heads, N, N) score matrix, so
memory grows linearly with the number of labels. Attention weights (for explanations) come from
``nn.MultiheadAttention`` itself.

Only the label tokens of the last layer are ever read, so the encoder can compute just the last ``keep``
rows in its last layer: their queries, attention, feed-forward and norms (keys and values still come from
every token). This is exact, and removes most of the last layer for the image tokens.

The first layer can also be given the Q/K/V projections of its label rows (``first_qkv``): a label token
enters it with one of three values (its state), so its projections can be looked up from a table
(``CTran.freeze_label_projections``, for inference) instead of recomputed for every image.

Two attention patterns (``ATTENTION``):

- ``full`` (the paper's): every token attends to every token, so the image tokens depend on the label states
  and a change of one known label re-runs every row of every layer;
- ``one_way``: image tokens attend only to image tokens, label tokens to everything. The image stream then
  never depends on the label states, so ``encode_images`` runs it once per image and keeps each layer's image
  keys and values; ``decode_labels`` runs only the L label rows through the layers, attending over those
  cached keys and values plus their own. Each is one fused attention call per layer (image-to-image, and
  label-to-all); the last layer computes image keys and values only, never image outputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ATTENTION = ("full", "one_way")


def one_way_mask(images: int, labels: int, device: torch.device | None = None) -> torch.Tensor:
    """(N, N) bool, True where a query (row) may attend to a key (column), N = images + labels: image rows
    see image columns only, label rows see everything."""
    allowed = torch.ones(images + labels, images + labels, dtype=torch.bool, device=device)
    allowed[:images, images:] = False
    return allowed


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
        self,
        x: torch.Tensor,
        need_weights: bool = False,
        keep: int | None = None,
        mask: torch.Tensor | None = None,
        tail_qkv: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: (B, N, D) -> (B, N, D), or its last ``keep`` rows (B, keep, D); attention (B, heads, N, N)
        when ``need_weights``. ``mask`` (N, N) bool: True where a query may attend to a key (None: all).
        ``tail_qkv`` (B, M, 3D), if given, is ``qkv`` of the last M rows of x (only with ``keep`` None)."""
        weights = None
        if need_weights:
            blocked = None if mask is None else ~mask  # nn.MultiheadAttention: True = may not attend
            attended, weights = self.self_attn(
                x, x, x, attn_mask=blocked, need_weights=True, average_attn_weights=False
            )
            attended = attended if keep is None else attended[:, -keep:]
        else:
            attended = self._attend(x, keep, mask, tail_qkv)  # (B, N or keep, D)
        if keep is not None:
            x = x[:, -keep:]
        return self._block(x, attended), weights

    def _attend(
        self,
        x: torch.Tensor,
        keep: int | None,
        mask: torch.Tensor | None,
        tail_qkv: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Multi-head self-attention of the last ``keep`` queries (all when None) over all N tokens."""
        if tail_qkv is not None:  # the last M rows' projections are known: project only the others
            head = self.qkv(x[:, : x.shape[1] - tail_qkv.shape[1]])  # (B, N - M, 3D)
            q, k, v = torch.cat([head, tail_qkv.to(head.dtype)], dim=1).chunk(3, dim=-1)  # (B, N, D) each
            return self._heads_attention(q, k, v, mask)
        if keep is None:
            q, k, v = self.qkv(x).chunk(3, dim=-1)  # (B, N, D) each
            return self._heads_attention(q, k, v, mask)
        rows = None if mask is None else mask[-keep:]
        return self.attend_over(x[:, -keep:], self.keys_values(x), rows)

    def keys_values(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens (B, N, D) -> their packed attention keys and values (B, N, 2D), what other queries read."""
        dim = self.self_attn.embed_dim
        return F.linear(x, self.self_attn.in_proj_weight[dim:], self.self_attn.in_proj_bias[dim:])

    def qkv(self, x: torch.Tensor) -> torch.Tensor:
        """The packed query/key/value projections: (..., D) -> (..., 3D), in one matrix product."""
        return F.linear(x, self.self_attn.in_proj_weight, self.self_attn.in_proj_bias)

    def project(
        self, x: torch.Tensor, known: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens (B, N, D) -> queries (B, N, D) and packed keys/values (B, N, 2D); ``known`` (B, N, 3D) is
        ``qkv(x)`` when already at hand."""
        packed = self.qkv(x) if known is None else known.to(x.dtype)  # (B, N, 3D)
        return packed.split([self.self_attn.embed_dim, 2 * self.self_attn.embed_dim], dim=-1)

    def attend_over(
        self, queries: torch.Tensor, keys_values: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Query tokens (B, Q, D) over packed keys/values (B, K, 2D) -> attention output (B, Q, D)."""
        dim = self.self_attn.embed_dim
        q = F.linear(queries, self.self_attn.in_proj_weight[:dim], self.self_attn.in_proj_bias[:dim])
        return self._heads_attention(q, *keys_values.chunk(2, dim=-1), mask)

    def step(self, x: torch.Tensor, q: torch.Tensor, keys_values: torch.Tensor) -> torch.Tensor:
        """The whole layer for tokens x (B, Q, D) with queries q (B, Q, D) over packed keys/values
        (B, K, 2D): the one-way streams' building block (image rows over image keys, label rows over all)."""
        return self._block(x, self._heads_attention(q, *keys_values.chunk(2, dim=-1), None))

    def _heads_attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """(B, Q, D), (B, K, D), (B, K, D) -> fused multi-head attention, output projection (B, Q, D)."""
        attn = self.self_attn
        dim, heads = attn.embed_dim, attn.num_heads

        def split_heads(t: torch.Tensor) -> torch.Tensor:
            return t.unflatten(-1, (heads, dim // heads)).transpose(1, 2)  # (B, heads, *, D / heads)

        dropout = attn.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(
            split_heads(q), split_heads(k), split_heads(v), attn_mask=mask, dropout_p=dropout
        )
        return attn.out_proj(out.transpose(1, 2).flatten(2))  # (B, Q, D)

    def _block(self, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        """The post-norm residuals and feed-forward around an attention output; both (B, Q, D)."""
        x = self.norm1(x + self.dropout1(attended))
        return self.norm2(x + self.dropout2(self.linear2(self.dropout(F.relu(self.linear1(x))))))


class Encoder(nn.Module):
    """A stack of ``EncoderLayer``; collects each layer's attention when asked (for explanations).

    ``forward`` runs the whole [image ; label] sequence (the full pattern, or any ``mask``); for ``one_way``
    the split pair ``encode_images`` / ``decode_labels`` computes the same label outputs with the image
    stream run once.
    """

    def __init__(
        self, dim: int, heads: int, layers: int, ffn_dim: int, dropout: float, attention: str = "full"
    ) -> None:
        super().__init__()
        if attention not in ATTENTION:
            raise ValueError(f"attention must be one of {', '.join(ATTENTION)}, got {attention!r}")
        self.attention = attention
        self.layers = nn.ModuleList(EncoderLayer(dim, heads, ffn_dim, dropout) for _ in range(layers))

    def forward(
        self,
        x: torch.Tensor,
        need_weights: bool = False,
        keep: int | None = None,
        mask: torch.Tensor | None = None,
        first_qkv: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x: (B, N, D) -> (B, N, D), or only its last ``keep`` tokens (B, keep, D), computed only for them
        in the last layer; per-layer attention (B, heads, N, N) when asked (else empty). ``mask`` (N, N)
        bool: True where a query may attend to a key (e.g. ``one_way_mask``; None: every pair).
        ``first_qkv`` (B, M, 3D): the first layer's projections of the last M rows, when already known
        (used with two layers or more)."""
        attentions = []
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            tail_qkv = first_qkv if i == 0 < last else None  # a lone layer keeps its label-rows-only path
            x, weights = layer(x, need_weights, keep if i == last else None, mask, tail_qkv)
            if need_weights:
                attentions.append(weights)
        return x, attentions

    def encode_images(self, x: torch.Tensor) -> torch.Tensor:
        """One-way: normalised image tokens (B, T, D) -> every layer's image keys and values, packed as
        (B, T, layers * 2D): all the label rows ever read from the image stream."""
        memory = []
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            if i == last:  # the last layer's image outputs are never read: keys and values only
                memory.append(layer.keys_values(x))  # (B, T, 2D)
                break
            q, keys_values = layer.project(x)  # (B, T, D), (B, T, 2D)
            memory.append(keys_values)
            x = layer.step(x, q, keys_values)  # (B, T, D): image-to-image attention
        return torch.cat(memory, dim=-1)

    def decode_labels(
        self, x: torch.Tensor, memory: torch.Tensor, first_qkv: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One-way: normalised label tokens (B, L, D) + ``encode_images`` memory (B or 1, T, layers * 2D)
        -> label outputs (B, L, D); only the L label rows are computed in every layer. ``first_qkv``
        (B, L, 3D): the first layer's projections of the label tokens, when already known."""
        for i, (layer, image_kv) in enumerate(
            zip(self.layers, memory.chunk(len(self.layers), dim=-1), strict=True)
        ):
            q, label_kv = layer.project(x, first_qkv if i == 0 else None)  # (B, L, D), (B, L, 2D)
            image_kv = image_kv.expand(x.shape[0], -1, -1)  # (B, T, 2D); a view when one image serves all
            keys_values = torch.cat([image_kv, label_kv], dim=1)  # (B, T + L, 2D)
            x = layer.step(x, q, keys_values)  # (B, L, D): label-to-all attention
        return x
