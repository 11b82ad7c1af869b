"""Why the model answered: each label token's attention over the image tokens and over the other labels.

``model(images, states, return_attention=True)`` gives per layer the weights (B, heads, N, N), N = T image
tokens followed by L label tokens. Two readings of them:

- ``last``: the last layer's weights averaged over heads, what the label tokens read just before the readout;
- ``rollout``: attention rollout (Abnar & Zuidema, ACL 2020), which follows the flow through every layer:
  per layer average the heads, account for the residual connection as ``0.5 A + 0.5 I``, renormalise the
  rows, and multiply the layers' matrices.

Row ``T + l`` then says where label ``l`` looks: its first T entries laid on the backbone's (h, w) grid are
the heat-map; its last L entries are the label-to-label attention.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ctran.extras import pyplot
from ctran.normalization import IMAGENET, Normalization, denormalize
from ctran.report import write_json


@dataclass
class Explanation:
    """Attention read-outs for one image; ``to_dict`` is the JSON written by ``ctran explain``."""

    image: str
    picture: np.ndarray  # (H, W, 3) uint8: the model's input as it saw it (resized, cropped)
    grid: tuple[int, int]  # (h, w) image-token grid
    label_names: list[str]  # all labels, targets then extras: rows/columns of label_attention
    labels: list[str]  # the explained labels, keys of maps
    maps: dict[str, np.ndarray]  # label -> (h, w) attention of its token to each image token
    label_attention: np.ndarray  # (L, L): row label's attention to each column label's token
    probs: dict[str, float]  # unknown target labels -> probability
    known: dict[str, bool]  # labels given as inputs
    method: str  # "last" or "rollout"

    def heatmap(self, label: str) -> np.ndarray:
        """The label's map upsampled (bilinear) to the picture's size: (H, W)."""
        grid = torch.from_numpy(self.maps[label])[None, None].float()  # (1, 1, h, w)
        size = self.picture.shape[:2]
        return F.interpolate(grid, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()

    def shown_labels(self) -> list[str]:
        """Explained and known labels, in label order: the rows/columns worth plotting."""
        keep = set(self.labels) | set(self.known)
        return [name for name in self.label_names if name in keep]

    def to_dict(self) -> dict:
        return {
            "image": self.image,
            "method": self.method,
            "grid": list(self.grid),
            "input_size": list(self.picture.shape[:2]),
            "probs": self.probs,
            "known": self.known,
            "labels": self.labels,
            "maps": {label: self.maps[label].tolist() for label in self.labels},
            "label_names": self.label_names,
            "label_attention": self.label_attention.tolist(),
        }


def attention_flow(attentions: list[torch.Tensor], rollout: bool = False) -> torch.Tensor:
    """Per-layer weights (B, heads, N, N) -> one (B, N, N) matrix: last layer or rollout, heads averaged."""
    if not attentions:
        raise ValueError("no attention weights: call the model with return_attention=True")
    if not rollout:
        return attentions[-1].float().mean(dim=1)  # (B, N, N)
    flow = None
    for weights in attentions:
        a = weights.float().mean(dim=1)  # (B, N, N)
        a = 0.5 * a + 0.5 * torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        a = a / a.sum(dim=-1, keepdim=True)
        flow = a if flow is None else a @ flow  # later layers act on what earlier layers mixed
    return flow


def explain_attention(
    image: str,
    probs: dict[str, float],
    known: dict[str, bool],
    pixels: torch.Tensor,
    grid: tuple[int, int],
    label_names: list[str],
    labels: list[str],
    attentions: list[torch.Tensor],
    rollout: bool = False,
    norm: Normalization = IMAGENET,
) -> Explanation:
    """Build the Explanation of one image from its pixels (3, H, W), normalised with ``norm``, and attention
    weights."""
    flow = attention_flow(attentions, rollout)[0].cpu()  # (N, N)
    num_labels = len(label_names)
    num_tokens = flow.shape[0] - num_labels
    h, w = grid
    if h * w != num_tokens:
        raise ValueError(f"a {h}x{w} grid does not match {num_tokens} image tokens")
    index = {name: i for i, name in enumerate(label_names)}
    maps = {name: flow[num_tokens + index[name], :num_tokens].reshape(h, w).numpy() for name in labels}
    return Explanation(
        image=image,
        picture=_to_picture(pixels, norm),
        grid=(h, w),
        label_names=list(label_names),
        labels=list(labels),
        maps=maps,
        label_attention=flow[num_tokens:, num_tokens:].numpy(),  # (L, L)
        probs=probs,
        known=known,
        method="rollout" if rollout else "last",
    )


def _to_picture(pixels: torch.Tensor, norm: Normalization) -> np.ndarray:
    """Undo the normalisation: (3, H, W) float -> (H, W, 3) uint8."""
    rgb = denormalize(pixels, norm)
    return (rgb.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()


def save_explanation(explanation: Explanation, out_dir: str | Path) -> list[Path]:
    """Write overview.png, one attention_<label>.png per label, label_attention.png and explanation.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [plot_overview(explanation, out / "overview.png")]
    for label in explanation.labels:
        written.append(plot_heatmaps(explanation, [label], out / f"attention_{_file_safe(label)}.png"))
    written.append(plot_label_attention(explanation, out / "label_attention.png"))
    written.append(write_json(out / "explanation.json", explanation.to_dict()))
    return written


