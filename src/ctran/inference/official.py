"""Import a state dict saved by the official C-Tran code (QData/C-Tran) as a ctran checkpoint.

The official layout (``../shared/paper/ctran.md`` §8) maps key by key onto ``ctran.model.CTran``:

    backbone.base_network.*                          -> backbone.body.*   (torchvision ResNet; fc dropped)
    label_lt.weight (L, D)                           -> label_embed.weight
    known_label_lt.weight (3, D)                     -> state_embed.weight (same row order; row 0 kept)
    LayerNorm.{weight,bias}                          -> norm.*
    self_attn_layers.{i}.transformer_layer.*         -> encoder.layers.{i}.*
    output_linear.{weight,bias} (L, D), (L,)         -> readout.*   (logit_l = w_l . h_l + b_l)

L, D, the number of layers and the FFN width are read off the shapes; the ResNet depth off the backbone's
block keys (the official model is ResNet-101, whose torchvision names timm's ``resnet101`` shares). The head
count is not in the weights and must be given (the official default is 4).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from ctran.checkpoint import save_checkpoint
from ctran.errors import CTranError
from ctran.model import CTran, build_from_config

PREFIXES = {
    "backbone.base_network.": "backbone.body.",
    "label_lt.": "label_embed.",
    "known_label_lt.": "state_embed.",
    "LayerNorm.": "norm.",
    "output_linear.": "readout.",
}
LAYER_KEY = re.compile(r"^self_attn_layers\.(\d+)\.transformer_layer\.(.+)$")
REQUIRED = ("label_lt.weight", "known_label_lt.weight", "LayerNorm.weight", "output_linear.weight")
# (blocks per stage, bottleneck) -> torchvision/timm name; the official model is always resnet101.
RESNETS = {
    ((2, 2, 2, 2), False): "resnet18",
    ((3, 4, 6, 3), False): "resnet34",
    ((3, 4, 6, 3), True): "resnet50",
    ((3, 4, 23, 3), True): "resnet101",
    ((3, 8, 36, 3), True): "resnet152",
}
# Metadata the official trainer may store next to the weights (numpy floats from its metrics): allowed
# through torch's weights-only unpickler, which refuses everything else that could run code.
_NUMPY_CORE = np._core if hasattr(np, "_core") else np.core  # numpy 2 renamed numpy.core
SAFE_NUMPY = [_NUMPY_CORE.multiarray.scalar, np.dtype]
SAFE_NUMPY += [getattr(np.dtypes, name) for name in ("Float64DType", "Float32DType", "Int64DType")]


def read_official(path: str | Path) -> dict[str, torch.Tensor]:
    """The official state dict, unwrapped from ``{"state_dict": ...}`` and stripped of ``module.``."""
    path = Path(path)
    if not path.is_file():
        raise CTranError(f"official checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(SAFE_NUMPY):
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated, foreign or unsafe files
        raise CTranError(f"cannot read {path}: {type(err).__name__}: {err}") from err
    if isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict):
        payload = payload["state_dict"]
    if not isinstance(payload, dict) or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise CTranError(f"{path} holds no state dict (expected tensors by name, or them under 'state_dict')")
    state = {key.removeprefix("module."): value for key, value in payload.items()}
    missing = [key for key in REQUIRED if key not in state]
    if missing:
        raise CTranError(
            f"{path} is not an official C-Tran state dict: missing {', '.join(missing)} "
            "(see the key table in docs/using/official.md)"
        )
    return state


def infer_config(state: dict[str, torch.Tensor], heads: int = 4) -> dict:
    """The ctran model config that the official weights fit."""
    num_labels, dim = state["label_lt.weight"].shape
    layers = sorted({int(m.group(1)) for key in state if (m := LAYER_KEY.match(key))})
    if not layers or layers != list(range(len(layers))):
        raise CTranError(f"official transformer layers must be numbered 0..N-1, found {layers}")
    if dim % heads:
        raise CTranError(f"hidden size {dim} is not divisible by {heads} heads")
    backbone = _resnet_name(state)
    channels = state[f"backbone.base_network.layer4.0.{'conv3' if _bottleneck(state) else 'conv2'}.weight"]
    if channels.shape[0] != dim:
        raise CTranError(f"the {backbone} backbone gives {channels.shape[0]} channels but D = {dim}")
    return {
        "kind": "ctran",
        "backbone": backbone,
        "num_labels": int(num_labels),
        "dim": int(dim),
        "layers": len(layers),
        "heads": heads,
        "ffn_dim": int(state["self_attn_layers.0.transformer_layer.linear1.weight"].shape[0]),
        "dropout": 0.1,
        "attention": "full",  # the official model's: every token attends to every token
    }


def _bottleneck(state: dict) -> bool:
    return "backbone.base_network.layer1.0.conv3.weight" in state


def _resnet_name(state: dict) -> str:
    """Which ResNet the backbone keys describe, from the number of blocks per stage."""
    blocks = tuple(
        len({key.split(".")[3] for key in state if key.startswith(f"backbone.base_network.layer{stage}.")})
        for stage in range(1, 5)
    )
    name = RESNETS.get((blocks, _bottleneck(state)))
    if name is None:
        raise CTranError(
            f"the backbone keys describe no torchvision ResNet (blocks per stage {blocks}); only the ResNet "
            "C-Tran models are supported (the CUB Inception-v3 variant is not)"
        )
    return name


def convert_state(state: dict[str, torch.Tensor], lmt: bool = True) -> dict[str, torch.Tensor]:
    """Rename the official keys to ctran's; the backbone's unused classifier (fc) is dropped.

    ``lmt=False`` is for models trained without Label Mask Training, whose forward pass adds no state
    embedding: all three rows become zero, so label states have no effect, as in the official model.
    """
    converted = {}
    for key, value in state.items():
        if key.startswith("backbone.base_network.fc."):
            continue
        new = _rename(key)
        if new is None:
            raise CTranError(f"unexpected key in the official state dict: {key}")
        converted[new] = value
    if not lmt:
        converted["state_embed.weight"] = torch.zeros_like(converted["state_embed.weight"])
    return converted


def state_rows_look_untrained(state: dict[str, torch.Tensor], tolerance: float = 0.08) -> bool:
    """Whether the negative/positive state rows still look like the never-trained unknown row.

    The official code initialises all three rows alike and row 0 never receives gradient, so in a model
    trained without LMT (no state embedding in its forward pass) rows 1 and 2 keep the spread of row 0;
    LMT training moves them away from it. A heuristic for a warning, not a proof.
    """
    rows = state["known_label_lt.weight"].float()  # (3, D)
    spread = rows.std(dim=1)  # (3,)
    return bool(((spread[1:] - spread[0]).abs() <= tolerance * spread[0]).all())


def _rename(key: str) -> str | None:
    match = LAYER_KEY.match(key)
    if match:
        return f"encoder.layers.{match.group(1)}.{match.group(2)}"
    for old, new in PREFIXES.items():
        if key.startswith(old):
            return new + key.removeprefix(old)
    return None


def build_converted(state: dict[str, torch.Tensor], heads: int = 4, lmt: bool = True) -> tuple[CTran, dict]:
    """A ctran model holding the official weights, and its config."""
    config = infer_config(state, heads)
    model = build_from_config(config)
    try:
        model.load_state_dict(convert_state(state, lmt))
    except RuntimeError as err:
        raise CTranError(f"the official weights do not fit the inferred model {config}: {err}") from err
    return model.eval(), config


def read_label_names(path: str | Path, expected: int | None = None) -> list[str]:
    """One label name per line (blank lines skipped); names must be unique, ``expected`` of them if given."""
    path = Path(path)
    if not path.is_file():
        raise CTranError(f"label names file not found: {path}")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise CTranError(f"{path}: label names must be unique; repeated: {', '.join(repeated[:5])}")
    if expected is not None and len(names) != expected:
        raise CTranError(
            f"{path} has {len(names)} label names but the checkpoint has {expected} labels "
            "(expected one name per line)"
        )
    return names


def convert_official(
    source: str | Path,
    out: str | Path,
    labels: str | Path,
    heads: int = 4,
    image_size: int = 576,
    scale_size: int | None = 640,
    lmt: bool = True,
) -> tuple[Path, dict]:
    """Convert an official checkpoint file to a ctran checkpoint that ``ctran.load`` reads.

    The head count is not in the weights (any count dividing D loads, with different outputs), and whether
    the model was trained with LMT is only guessed (``state_rows_look_untrained``): the CLI says both.
    """
    state = read_official(source)
    model, config = build_converted(state, heads, lmt)
    names = read_label_names(labels, config["num_labels"])
    path = save_checkpoint(
        out,
        model,
        config,
        names,
        (),
        image_size=image_size,
        scale_size=scale_size,
        source={"official": str(source), "lmt": lmt},
    )
    return path, config
