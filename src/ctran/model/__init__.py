"""Models: ``build_model`` makes C-Tran, ``build_baseline`` the pooled-CNN baseline, from plain options.

The options are plain JSON-able values so a checkpoint can store them and rebuild the same module.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ctran.model.backbone import backbone_normalization, build_backbone, resolve_batchnorm
from ctran.model.baseline import PooledLinear
from ctran.model.ctran import CTran, Output

__all__ = [
    "CTran",
    "Output",
    "PooledLinear",
    "backbone_normalization",
    "build_baseline",
    "build_from_config",
    "build_model",
    "resolve_batchnorm",
]


def build_model(
    num_labels: int,
    backbone: str = "resnet101",
    layers: int = 3,
    heads: int = 4,
    pretrained: bool = False,
    dim: int = 2048,
    ffn_dim: int | None = None,
    dropout: float = 0.1,
    position_encoding: bool = False,
    backbone_weights: str | Path | None = None,
    attention: str = "full",
    batchnorm: str = "live",
) -> CTran:
    """C-Tran with the paper's defaults: ResNet-101, D = 2048, 3 layers, 4 heads, FFN width D, dropout 0.1,
    full attention (``one_way``: image tokens never attend to labels, see ``ctran.model.transformer``).

    ``batchnorm``: the backbone's BatchNorm, ``live`` | ``frozen`` | ``sync`` | ``auto`` (see
    ``ctran.model.backbone``); a checkpoint records the resolved mode so loading rebuilds the same modules.
    """
    if num_labels < 1:
        raise ValueError(f"num_labels must be positive, got {num_labels}")
    return CTran(
        build_backbone(backbone, pretrained, backbone_weights, batchnorm),
        num_labels,
        dim=dim,
        layers=layers,
        heads=heads,
        ffn_dim=ffn_dim,
        dropout=dropout,
        position_encoding=position_encoding,
        attention=attention,
    )


def build_baseline(
    num_labels: int,
    backbone: str = "resnet101",
    pretrained: bool = False,
    backbone_weights: str | Path | None = None,
    batchnorm: str = "live",
) -> PooledLinear:
    """The pooled-CNN baseline on the same backbone (``batchnorm`` as for ``build_model``)."""
    return PooledLinear(build_backbone(backbone, pretrained, backbone_weights, batchnorm), num_labels)


def build_from_config(config: dict, initial_weights: bool = False) -> nn.Module:
    """A model from the ``{"kind": "ctran"|"baseline", **options}`` dict of configs and checkpoints.

    ``initial_weights=True`` (training) honours ``pretrained`` and ``backbone_weights``; otherwise both are
    dropped, since a checkpoint carries its weights and loading one must never download. ``batchnorm`` is
    resolved before they are dropped, so ``auto`` means the same modules either way (checkpoints from
    before this option have none: live BatchNorm).
    """
    options = dict(config)
    kind = options.pop("kind", "ctran")
    if "batchnorm" in options:
        options["batchnorm"] = resolve_batchnorm(
            options["batchnorm"], options.get("pretrained", False), options.get("backbone_weights")
        )
    if not initial_weights:
        options.update(pretrained=False, backbone_weights=None)
    if kind == "ctran":
        return build_model(**options)
    if kind == "baseline":
        return build_baseline(**options)
    raise ValueError(f"unknown model kind {kind!r} (expected 'ctran' or 'baseline')")