def _file_safe(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name).strip("_") or "label"


def _caption(explanation: Explanation, label: str) -> str:
    if label in explanation.known:
        return f"{label} (given: {'yes' if explanation.known[label] else 'no'})"
    if label in explanation.probs:
        return f"{label}  p={explanation.probs[label]:.2f}"
    return label  # an extra label left unknown: an input slot, not a prediction


def _overlay(ax, explanation: Explanation, label: str, fontsize: int) -> None:
    """The picture with the label's heat-map on top, stretched to its own range (where, not how much)."""
    heat = explanation.heatmap(label)
    heat = (heat - heat.min()) / max(float(heat.max() - heat.min()), 1e-12)
    ax.imshow(explanation.picture, interpolation="nearest")
    ax.imshow(heat, cmap="jet", alpha=0.45, vmin=0, vmax=1)
    ax.set_title(_caption(explanation, label), fontsize=fontsize)
    ax.axis("off")


def plot_heatmaps(explanation: Explanation, labels: list[str], path: str | Path) -> Path:
    """One panel per label: the picture with that label's attention overlaid (each map scaled to its max)."""
    plt = pyplot("drawing attention maps")
    fig, axes = plt.subplots(1, len(labels), figsize=(3.2 * len(labels), 3.4), squeeze=False)
    for ax, label in zip(axes[0], labels, strict=True):
        _overlay(ax, explanation, label, fontsize=9)
    return _save(fig, path, plt)


def plot_overview(explanation: Explanation, path: str | Path) -> Path:
    """The input, then every explained label's heat-map, in one row."""
    plt = pyplot("drawing attention maps")
    panels = len(explanation.labels) + 1
    fig, axes = plt.subplots(1, panels, figsize=(2.6 * panels, 3.0), squeeze=False)
    axes[0, 0].imshow(explanation.picture, interpolation="nearest")
    given = ", ".join(f"{k}={int(v)}" for k, v in explanation.known.items())
    axes[0, 0].set_title(f"input{' | ' + given if given else ''}", fontsize=8)
    axes[0, 0].axis("off")
    for ax, label in zip(axes[0, 1:], explanation.labels, strict=True):
        _overlay(ax, explanation, label, fontsize=8)
    fig.suptitle(f"label-token attention over the image ({explanation.method})", fontsize=9)
    return _save(fig, path, plt)


def plot_label_attention(explanation: Explanation, path: str | Path) -> Path:
    """The label-to-label attention among the explained and known labels (rows attend to columns)."""
    plt = pyplot("drawing attention maps")
    names = explanation.shown_labels()
    index = [explanation.label_names.index(name) for name in names]
    matrix = explanation.label_attention[np.ix_(index, index)]
    side = 1.2 + 0.45 * len(names)
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    image = ax.imshow(matrix, cmap="viridis")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    if len(names) <= 12:
        middle = (matrix.max() + matrix.min()) / 2
        for (r, c), value in np.ndenumerate(matrix):
            color = "black" if value > middle else "white"
            ax.text(c, r, f"{value:.3f}", ha="center", va="center", fontsize=6, color=color)
    ax.set_xlabel("attended label token")
    ax.set_ylabel("label token")
    ax.set_title(f"label-to-label attention ({explanation.method})", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046)
    return _save(fig, path, plt)


def _save(fig, path: str | Path, plt) -> Path:
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
