"""The one config system: YAML files plus dotted ``key=value`` overrides, validated into dataclasses.

A run is described by ``Config(model, data, train, eval, seed)``. Files name only what differs from the
defaults; ``load_config("coco80", ["train.lr=1e-4"])`` reads a shipped config (``ctran/configs/*.yaml``,
also reachable as ``configs/`` at the repository root) or any path, applies overrides, and checks every key
and type, suggesting the closest key for a typo. The resolved config is saved into every run folder and
checkpoint, so a run can be rebuilt from its outputs alone.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ctran.errors import CTranError

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass
class ModelConfig:
    """C-Tran's architecture (``ctran.build_model`` options); defaults are the paper's."""

    kind: str = "ctran"  # ctran | baseline (the pooled-CNN recipe on the same backbone)
    init_from: str | None = None  # fine-tune: start from this ctran checkpoint, labels matched by name
    backbone: str = "resnet101"
    pretrained: bool = True
    backbone_weights: str | None = None  # a local .pth/.safetensors for offline machines
    dim: int = 2048
    layers: int = 3
    heads: int = 4
    ffn_dim: int | None = None  # None: the hidden size D, as in the paper
    dropout: float = 0.1
    position_encoding: bool = False
    attention: str = "full"  # full (the paper's) | one_way: image tokens never attend to label tokens
    batchnorm: str = "auto"  # frozen | live | sync | auto: frozen for a pretrained backbone, else live


@dataclass
class DataConfig:
    """Which dataset, where, and how images are prepared (the paper's multi-scale crops by default)."""

    format: str = "digits"
    root: str | None = None
    image_size: int = 576
    scale_size: int | None = 640  # None: plain resize to image_size (no crops)
    crop_sizes: list[int] = field(default_factory=lambda: [640, 576, 512, 384, 320])
    train_split: str | None = None  # None: the dataset's default for each role
    val_split: str | None = None
    test_split: str | None = None
    val_fraction: float = 0.1  # held out of train when the publisher has no validation split
    sizes: dict[str, int] | None = None  # digits only: scenes per split, e.g. {train: 2000}
    options: dict[str, str] = field(default_factory=dict)  # the format's own, e.g. {difficult: negative}
    num_workers: int = 4
    on_bad_image: str = "skip"  # skip | fail
    keep_annotations: float = (
        1.0  # keep this seeded fraction of train/val target annotations (missing labels)
    )
    mean: list[float] | None = None  # input normalisation; None: the backbone's pretrained config's
    std: list[float] | None = None


@dataclass
class TrainConfig:
    """Optimisation. Paper: Adam, lr 1e-5, batch 16, reduce-on-plateau; ours adds AdamW/cosine/EMA/ASL."""

    epochs: int = 40
    batch_size: int = 16
    grad_accum: int = 1  # optimisation step every N batches (effective batch = batch_size * N * world)
    optimizer: str = "adam"  # adam | adamw
    lr: float = 1e-5
    weight_decay: float = 0.0
    backbone_lr_mult: float = 1.0
    freeze_backbone: str = "none"  # none | all | all_but_last
    schedule: str = "plateau"  # plateau | cosine | onecycle
    warmup_epochs: float = 0.0
    plateau_patience: int = 5
    early_stop: int = 0  # stop after N epochs without a better validation mAP (0: never)
    loss: str = "bce"  # bce | asl
    asl_gamma_neg: float = 4.0
    asl_gamma_pos: float = 0.0
    asl_clip: float = 0.05
    label_mask: bool = True  # Label Mask Training; False: all labels unknown, loss on all (the ablation)
    max_known_fraction: float = 0.75  # of the labels LMT may reveal
    lmt_labels: str = "all"  # all | extras: which labels LMT may reveal (CUB-312: extras; classes never)
    extra_loss: bool = False  # also train the extra labels' outputs where unknown (CUB-312 concepts)
    missing: str = "ignore"  # ignore | negative: not-annotated targets out of the loss, or taken as negatives
    grad_clip: float = 0.0  # max gradient norm (0: off)
    max_bad_steps: int = 10  # stop after this many consecutive steps with a non-finite loss or gradient
    ema_decay: float = 0.0  # 0: off; e.g. 0.9997 as in ASL/Query2Label
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    deterministic: bool = False
    device: str = "auto"  # auto: cuda (the local rank's GPU) when available, else cpu


@dataclass
class EvalConfig:
    """Which inference settings the final test evaluation reports."""

    known_fractions: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75])
    extra: bool = True  # also the extra-label setting when the dataset has extra labels
    batch_size: int = 64


