"""Numeric precision: bf16/fp16 autocast where the hardware supports it, plain fp32 otherwise."""

from __future__ import annotations

import contextlib

import torch


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``auto`` -> ``bf16`` on CUDA with bf16 or on CPUs with AVX512-BF16, else ``fp32``."""
    if precision not in {"auto", "fp32", "bf16", "fp16"}:
        raise ValueError(f"precision must be auto, fp32, bf16 or fp16, got {precision!r}")
    if precision != "auto":
        return precision
    if torch.device(device).type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    cpu_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
    return "bf16" if cpu_bf16 else "fp32"


def autocast(device: torch.device | str, precision: str) -> contextlib.AbstractContextManager:
    """An autocast context for ``precision`` (already resolved), or a no-op for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(torch.device(device).type, dtype=dtype)
