"""The official C-Tran forward pass, re-implemented plainly from its description, to benchmark against.

Written from ``../shared/paper/ctran.md`` (§1.1 and §8), not from the official code. It does what the
official model does, in the way it does it:

- a torchvision ResNet's ``layer4`` output (or, for other backbones, the same feature extractor as ours);
- label embeddings looked up from a (B, L) id tensor made in every forward, plus state embeddings
  (state + 1: unknown -> row 0, negative -> 1, positive -> 2);
- LayerNorm over [image tokens ; label tokens], then post-norm layers around a *sequence-first*
  ``nn.MultiheadAttention`` (as PyTorch 1.8's ``TransformerEncoderLayer``) that returns the head-averaged
  attention weights in every layer: PyTorch's non-fused path, with the (B, heads, N, N) scores;
- the readout ``Linear(D, L)`` on every label token, a (B, L, L) product, masked by ``eye(L)`` and summed;
- float32, no caching: every call runs backbone, transformer and readout.

Its state dict has the official key layout, so ours loads into it through the inverse of
``ctran.inference.official``'s key mapping (``official_state``); ``reference_from(model)`` builds one
holding the same weights as a ``CTran``, and ``check_parity`` refuses to go on unless both give the same
logits.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from ctran.inference.official import PREFIXES, RESNETS, convert_state
from ctran.model import CTran
from ctran.model.backbone import TimmBackbone

PARITY_ATOL = 1e-4  # float32 logits of ours and the reference; sums over D = 2048 in another order
REFERENCE = "re-implemented reference (benchmarks/reference.py)"  # what rows are timed against by default


class OfficialEncoderLayer(nn.Module):
    """``transformer_layer``: post-norm self-attention + ReLU FFN on (N, B, D) sequence-first tensors."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, B, D) -> (N, B, D) and the head-averaged attention (B, N, N)."""
        attended, weights = self.self_attn(src, src, src, need_weights=True, average_attn_weights=True)
        src = self.norm1(src + self.dropout1(attended))
        src = self.norm2(src + self.dropout2(self.linear2(self.dropout(F.relu(self.linear1(src))))))
        return src, weights


class SelfAttnLayer(nn.Module):
    """``self_attn_layers.{i}``: batch-first in and out, sequence-first inside."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.transformer_layer = OfficialEncoderLayer(dim, heads, ffn_dim, dropout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N, D) -> (B, N, D), attention (B, N, N)."""
        out, weights = self.transformer_layer(x.transpose(0, 1))
        return out.transpose(0, 1), weights


class OfficialBackbone(nn.Module):
    """``backbone.base_network``: a torchvision ResNet run up to ``layer4``, or a given feature extractor."""

    def __init__(self, base_network: nn.Module) -> None:
        super().__init__()
        self.base_network = base_network

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C, h, w)."""
        net = self.base_network
        if not isinstance(net, torchvision.models.ResNet):
            return net(images)
        x = net.maxpool(net.relu(net.bn1(net.conv1(images))))
        return net.layer4(net.layer3(net.layer2(net.layer1(x))))


class ReferenceCTran(nn.Module):
    """``forward(images, states) -> (logits (B, L), attentions [(B, N, N)] per layer)``."""

    def __init__(
        self, base_network: nn.Module, num_labels: int, dim: int, layers: int, heads: int, ffn_dim: int
    ) -> None:
        super().__init__()
        self.num_labels = num_labels
        self.backbone = OfficialBackbone(base_network)
        self.label_lt = nn.Embedding(num_labels, dim)
        self.known_label_lt = nn.Embedding(3, dim, padding_idx=0)
        self.LayerNorm = nn.LayerNorm(dim)
        self.self_attn_layers = nn.ModuleList(
            SelfAttnLayer(dim, heads, ffn_dim, dropout=0.1) for _ in range(layers)
        )
        self.output_linear = nn.Linear(dim, num_labels)

    def forward(self, images: torch.Tensor, states: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        batch, labels = states.shape
        features = self.backbone(images)  # (B, D, h, w)
        features = features.flatten(2).transpose(1, 2)  # (B, h*w, D)
        label_ids = torch.arange(labels, device=images.device).unsqueeze(0).repeat(batch, 1)  # (B, L)
        tokens = self.label_lt(label_ids) + self.known_label_lt(states.long() + 1)  # (B, L, D)
        x = self.LayerNorm(torch.cat([features, tokens], dim=1))  # (B, h*w + L, D)
        attentions = []
        for layer in self.self_attn_layers:
            x, weights = layer(x)
            attentions.append(weights.detach())
        all_pairs = self.output_linear(x[:, -labels:])  # (B, L, L): every classifier on every token
        diagonal = torch.eye(labels, device=x.device).unsqueeze(0).repeat(batch, 1, 1)  # (B, L, L)
        return (all_pairs * diagonal).sum(-1), attentions


def official_state(model: CTran) -> dict[str, torch.Tensor]:
    """Our state dict under the official key names (the inverse of ``official.convert_state``)."""
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith("encoder.layers."):
            index, rest = key.removeprefix("encoder.layers.").split(".", 1)
            state[f"self_attn_layers.{index}.transformer_layer.{rest}"] = value
            continue
        old = next((old for old, new in PREFIXES.items() if key.startswith(new)), None)
        if old is None:
            raise ValueError(f"{key} has no official counterpart")
        state[old + key.removeprefix(PREFIXES[old])] = value
    if convert_state(state).keys() != model.state_dict().keys():
        raise ValueError("the official key mapping does not round-trip for this model")
    return state


def _base_network(model: CTran) -> nn.Module:
    """torchvision's ResNet for timm ResNets (the official backbone), else a copy of our feature extractor."""
    backbone = model.backbone
    name = backbone.body.pretrained_cfg.get("architecture") if isinstance(backbone, TimmBackbone) else None
    if name in RESNETS.values():
        net = getattr(torchvision.models, name)(weights=None)
        net.fc = nn.Identity()  # unused by C-Tran; the official model keeps it, untrained
        return net
    return copy.deepcopy(backbone.body)


def reference_from(model: CTran) -> ReferenceCTran:
    """A ``ReferenceCTran`` holding ``model``'s weights, in eval mode on ``model``'s device."""
    if not isinstance(model.input_proj, nn.Identity) or model.position is not None:
        raise ValueError("the official model has no input projection and no position encoding")
    first = model.encoder.layers[0]
    ref = ReferenceCTran(
        _base_network(model),
        model.num_labels,
        dim=model.label_embed.embedding_dim,
        layers=len(model.encoder.layers),
        heads=first.self_attn.num_heads,
        ffn_dim=first.linear1.out_features,
    )
    ref.load_state_dict(official_state(model))
    device = next(model.parameters()).device
    return ref.to(device).eval()


def check_parity(ours: torch.Tensor, ref: torch.Tensor, what: str, atol: float = PARITY_ATOL) -> float:
    """Max abs logit difference; raises unless ours and the reference agree within ``atol``."""
    diff = (ours.float() - ref.float()).abs().max().item()
    if not diff <= atol:
        raise RuntimeError(
            f"{what}: ours and the reference disagree (max abs logit diff {diff:.2e} > {atol:g})"
        )
    return diff
