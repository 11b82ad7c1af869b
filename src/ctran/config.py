"""The one config system: YAML files plus dotted ``key=value`` overrides, validated into dataclasses.

A run is described by ``Config(model, data, train, eval, seed)``. Files name only what differs from the
defaults; ``load_config("coco80", ["train.lr=1e-4"])`` reads a shipped config (``ctran/configs/*.yaml``,
also reachable as ``configs/`` at the repository root) or any path, applies overrides, and checks every key,
type and range, suggesting the closest key for a typo. Each field's allowed values sit next to it as an
``Annotated`` mark (``Range``: bounds, ``OneOf``: choices), so a bad value fails at load with a one-line
error naming the key, before any data or model is built. The resolved config is saved into every run folder
and checkpoint, so a run can be rebuilt from its outputs alone.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import yaml

from ctran.errors import CTranError

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass(frozen=True)
class Range:
    """Bounds a number must keep (``None``: unbounded); ``gt``/``lt`` exclusive, ``ge``/``le`` inclusive."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None

    def check(self, key: str, value: float) -> None:
        """Raise ``CTranError`` naming ``key`` when ``value`` is out of range (or not finite)."""
        ok = isinstance(value, int) or math.isfinite(value)  # (an int of 400 digits overflows a float)
        ok = ok and (self.gt is None or value > self.gt) and (self.ge is None or value >= self.ge)
        ok = ok and (self.lt is None or value < self.lt) and (self.le is None or value <= self.le)
        if not ok:
            raise CTranError(f"{key} must be {self.describe()}, got {value!r}")

    def describe(self) -> str:
        """``> 0``, ``>= 0``, ``in [0, 1)``, ... (bounds as written: 0, not 0.0)."""
        low, low_open = (self.gt, True) if self.gt is not None else (self.ge, False)
        high, high_open = (self.lt, True) if self.lt is not None else (self.le, False)
        if low is not None and high is not None:
            return f"in {'(' if low_open else '['}{_number(low)}, {_number(high)}{')' if high_open else ']'}"
        if low is not None:
            return f"{'>' if low_open else '>='} {_number(low)}"
        return f"{'<' if high_open else '<='} {_number(high)}"


@dataclass(frozen=True)
class OneOf:
    """The values a string field may take."""

    options: tuple[str, ...]

    def check(self, key: str, value: str) -> None:
        if value not in self.options:
            raise CTranError(f"{key} must be one of {', '.join(self.options)}, got {value!r}")


def _number(bound: float) -> str:
    """A bound as a user writes it: ``0``, ``1``, ``0.5``."""
    return str(int(bound)) if float(bound).is_integer() else str(bound)


def one_of(*options: str) -> OneOf:
    """``Annotated[str, one_of("adam", "adamw")]``: the choices of a string field."""
    return OneOf(options)


POSITIVE = Range(gt=0)  # sizes, counts, learning rates
NON_NEGATIVE = Range(ge=0)  # where 0 means off (early_stop, grad_clip, ...)
FRACTION = Range(ge=0, le=1)
BELOW_ONE = Range(ge=0, lt=1)  # rates and decays that must leave something (dropout, ema_decay)

PositiveInt = Annotated[int, POSITIVE]
NonNegativeInt = Annotated[int, NON_NEGATIVE]


@dataclass
class ModelConfig:
    """C-Tran's architecture (``ctran.build_model`` options); defaults are the paper's."""

    kind: Annotated[str, one_of("ctran", "baseline")] = "ctran"  # baseline: pooled CNN, same backbone
    init_from: str | None = None  # fine-tune: start from this ctran checkpoint, labels matched by name
    backbone: str = "resnet101.tv_in1k"  # timm name.tag; the paper's torchvision weights (docs/training.md)
    pretrained: bool = True
    backbone_weights: str | None = None  # a local .pth/.safetensors for offline machines
    dim: PositiveInt = 2048  # divisible by heads
    layers: PositiveInt = 3
    heads: PositiveInt = 4
    ffn_dim: Annotated[int | None, POSITIVE] = None  # None: the hidden size D, as in the paper
    dropout: Annotated[float, BELOW_ONE] = 0.1
    position_encoding: bool = False
    attention: Annotated[str, one_of("full", "one_way")] = "full"  # one_way: image tokens never see labels
    # frozen | live | sync | auto: frozen for a pretrained backbone, else live
    batchnorm: Annotated[str, one_of("auto", "frozen", "live", "sync")] = "auto"


