"""Backbones: anything that turns normalised images (B, 3, H, W) into a feature map (B, C, h, w).

Two kinds share this interface (a ``num_channels`` attribute and ``forward(images) -> (B, C, h, w)``):
- ``TimmBackbone`` wraps any timm model by name (the paper's ``resnet101``: 2048 x 18 x 18 at 576 x 576);
  transformer backbones (ViT, Swin) have their tokens laid back on their patch grid;
- ``SmallCNN`` (name ``small_cnn``), a light conv net sized for the bundled 48 x 48 digit scenes
  (a 6 x 6 grid of tokens, one 2 x 2 block per scene cell).

``backbone_normalization`` says how input pixels must be normalised for a backbone's weights (timm's
pretrained configuration), so training and every inference path prepare images alike.

BatchNorm (``batchnorm``): ``live`` trains it as usual (statistics of each process's batch, running averages
updated); ``frozen`` replaces every BatchNorm2d by torchvision's ``FrozenBatchNorm2d`` (DETR's choice for
pretrained backbones: ImageNet statistics and affine terms kept, so small per-GPU batches change nothing and
N processes train exactly like one); ``sync`` builds live BatchNorm that the trainer turns into
``SyncBatchNorm`` under multi-GPU DDP. ``auto`` (``resolve_batchnorm``) is frozen for pretrained backbones and
live from scratch.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import torch
from torch import nn

from ctran.errors import CTranError
from ctran.files import file_sha256
from ctran.normalization import IMAGENET, Normalization

BATCHNORM = ("auto", "frozen", "live", "sync")


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    """A stride-2 stem, then two conv stages with max-pooling: output stride 8 (48 x 48 -> 6 x 6).

    Scene digits are 8 x 8 originals upsampled to 16 x 16, so the stride-2 stem loses no detail and makes
    training about 5x cheaper than full-resolution convolutions.
    """

    def __init__(self, widths: tuple[int, int, int] = (32, 64, 128)) -> None:
        super().__init__()
        w1, w2, w3 = widths
        self.body = nn.Sequential(
            _conv_bn_relu(3, w1, stride=2),  # (B, w1, H/2, W/2)
            _conv_bn_relu(w1, w1),
            nn.MaxPool2d(2),  # (B, w1, H/4, W/4)
            _conv_bn_relu(w1, w2),
            _conv_bn_relu(w2, w2),
            nn.MaxPool2d(2),  # (B, w2, H/8, W/8)
            _conv_bn_relu(w2, w3),
        )
        self.num_channels = w3

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C, H/8, W/8)."""
        return self.body(images)


class TimmBackbone(nn.Module):
    """A timm model without its pooling and classifier, returning its last feature map."""

    def __init__(self, name: str, pretrained: bool = False, weights_file: str | Path | None = None) -> None:
        super().__init__()
        self.body = _create_timm_model(name, pretrained, weights_file)
        self.num_channels = self.body.num_features
        self.output_fmt = getattr(self.body, "output_fmt", "NCHW")
        self.num_prefix_tokens = getattr(self.body, "num_prefix_tokens", 0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C, h, w) whatever layout the timm model uses internally."""
        features = self.body.forward_features(images)
        if features.dim() == 3:  # ViT-style tokens (B, prefix + h*w, C)
            tokens = features[:, self.num_prefix_tokens :]
            h, w = self.body.patch_embed.dynamic_feat_size(images.shape[-2:])
            return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, h, w)
        if self.output_fmt == "NHWC":  # Swin-style (B, h, w, C)
            return features.permute(0, 3, 1, 2)
        return features


def _create_timm_model(name: str, pretrained: bool, weights_file: str | Path | None) -> nn.Module:
    """Build a headless timm model, with weights from timm's hub loading or from a local file."""
    import timm

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=8, cutoff=0.6)
        raise CTranError(f"unknown backbone {name!r}; similar timm models: {', '.join(close) or 'none'}")
    options: dict = {"num_classes": 0, "global_pool": ""}
    try:
        if weights_file is not None:
            model = timm.create_model(name, pretrained=False, **options)
            _load_local_weights(model, name, Path(weights_file))
            return model
        return timm.create_model(name, pretrained=pretrained, **options)
    except CTranError:
        raise
    except (OSError, RuntimeError, ValueError) as err:
        if not pretrained:
            raise CTranError(f"cannot build timm model {name!r}: {type(err).__name__}: {err}") from err
        raise CTranError(
            f"could not fetch pretrained weights for {name!r} ({type(err).__name__}). Either let timm "
            "download them (this machine needs internet access to the Hugging Face hub), or pass a local "
            ".pth or .safetensors state dict with --backbone-weights FILE (model.backbone_weights=FILE in a "
            "config), or train from scratch with model.pretrained=false"
        ) from err
    except AssertionError as err:  # timm asserts on options some architectures do not support
        raise CTranError(f"timm model {name!r} cannot be used as a backbone here: {err}") from err


