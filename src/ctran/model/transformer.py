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
every token). This is exact, and removes most of the last layer for the image tokens. In eval mode, when
there are few kept rows, their queries are mapped into token space instead of projecting every token to
keys and values (``_attend_in_token_space``): the same attention with fewer FLOPs.

The first layer can also be given the Q/K/V projections of its last rows (``first_qkv``): C-Tran's label
tokens enter it with one of three values per label, so their projections can be looked up from a table
(``CTran.freeze_label_projections``) instead of recomputed for every image.
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
        self,
        x: torch.Tensor,
        need_weights: bool = False,
        keep: int | None = None,
        tail_qkv: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: (B, N, D) -> (B, N, D), or its last ``keep`` rows (B, keep, D); attention (B, heads, N, N)
        when ``need_weights``. ``tail_qkv`` (B, M, 3D), if given, is ``project`` of the last M rows of x
        (only with ``keep`` None)."""
        weights = None
        if need_weights:
            attended, weights = self.self_attn(x, x, x, need_weights=True, average_attn_weights=False)
            attended = attended if keep is None else attended[:, -keep:]
        else:
            attended = self._attend(x, keep, tail_qkv)  # (B, N or keep, D)
        if keep is not None:
            x = x[:, -keep:]
        x = self.norm1(x + self.dropout1(attended))
        x = self.norm2(x + self.dropout2(self.linear2(self.dropout(F.relu(self.linear1(x))))))
        return x, weights

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """The packed query/key/value projections: (..., D) -> (..., 3D)."""
        return F.linear(x, self.self_attn.in_proj_weight, self.self_attn.in_proj_bias)

    def _attend(
        self, x: torch.Tensor, keep: int | None, tail_qkv: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Multi-head self-attention of the last ``keep`` queries (all when None) over all N tokens."""
        attn = self.self_attn
        dim, heads = attn.embed_dim, attn.num_heads
        if tail_qkv is not None:
            head = self.project(x[:, : x.shape[1] - tail_qkv.shape[1]])  # (B, N - M, 3D)
            q, k, v = torch.cat([head, tail_qkv.to(head.dtype)], dim=1).chunk(3, dim=-1)  # (B, N, D) each
        elif keep is None:
            q, k, v = self.project(x).chunk(3, dim=-1)  # (B, N, D) each
        else:
            w_q, w_kv = attn.in_proj_weight.split([dim, 2 * dim])
            b_q, b_kv = attn.in_proj_bias.split([dim, 2 * dim])
            q = F.linear(x[:, -keep:], w_q, b_q)  # (B, keep, D)
            if not self.training and keep * (dim + heads * x.shape[1]) < x.shape[1] * (dim + keep):
                return attn.out_proj(self._attend_in_token_space(x, q))  # fewer FLOPs, same result
            k, v = F.linear(x, w_kv, b_kv).chunk(2, dim=-1)  # (B, N, D) each

        def split_heads(t: torch.Tensor) -> torch.Tensor:
            return t.unflatten(-1, (heads, dim // heads)).transpose(1, 2)  # (B, heads, *, D / heads)

        dropout = attn.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(
            split_heads(q), split_heads(k), split_heads(v), dropout_p=dropout
        )
        return attn.out_proj(out.transpose(1, 2).flatten(2))  # (B, Q, D)

    def _attend_in_token_space(self, x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """Attention of queries q (B, K, D) over tokens x (B, N, D) without projecting the tokens.

        Per head h, ``q_h . (W_kh x_j + b_kh) = (q_h W_kh) . x_j + q_h . b_kh``: the last term is the same
        for every key, so the softmax ignores it; and ``sum_j p_j (W_vh x_j + b_vh) = W_vh (sum_j p_j x_j)
        + b_vh`` since the p_j sum to 1. Mapping the K queries into token space costs about 2 K D^2 + 2 H K
        N D FLOPs instead of 2 N D^2 + 2 K N D for the keys and values of all N tokens, so it pays when
        K (D + H N) < N (D + K): the last layer with few labels (L = 80: 7.1 -> 2.4 GFLOPs at 576 px).
        Eval only: attention dropout would break the second identity.
        """
        attn = self.self_attn
        dim, heads = attn.embed_dim, attn.num_heads
        head_dim = dim // heads
        w_k, w_v = attn.in_proj_weight[dim:].view(2, heads, head_dim, dim)  # (H, D / H, D) each
        b_v = attn.in_proj_bias[2 * dim :].view(heads, 1, head_dim)
        q = q.unflatten(-1, (heads, head_dim)).transpose(1, 2)  # (B, H, K, D / H)
        tokens = x.unsqueeze(1).expand(-1, heads, -1, -1)  # (B, H, N, D): keys and values, no copy
        mixed = F.scaled_dot_product_attention(q @ w_k, tokens, tokens, scale=head_dim**-0.5)  # (B, H, K, D)
        out = mixed @ w_v.transpose(1, 2)  # (B, H, K, D / H)
        return (out + b_v.to(out.dtype)).transpose(1, 2).flatten(2)  # (B, K, D)


class Encoder(nn.Module):
    """A stack of ``EncoderLayer``; collects each layer's attention when asked (for explanations)."""

    def __init__(self, dim: int, heads: int, layers: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(dim, heads, ffn_dim, dropout) for _ in range(layers))

    def forward(
        self,
        x: torch.Tensor,
        need_weights: bool = False,
        keep: int | None = None,
        first_qkv: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x: (B, N, D) -> (B, N, D), or only its last ``keep`` tokens (B, keep, D), computed only for them
        in the last layer; per-layer attention (B, heads, N, N) when asked (else empty). ``first_qkv``
        (B, M, 3D): the first layer's projections of the last M rows of x, when already known (used when
        there are two layers or more)."""
        attentions = []
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            tail_qkv = first_qkv if i == 0 < last else None  # a lone layer keeps its queries-only path
            x, weights = layer(x, need_weights, keep if i == last else None, tail_qkv)
            if need_weights:
                attentions.append(weights)
        return x, attentions
