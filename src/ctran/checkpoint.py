"""Checkpoints: the weights plus everything needed to rebuild and use the model, written atomically.

A checkpoint is a dict ``{"format": "ctran", "version": 1, "model_config": {...}, "target_names": [...],
"extra_names": [...], "image_size": S, "state_dict": {...}, **meta}``; ``model_config`` rebuilds the module
with ``ctran.model.build_from_config``.
"""

from __future__ import annotations

import hashlib
import pickle
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ctran.devices import resolve_device
from ctran.errors import CTranError
from ctran.files import atomic_write
from ctran.model import build_from_config

FORMAT, VERSION = "ctran", 1


def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    model_config: dict,
    target_names: list[str] | tuple[str, ...],
    extra_names: list[str] | tuple[str, ...] = (),
    image_size: int | None = None,
    **meta,
) -> Path:
    """Write to a temporary file in the same folder, then rename: a crash never leaves half a checkpoint."""
    path = Path(path)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "model_config": dict(model_config),
        "target_names": list(target_names),
        "extra_names": list(extra_names),
        "image_size": image_size,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **meta,
    }
    payload["checksum"] = weights_checksum(payload["state_dict"])
    atomic_write(path, lambda handle: torch.save(payload, handle))
    return path


def weights_checksum(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes: catches corruption torch.load misses."""
    digest = hashlib.sha256()
    for name, tensor in state_dict.items():
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def read_checkpoint(path: str | Path) -> dict:
    """Load the payload, with a clear error for a missing, corrupt or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise CTranError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():  # a foreign pickle's protocol notice says nothing useful here
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's advice (load with weights_only=False) would run whatever code the file holds.
        raise CTranError(f"{path} is not a ctran checkpoint: {_unpickling_problem(err)}") from err
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise CTranError(f"cannot read checkpoint {path}: {type(err).__name__}: {err}") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CTranError(
            f"{path} is not a ctran checkpoint (for official C-Tran weights use convert-official)"
        )
    expected = payload.get("checksum")
    if expected is not None and weights_checksum(payload["state_dict"]) != expected:
        raise CTranError(f"checkpoint {path} is corrupted: its weights do not match their checksum")
    return payload


def _unpickling_problem(err: pickle.UnpicklingError) -> str:
    """What torch's weights-only loader refused, in ctran's words (never "load it unsafely")."""
    match = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
    if match is None:
        return "it is not a file of weights (nor any PyTorch file)"
    return (
        f"it holds pickled Python objects ({match.group(1)}), which ctran never loads because unpickling "
        "can run code; for official C-Tran weights use ctran convert-official"
    )


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild the model in eval mode on ``device``; returns (model, payload without the weights)."""
    payload = read_checkpoint(path)
    model = build_from_config(payload["model_config"])
    model.load_state_dict(payload.pop("state_dict"))
    return model.to(device).eval(), payload


def load_model(path: str | Path, device: torch.device | str = "cpu") -> torch.nn.Module:
    """The checkpoint's model as trained, for training, fine-tuning or inspecting its weights.

    Every original layer is there (the backbone's ``conv1``, its BatchNorms) in float32, in eval mode (call
    ``.train()`` to train). ``ctran.load(path)`` is the one for prediction: it returns a ``Predictor`` whose
    model is rewritten for speed and cannot be trained. Works for C-Tran and baseline checkpoints alike.
    """
    model, _ = load_checkpoint(path, resolve_device(device))
    return model


@dataclass
class LabelTransfer:
    """What fine-tuning took from a checkpoint: labels whose rows were kept, new labels, labels left out."""

    kept: list[str]
    new: list[str]
    dropped: list[str]

    def summary(self, path: str | Path) -> str:
        def names(items: list[str]) -> str:
            return ", ".join(items[:8]) + (f" (+{len(items) - 8} more)" if len(items) > 8 else "")

        lines = [f"initialised from {path}: {len(self.kept)} labels kept"]
        if self.new:
            lines.append(f"  {len(self.new)} new labels (fresh rows): {names(self.new)}")
        if self.dropped:
            lines.append(
                f"  {len(self.dropped)} labels of the checkpoint not in this dataset: {names(self.dropped)}"
            )
        return "\n".join(lines)


def _same_batchnorm_keys(source: dict, own: dict) -> dict:
    """``source`` with BatchNorm's ``num_batches_tracked`` counters as ``own`` has them: live and frozen
    BatchNorm (``model.batchnorm``) hold the same statistics, frozen without the counter."""
    counter = "num_batches_tracked"
    kept = {key: value for key, value in source.items() if key in own or not key.endswith(counter)}
    added = {key: value for key, value in own.items() if key.endswith(counter) and key not in source}
    return {**kept, **added}


def init_from_checkpoint(model: torch.nn.Module, path: str | Path, label_names: list[str]) -> LabelTransfer:
    """Load a checkpoint's weights into ``model`` for fine-tuning, matching label rows by name.

    Every tensor but the per-label rows (``model.label_parameters``) must have the same shape in both; each
    label row is copied from the checkpoint row of the same name, in whatever order the checkpoint has
    them, and labels the checkpoint lacks keep their fresh initial rows.
    """
    payload = read_checkpoint(path)
    kind = payload["model_config"].get("kind", "ctran")
    own_kind = "baseline" if not getattr(model, "takes_states", True) else "ctran"
    if kind != own_kind:
        raise CTranError(f"--init-from {path} holds a {kind} model; this run trains a {own_kind}")
    own = model.state_dict()
    source = _same_batchnorm_keys(payload["state_dict"], own)
    per_label = tuple(getattr(model, "label_parameters", ()))
    rows = source[per_label[0]].shape[0] if per_label else 0
    source_names = (list(payload["target_names"]) + list(payload.get("extra_names", [])))[:rows]
    problems = [key for key in source if key not in own] + [key for key in own if key not in source]
    problems += [
        f"{key} {tuple(source[key].shape)} vs {tuple(value.shape)}"
        for key, value in own.items()
        if key in source and key not in per_label and source[key].shape != value.shape
    ]
    if problems:
        raise CTranError(
            f"--init-from {path}: its model differs from this run's (backbone, dim, layers?): "
            + "; ".join(problems[:5])
        )
    position = {name: i for i, name in enumerate(source_names)}
    shared = [(i, position[name]) for i, name in enumerate(label_names) if name in position]
    merged = {key: value.clone() for key, value in source.items() if key not in per_label}
    for key in per_label:
        rows_now = own[key].clone()
        if shared:
            mine, theirs = (torch.tensor(side) for side in zip(*shared, strict=True))
            rows_now[mine] = source[key][theirs].to(rows_now.dtype)
        merged[key] = rows_now
    model.load_state_dict(merged)
    kept = [label_names[i] for i, _ in shared]
    return LabelTransfer(
        kept=kept,
        new=[name for name in label_names if name not in position],
        dropped=[name for name in source_names if name not in set(label_names)],
    )