def _load_local_weights(model: nn.Module, name: str, path: Path) -> None:
    """Load a .pth/.safetensors state dict (timm unwraps ``state_dict``/``model`` and strips ``module.``).

    Keys the headless model lacks (the classifier) are ignored; any of its own weights missing from the file
    is an error, so a file for another architecture never leaves a silently random backbone. A file of the
    same architecture under another naming scheme (e.g. ``efficientnet_pytorch``'s ``_conv_stem``/``_blocks``
    for timm's ``tf_efficientnet_lite0``) is loaded by position when every tensor's shape matches in order.
    """
    from timm.models import load_state_dict

    if not path.is_file():
        raise CTranError(
            f"backbone weights file not found: {path} (expected a .pth or .safetensors state dict)"
        )
    try:
        state = load_state_dict(str(path), use_ema=False)
        if not set(model.state_dict()) & set(state):
            state = _rename_by_position(model.state_dict(), state, path)
        result = model.load_state_dict(state, strict=False)
    except Exception as err:  # a corrupt file fails inside the unpickler with any error type
        raise CTranError(f"cannot load backbone weights {path} into {name}: {err}") from err
    if result.missing_keys:
        shown = ", ".join(result.missing_keys[:5])
        raise CTranError(
            f"{path} does not hold {name} weights: {len(result.missing_keys)} of the model's tensors are "
            f"missing from it (e.g. {shown})"
        )


def _rename_by_position(
    own: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor], path: Path
) -> dict[str, torch.Tensor]:
    """``theirs`` under ``own``'s names, pairing tensors in order; unchanged when the shapes disagree.

    Both state dicts list a network's tensors in module order, so the same architecture written by another
    library pairs up one to one; the file's trailing extras (a classifier) are left out.
    """
    ours, file_items = list(own.items()), list(theirs.items())
    if len(file_items) < len(ours):
        return theirs
    if any(mine.shape != other.shape for (_, mine), (_, other) in zip(ours, file_items, strict=False)):
        return theirs
    print(
        f"{path.name}: names differ from the model's; loaded {len(ours)} tensors by position (shapes match)"
    )
    return {name: tensor for (name, _), (_, tensor) in zip(ours, file_items, strict=False)}


