"""Inference speed switches, all in one place: numeric precision, memory layout, fusion and compilation.

Each was kept because ``benchmarks/`` showed that it pays (numbers in BENCHMARKS.md; ResNet-101 at 576 on a
2-core AVX512-BF16 CPU, ours against the official formulation at the same numerics), and each has a default
that changes no result beyond float rounding:

- ``precision``: ``"fp32"`` (default: the model's own numerics), ``"bf16"`` autocast (CPUs with AVX512-BF16
  and GPUs: about 4x ours in float32 at the paper's setting, with channels-last; logits move by a few
  hundredths, the digit-scenes mAP by a few hundredths of a point), ``"fp16"`` (GPUs), or ``"auto"`` (bf16
  where the hardware has it, else fp32);
- ``channels_last``: NHWC convolutions, which oneDNN and cuDNN run faster (a few percent in float32, much
  more in bf16); the same arithmetic up to the order of summation. ``ctran.load`` turns it on with a
  reduced precision and leaves float32 models in NCHW;
- ``fuse`` (on): ``ctran.inference.fusion``: BatchNorm folded into the convolutions, ReLU and residual adds
  run inside them (CPU), weights stored once in the compute precision, the label tokens' first-layer
  projections tabulated. The model it returns serves inference in that one precision;
- ``compile``: ``torch.compile`` of the backbone and the transformer; opt-in: it costs tens of seconds of
  compiling at each new input shape, which pays only for long-running services.

Fused attention (``F.scaled_dot_product_attention``), the label-rows-only last layer, ``torch.inference_mode``
and batched prediction are always on: they change nothing but speed and memory.
"""

from __future__ import annotations

import torch

from ctran.errors import CTranError
from ctran.inference.fusion import fuse_for_inference
from ctran.model import CTran
from ctran.training.precision import resolve_precision

PRECISIONS = ("fp32", "bf16", "fp16", "auto")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def optimize_for_inference(
    model: CTran,
    channels_last: bool = False,
    compile: bool = False,
    precision: str = "fp32",
    fuse: bool = True,
) -> CTran:
    """Apply the layout, fusion and compilation switches to ``model`` in place and return it.

    ``precision`` is the (resolved) precision the model will run in: with ``fuse`` its weights are stored
    in it, so the result serves that precision only, in eval mode. Without ``fuse`` the model keeps its
    modules and state dict.
    """
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if fuse:
        fuse_for_inference(model, DTYPES[precision], post_ops=not compile)
    if compile:
        model.backbone.compile()
        model.encoder.compile()
    return model


def inference_precision(precision: str, device: torch.device | str) -> str:
    """``precision`` checked and resolved for ``device`` (``auto`` -> ``bf16``/``fp16``/``fp32``)."""
    if precision not in PRECISIONS:
        raise CTranError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    resolved = resolve_precision(precision, device)
    if resolved == "fp16" and torch.device(device).type != "cuda":
        raise CTranError("fp16 inference needs a CUDA device; on CPU use bf16 or fp32")
    return resolved
