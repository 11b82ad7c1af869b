"""Checkpoints: the weights plus everything needed to rebuild and use the model, written atomically.

A checkpoint is a dict ``{"format": "ctran", "version": 1, "model_config": {...}, "target_names": [...],
"extra_names": [...], "image_size": S, "state_dict": {...}, **meta}``; ``model_config`` rebuilds the module
with ``ctran.model.build_from_config``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

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
        payload = torch.load(path, map_location="cpu", weights_only=True)
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


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild the model in eval mode on ``device``; returns (model, payload without the weights)."""
    payload = read_checkpoint(path)
    model = build_from_config(payload["model_config"])
    model.load_state_dict(payload.pop("state_dict"))
    return model.to(device).eval(), payload