def backbone_normalization(name: str) -> Normalization:
    """The input mean/std a backbone's pretrained weights expect (timm's pretrained config; ImageNet's for
    ``small_cnn`` and for models timm knows no config of)."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)  # None for small_cnn and for models timm knows no config of
    if cfg is None or cfg.mean is None or cfg.std is None:
        return IMAGENET
    return Normalization(tuple(cfg.mean), tuple(cfg.std))


def pretrained_weights(name: str, pretrained: bool, weights_file: str | Path | None = None) -> dict:
    """Exactly which weights a backbone starts from, for checkpoints and logs.

    timm resolves a bare name to its default tag, which is not always the weights a paper used:
    ``resnet101`` loads ``resnet101.a1h_in1k`` (timm's own recipe), the paper's are ``resnet101.tv_in1k``.
    Returns ``{"source": "timm", "tag", "hf_hub_id", "url"}``, ``{"source": "file", "backbone", "file",
    "sha256"}`` for a local weights file, or ``{"source": "none"}`` when training from scratch.
    """
    if weights_file is not None:
        path = Path(weights_file)
        return {"source": "file", "backbone": name, "file": path.name, "sha256": file_sha256(path)}
    if not pretrained or name == "small_cnn":
        return {"source": "none"}
    from timm.models import get_pretrained_cfg, split_model_name_tag

    cfg = get_pretrained_cfg(name)
    if cfg is None:
        return {"source": "timm", "tag": name, "hf_hub_id": None, "url": None}
    return {
        "source": "timm",
        "tag": f"{split_model_name_tag(name)[0]}.{cfg.tag}",
        "hf_hub_id": cfg.hf_hub_id,
        "url": cfg.url or None,
    }


def describe_weights(record: dict | None) -> str:
    """One line for a ``pretrained_weights`` record (``unrecorded`` for checkpoints older than it)."""
    if not record:
        return "unrecorded"
    if record["source"] == "timm":
        return f"{record['tag']} (timm{', ' + record['hf_hub_id'] if record.get('hf_hub_id') else ''})"
    if record["source"] in ("file", "init_from"):
        return f"{record['source'].replace('_', ' ')} {record['file']} (sha256 {record['sha256'][:12]})"
    return "none (trained from scratch)"


def resolve_batchnorm(mode: str, pretrained: bool, weights_file: str | Path | None) -> str:
    """``auto`` -> ``frozen`` for a pretrained backbone (timm's or a weights file), ``live`` from scratch.

    A pretrained backbone's statistics come from large ImageNet batches; re-estimating them from a few images
    per GPU only adds noise. Random weights have no statistics worth keeping.
    """
    if mode not in BATCHNORM:
        raise CTranError(f"model.batchnorm must be one of {', '.join(BATCHNORM)}, got {mode!r}")
    if mode != "auto":
        return mode
    return "frozen" if pretrained or weights_file else "live"


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Every BatchNorm2d under ``module`` replaced by a frozen copy; returns the module (or its replacement).

    Plain BatchNorm2d becomes torchvision's ``FrozenBatchNorm2d`` (statistics and affine terms as buffers, no
    ``num_batches_tracked``); timm's BatchNorm-plus-activation layers become timm's frozen twin, which keeps
    the activation.
    """
    from timm.layers import BatchNormAct2d, freeze_batch_norm_2d
    from torchvision.ops.misc import FrozenBatchNorm2d

    if isinstance(module, BatchNormAct2d):
        return freeze_batch_norm_2d(module)
    if isinstance(module, nn.BatchNorm2d):
        if module.running_mean is None:
            raise CTranError("model.batchnorm=frozen needs BatchNorm layers that track running statistics")
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        if module.affine:
            frozen.weight.copy_(module.weight.detach())
            frozen.bias.copy_(module.bias.detach())
        frozen.running_mean.copy_(module.running_mean)
        frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in module.named_children():
        replacement = freeze_batchnorm(child)
        if replacement is not child:
            setattr(module, name, replacement)
    return module


def build_backbone(
    name: str, pretrained: bool = False, weights_file: str | Path | None = None, batchnorm: str = "live"
) -> SmallCNN | TimmBackbone:
    """``small_cnn`` or any timm model name, its BatchNorm ``frozen`` after loading weights when asked
    (``live`` and ``sync`` build ordinary BatchNorm; ``auto``: see ``resolve_batchnorm``)."""
    batchnorm = resolve_batchnorm(batchnorm, pretrained, weights_file)
    if name == "small_cnn":
        if pretrained or weights_file:
            raise CTranError("small_cnn has no pretrained weights; use pretrained=False")
        backbone = SmallCNN()
    else:
        backbone = TimmBackbone(name, pretrained=pretrained, weights_file=weights_file)
    if batchnorm == "frozen":
        with torch.no_grad():
            freeze_batchnorm(backbone)
    return backbone
