"""The official C-Tran code itself, imported from a checkout the user points to, to time ours against.

``CTRAN_OFFICIAL=/path/to/C-Tran`` (or a script's ``--official PATH``) names a clone of the official
repository (QData/C-Tran). Nothing of it is copied into ctran: its ``models/CTran.py`` is imported from the
checkout when a benchmark runs, ``CTranModel`` is built with the shape of our model and loaded with our
weights through the official key layout (``reference.official_state``), and the benchmark stops unless both
give the same logits. Without a checkout the benchmarks that need one say so and skip.

Two things stand between the official code and a CPU, and the first is the user's to change:

- its forward pass calls ``.cuda()`` (on the label ids and on the readout's diagonal mask; a third time
  with position embeddings): on a machine without CUDA the checkout needs those three calls made
  device-neutral (``.cuda()`` -> ``.to(images.device)``), and nothing else;
- its backbone asks torchvision for ``resnet101(pretrained=True)``, a download: here it is built without
  weights instead (our weights replace them anyway).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
import torchvision
from torch import nn

from ctran.model import CTran
from ctran.model.backbone import TimmBackbone
from reference import official_state

ENV = "CTRAN_OFFICIAL"
AGAINST = "official C-Tran code"
SKIP_MESSAGE = (
    f"no official C-Tran checkout: set {ENV}=/path/to/C-Tran (a clone of QData/C-Tran whose three .cuda() "
    "calls in models/CTran.py are made device-neutral) or pass --official PATH to time ours against the "
    "official code; skipped"
)
DEVICE_EDITS = (
    "the official code called .cuda() on a machine without CUDA: make its three .cuda() calls in "
    "models/CTran.py device-neutral (.cuda() -> .to(images.device)) in the checkout"
)


def official_checkout(path: str | Path | None = None) -> Path | None:
    """The checkout named by ``path`` or ``$CTRAN_OFFICIAL``; None when neither is set."""
    value = path or os.environ.get(ENV)
    if not value:
        return None
    checkout = Path(value).expanduser().resolve()
    if not (checkout / "models" / "CTran.py").is_file():
        raise SystemExit(f"{value}: not a C-Tran checkout (no models/CTran.py)")
    return checkout


def describe(checkout: Path) -> str:
    """``official C-Tran code (PATH @ commit)``: what the rows were measured against."""
    done = subprocess.run(
        ["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    commit = done.stdout.strip() if done.returncode == 0 else "not a git checkout"
    return f"{AGAINST} ({checkout} @ {commit})"


def official_class(checkout: Path) -> type[nn.Module]:
    """``CTranModel`` of the checkout's ``models/CTran.py`` (its ``models`` package, imported once)."""
    loaded = sys.modules.get("models")
    if loaded is not None and Path(loaded.__file__).resolve().parent != checkout / "models":
        raise SystemExit(f"another 'models' package is already imported ({loaded.__file__})")
    sys.path.insert(0, str(checkout))
    try:
        module = importlib.import_module("models.CTran")
    finally:
        sys.path.remove(str(checkout))
    return module.CTranModel


@contextlib.contextmanager
def _resnet101_without_download() -> Iterator[None]:
    """``torchvision.models.resnet101(...)`` builds a random ResNet-101, whatever it is asked."""
    original = torchvision.models.resnet101
    torchvision.models.resnet101 = lambda *args, **kwargs: original(weights=None)
    try:
        yield
    finally:
        torchvision.models.resnet101 = original


def _check_shape(model: CTran) -> None:
    """The official model is ResNet-101 + D = 2048 + an FFN of width D, without projection or positions."""
    backbone = model.backbone
    name = backbone.body.pretrained_cfg.get("architecture") if isinstance(backbone, TimmBackbone) else None
    first = model.encoder.layers[0]
    if (
        name != "resnet101"
        or model.label_embed.embedding_dim != 2048
        or first.linear1.out_features != 2048
        or model.position is not None
        or model.encoder.attention != "full"
    ):
        raise ValueError(
            "the official CTranModel is ResNet-101 with D = 2048, full attention and no position encoding"
        )


def official_from(model: CTran, checkout: Path) -> nn.Module:
    """The official ``CTranModel`` holding ``model``'s weights, in eval mode on ``model``'s device."""
    _check_shape(model)
    first = model.encoder.layers[0]
    with _resnet101_without_download():
        official = official_class(checkout)(
            model.num_labels,
            use_lmt=True,
            layers=len(model.encoder.layers),
            heads=first.self_attn.num_heads,
            dropout=first.dropout.p,
        )
    missing, unexpected = official.load_state_dict(official_state(model), strict=False)
    untrained = [key for key in missing if not key.startswith("backbone.base_network.fc.")]  # C-Tran skips fc
    if unexpected or untrained:
        raise RuntimeError(f"the official model's keys differ: missing {untrained}, unexpected {unexpected}")
    device = next(model.parameters()).device
    official = official.to(device).eval()
    _check_device(official, model.num_labels, device)
    return official


def _check_device(official: nn.Module, labels: int, device: torch.device) -> None:
    """One small forward: the official code's ``.cuda()`` calls fail here, with what to do, not mid-run."""
    images = torch.zeros(1, 3, 64, 64, device=device)
    states = torch.full((1, labels), -1, device=device)
    try:
        with torch.inference_mode():
            official(images, states)
    except (AssertionError, RuntimeError) as err:
        if device.type != "cuda" and any(word in str(err).lower() for word in ("cuda", "nvidia")):
            raise SystemExit(f"{DEVICE_EDITS} ({err})") from err
        raise