@dataclass
class DataConfig:
    """Which dataset, where, and how images are prepared (the paper's multi-scale crops by default)."""

    format: str = "digits"
    root: str | None = None
    image_size: PositiveInt = 576
    scale_size: Annotated[int | None, POSITIVE] = 640  # None: plain resize to image_size (no crops)
    crop_sizes: list[PositiveInt] = field(default_factory=lambda: [640, 576, 512, 384, 320])
    flip: bool = True  # random horizontal flips in training (off where a mirror changes the meaning)
    train_split: str | None = None  # None: the dataset's default for each role
    val_split: str | None = None
    test_split: str | None = None
    val_fraction: Annotated[float, Range(gt=0, lt=1)] = 0.1  # held out of train without a val split
    sizes: dict[str, PositiveInt] | None = None  # digits only: scenes per split, e.g. {train: 2000}
    # the format's own, e.g. {difficult: negative}
    options: dict[str, str | int | float | bool] = field(default_factory=dict)
    num_workers: NonNegativeInt = 4
    on_bad_image: Annotated[str, one_of("skip", "fail")] = "skip"
    # keep this seeded fraction of train/val target annotations (missing labels)
    keep_annotations: Annotated[float, Range(gt=0, le=1)] = 1.0
    mean: list[float] | None = None  # input normalisation; None: the backbone's pretrained config's
    std: list[Annotated[float, POSITIVE]] | None = None


@dataclass
class TrainConfig:
    """Optimisation. Paper: Adam, lr 1e-5, batch 16, reduce-on-plateau; ours adds AdamW/cosine/EMA/ASL."""

    epochs: PositiveInt = 40
    batch_size: PositiveInt = 16
    # optimisation step every N batches (effective batch = batch_size * N * world)
    grad_accum: PositiveInt = 1
    optimizer: Annotated[str, one_of("adam", "adamw")] = "adam"
    lr: Annotated[float, POSITIVE] = 1e-5
    weight_decay: Annotated[float, NON_NEGATIVE] = 0.0
    backbone_lr_mult: Annotated[float, NON_NEGATIVE] = 1.0
    freeze_backbone: Annotated[str, one_of("none", "all", "all_but_last")] = "none"
    schedule: Annotated[str, one_of("plateau", "cosine", "onecycle")] = "plateau"
    warmup_epochs: Annotated[float, NON_NEGATIVE] = 0.0
    plateau_patience: NonNegativeInt = 5
    early_stop: NonNegativeInt = 0  # stop after N epochs without a better validation mAP (0: never)
    loss: Annotated[str, one_of("bce", "asl")] = "bce"
    asl_gamma_neg: Annotated[float, NON_NEGATIVE] = 4.0
    asl_gamma_pos: Annotated[float, NON_NEGATIVE] = 0.0
    asl_clip: Annotated[float, BELOW_ONE] = 0.05
    label_mask: bool = True  # Label Mask Training; False: all labels unknown, loss on all (the ablation)
    max_known_fraction: Annotated[float, FRACTION] = 0.75  # of the labels LMT may reveal
    # share of training images shown without their image tokens: the label tokens must use the known labels
    image_dropout: Annotated[float, BELOW_ONE] = 0.0
    # which labels LMT may reveal (CUB-312: extras; classes never)
    lmt_labels: Annotated[str, one_of("all", "extras")] = "all"
    extra_loss: bool = False  # also train the extra labels' outputs where unknown (CUB-312 concepts)
    # not-annotated targets out of the loss, or taken as negatives
    missing: Annotated[str, one_of("ignore", "negative")] = "ignore"
    # label tokens per training batch: loss/known ones + a sample up to N (0: all)
    label_tokens: NonNegativeInt = 0
    grad_clip: Annotated[float, NON_NEGATIVE] = 0.0  # max gradient norm (0: off)
    max_bad_steps: PositiveInt = 10  # stop after this many consecutive steps with a non-finite loss/gradient
    ema_decay: Annotated[float, BELOW_ONE] = 0.0  # 0: off; e.g. 0.9997 as in ASL/Query2Label
    precision: Annotated[str, one_of("auto", "fp32", "bf16", "fp16")] = "auto"
    deterministic: bool = False
    device: str = "auto"  # auto: cuda (the local rank's GPU) when available, else cpu


@dataclass
class EvalConfig:
    """Which inference settings the final test evaluation reports (each told one with ``untold_mAP`` and
    ``gain``: the same entries scored with nothing told, and the difference)."""

    # each < 1: revealing every label would leave nothing to score
    known_fractions: list[Annotated[float, BELOW_ONE]] = field(default_factory=lambda: [0.25, 0.5, 0.75])
    # of each image's present labels (what a tagged library knows; the rest unknown); 0 is skipped
    known_positives: list[Annotated[float, FRACTION]] = field(default_factory=lambda: [0.25, 0.5, 0.75])
    extra: bool = True  # also the extra-label setting when the dataset has extra labels
    batch_size: PositiveInt = 64