@dataclass
class Config:
    """Everything a run depends on."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


CHOICES = {
    "model.attention": ("full", "one_way"),
    "model.batchnorm": ("auto", "frozen", "live", "sync"),
    "data.on_bad_image": ("skip", "fail"),
    "train.optimizer": ("adam", "adamw"),
    "train.freeze_backbone": ("none", "all", "all_but_last"),
    "train.schedule": ("plateau", "cosine", "onecycle"),
    "train.loss": ("bce", "asl"),
    "train.lmt_labels": ("all", "extras"),
    "train.missing": ("ignore", "negative"),
    "model.kind": ("ctran", "baseline"),
    "train.precision": ("auto", "fp32", "bf16", "fp16"),
}


def shipped_configs() -> list[str]:
    """Names of the configs that come with the package."""
    return sorted(path.stem for path in CONFIG_DIR.glob("*.yaml"))


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A path as given, or the name of a shipped config (``coco80`` -> ``ctran/configs/coco80.yaml``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = CONFIG_DIR / f"{path.stem}.yaml"
    if (path.parent == Path(".") or path.parent.name == "configs") and shipped.is_file():
        return shipped
    raise CTranError(
        f"config file not found: {name_or_path} (shipped configs: {', '.join(shipped_configs())})"
    )


def load_config(
    name_or_path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> Config:
    """Defaults <- YAML file <- ``section.key=value`` overrides, validated."""
    data: dict = {}
    if name_or_path is not None:
        path = resolve_config_path(name_or_path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise CTranError(f"{path}: invalid YAML: {err}") from err
        if not isinstance(data, dict):
            raise CTranError(f"{path}: expected a mapping of sections (model, data, train, eval, seed)")
    for item in overrides:
        _apply_override(data, item)
    return config_from_dict(data)


def config_from_dict(data: dict) -> Config:
    """Build and validate a ``Config`` from nested plain data (as read from YAML or a checkpoint)."""
    return _build(Config, data, "")


def save_config(config: Config, path: str | Path) -> Path:
    """Write the fully resolved config (every key, not just the overrides) as YAML."""
    path = Path(path)
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    return path


def _apply_override(data: dict, item: str) -> None:
    """``train.lr=1e-4`` -> data["train"]["lr"] = 1e-4 (the value parsed as YAML)."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise CTranError(f"override {item!r} must look like section.key=value (e.g. train.lr=1e-4)")
    try:
        value = yaml.safe_load(raw) if raw else None
    except (yaml.YAMLError, ValueError, AttributeError, RecursionError) as err:  # "2001-13-45", "!!int x"
        raise CTranError(f"override {item!r}: cannot parse value {raw!r}") from err
    node = data
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise CTranError(f"override {item!r}: {part} is not a section")
    node[leaf] = value


def _build(cls: type, data: object, prefix: str) -> object:
    """Recursively construct dataclass ``cls`` from ``data``, rejecting unknown keys and wrong types."""
    where = prefix.rstrip(".") or "config"
    if not isinstance(data, dict):
        raise CTranError(f"{where} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=3)
            hint = f"; did you mean {', '.join(prefix + c for c in close)}?" if close else ""
            raise CTranError(f"unknown config key {prefix}{key}{hint} (valid: {', '.join(names)})")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            values[key] = _build(hint, value, f"{prefix}{key}.")
        else:
            values[key] = _check_value(f"{prefix}{key}", value, hint)
    return cls(**values)


def _yaml_float(text: str) -> float | str:
    """YAML 1.1 reads ``3e-4`` as a string (it wants ``3.0e-4``); accept what Python accepts as a float."""
    try:
        return float(text)
    except ValueError:
        return text


def _check_value(key: str, value: object, hint: object) -> object:
    """Check (and lightly coerce: int -> float) one leaf value against its annotation and choices."""
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None:
        if type(None) in allowed:
            return None
        raise CTranError(f"{key} must not be empty")
    if float in allowed and isinstance(value, str):
        value = _yaml_float(value)
    for option in allowed:
        origin = typing.get_origin(option) or option
        if option is float and isinstance(value, int | float) and not isinstance(value, bool):
            value = float(value)
            break
        if option is int and isinstance(value, bool):
            continue
        if isinstance(origin, type) and isinstance(value, origin):
            break
    else:
        expected = " or ".join(getattr(a, "__name__", str(a)) for a in allowed)
        raise CTranError(f"{key} must be {expected}, got {value!r}")
    if key in CHOICES and value not in CHOICES[key]:
        raise CTranError(f"{key} must be one of {', '.join(CHOICES[key])}, got {value!r}")
    return value
