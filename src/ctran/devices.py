"""The one place a user's device flag (``--device``, ``train.device``, ``ctran.load(device=...)``) is checked.

Every command takes the same spellings (``cpu``, ``cuda``, ``cuda:N``, ``auto``) and fails the same way, with
one line that says what to use instead, before any model is built.
"""

from __future__ import annotations

import torch

from ctran.errors import CTranError


def resolve_device(device: str | torch.device, local_rank: int = 0) -> torch.device:
    """``auto`` -> this rank's GPU when CUDA is available, else the CPU; a CUDA device must exist."""
    if isinstance(device, str) and device == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise CTranError(f"unknown device {device!r} (use cpu, cuda, cuda:N or auto)") from err
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise CTranError(
                f"device {str(device)!r} asked for, but this machine has no usable CUDA GPU (use cpu or auto)"
            )
        if resolved.index is None:
            resolved = torch.device(f"cuda:{local_rank}")
        if resolved.index >= torch.cuda.device_count():
            raise CTranError(
                f"device {str(device)!r} asked for, but this machine has {torch.cuda.device_count()} GPU(s)"
            )
    elif resolved.type not in {"cpu", "mps"}:
        raise CTranError(f"unsupported device {str(device)!r} (use cpu, cuda, cuda:N or auto)")
    return resolved