@dataclass
class Config:
    """Everything a run depends on."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: Annotated[int, Range(ge=0, lt=2**63)] = 0  # torch.manual_seed takes 64 bits

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def field_marks(cls: type | None = None, prefix: str = "") -> dict[str, tuple]:
    """``{"train.schedule": (OneOf(...),), ...}``: every leaf field's own marks, by dotted key (the marks of
    list items and dict values sit in their item annotation: ``list[PositiveInt]``)."""
    marks = {}
    for name, hint in typing.get_type_hints(cls or Config, include_extras=True).items():
        if dataclasses.is_dataclass(hint):
            marks.update(field_marks(hint, f"{prefix}{name}."))
        elif typing.get_origin(hint) is Annotated:
            marks[prefix + name] = hint.__metadata__
    return marks


CHOICES = {
    key: mark.options for key, marks in field_marks().items() for mark in marks if isinstance(mark, OneOf)
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
    return config_from_dict(data, overrides)


def config_from_dict(data: dict, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Build and validate a ``Config`` from nested plain data (as read from YAML or a checkpoint), with
    ``section.key=value`` overrides applied to it (``data`` itself is left as it was)."""
    if overrides:
        data = copy.deepcopy(data)
        for item in overrides:
            _apply_override(data, item)
    config = _build(Config, data, "")
    _check_together(config)
    return config


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
    """Recursively construct dataclass ``cls`` from ``data``, rejecting unknown keys and wrong values."""
    where = prefix.rstrip(".") or "config"
    if not isinstance(data, dict):
        raise CTranError(f"{where} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls, include_extras=True)
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


def _check_together(config: Config) -> None:
    """The few constraints that join two fields."""
    model, data = config.model, config.data
    if model.dim % model.heads:
        raise CTranError(f"model.dim ({model.dim}) must be divisible by model.heads ({model.heads})")
    if data.scale_size is not None and data.scale_size < data.image_size:
        raise CTranError(
            f"data.scale_size ({data.scale_size}) must be at least data.image_size ({data.image_size}), "
            "or null for a plain resize"
        )
    if (data.mean is None) != (data.std is None):
        raise CTranError("set both data.mean and data.std, or neither (the backbone's own are used)")
    for key, values in (("data.mean", data.mean), ("data.std", data.std)):
        if values is not None and len(values) not in (1, 3):
            raise CTranError(f"{key} must hold 3 values (one per RGB channel) or 1, got {len(values)}")


def _yaml_float(text: str) -> float | str:
    """YAML 1.1 reads ``3e-4`` as a string (it wants ``3.0e-4``); accept what Python accepts as a float."""
    try:
        return float(text)
    except ValueError:
        return text


def _check_value(key: str, value: object, hint: object) -> object:
    """Check (and lightly coerce: int -> float) one value against its annotation, then its marks.

    ``Annotated[T, mark, ...]`` checks ``T`` first, then each mark (``Range``, ``OneOf``) unless the value is
    None; list items and dict values are checked against their own annotation (``crop_sizes[1]``).
    """
    marks: tuple = ()
    if typing.get_origin(hint) is Annotated:
        hint, marks = hint.__origin__, hint.__metadata__
    value = _check_type(key, value, hint)
    if value is not None:
        for mark in marks:
            mark.check(key, value)
    return value


def _check_type(key: str, value: object, hint: object) -> object:
    """``value`` as one of the types ``hint`` allows (``int | None``, ``list[float]``, ...), or an error."""
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
            return float(value)
        if option is int and isinstance(value, bool):
            continue
        if isinstance(origin, type) and isinstance(value, origin):
            return _check_items(key, value, typing.get_args(option))
    expected = " or ".join(_type_name(a) for a in allowed)
    raise CTranError(f"{key} must be {expected}, got {value!r}")


def _check_items(key: str, value: object, item_hints: tuple) -> object:
    """A list's items (``key[i]``) or a dict's string keys and values (``key.name``), each checked."""
    if isinstance(value, list) and item_hints:
        return [_check_value(f"{key}[{i}]", item, item_hints[0]) for i, item in enumerate(value)]
    if isinstance(value, dict) and item_hints:
        return {
            _check_value(f"{key} key", name, item_hints[0]): _check_value(
                f"{key}.{name}", item, item_hints[1]
            )
            for name, item in value.items()
        }
    return value


def _type_name(hint: object) -> str:
    """``int``, ``list``, ``NoneType``: how a type reads in an error."""
    if typing.get_origin(hint) is Annotated:
        hint = hint.__origin__
    return getattr(typing.get_origin(hint) or hint, "__name__", str(hint))
