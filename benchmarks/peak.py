"""The limit: FLOPs per image of each model, and this machine's matrix-multiply rate in float32 and bf16.

Every other benchmark divides its achieved FLOP rate (FLOPs per item x items/s) by the matmul rate measured
here to report ``fraction_of_peak``. The rate is the best of several square matmuls of a few sizes, in the
precision the row ran in (bf16 rows against the bf16 rate), so "peak" means what this machine's BLAS and
oneDNN actually reach, not the datasheet number; convolutions can beat it (oneDNN's float32 convolutions
use AVX-512 where MKL's float32 GEMM may not).

FLOPs are counted with ``torch.utils.flop_counter`` (a multiply-add is 2 FLOPs), taught the CPU
flash-attention kernel's FLOPs (those of the attention it computes), which it does not know by itself.

Run: ``.venv/bin/python benchmarks/peak.py`` (see ``--help``).
"""

from __future__ import annotations

import functools
import time

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from common import base_parser, bf16_supported, machine_info, setup, synchronize, write_report
from ctran.model import build_model

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _cpu_flash_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_flash_backward_flops(grad_shape, query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_shape, query_shape, key_shape, value_shape)


CPU_FLASH = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_flash_backward_flops,
}


def count_flops(call) -> int:
    """FLOPs of one call (forward, and backward when the call runs one)."""
    with FlopCounterMode(display=False, custom_mapping=CPU_FLASH) as counter:
        call()
    return counter.get_total_flops()


def matmul_peak(precision: str, device: torch.device, sizes: tuple[int, ...] = (1024, 2048, 4096)) -> float:
    """The best FLOP/s of square matmuls in ``precision`` over a few sizes and repeats."""
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=DTYPES[precision])
        b = torch.randn(n, n, device=device, dtype=DTYPES[precision])
        a @ b  # warm-up: library set-up is not timed
        repeats = max(3, int(2e10 / n**3))
        for _ in range(repeats):
            synchronize(device)
            start = time.perf_counter()
            a @ b
            synchronize(device)
            best = max(best, 2 * n**3 / (time.perf_counter() - start))
    return best


@functools.cache
def machine_peaks(device: torch.device, quick: bool = False) -> dict[str, float]:
    """``{"fp32": FLOP/s, "bf16": FLOP/s}`` (bf16 only where the hardware has it); measured once per run."""
    sizes = (1024, 2048) if quick else (1024, 2048, 4096)
    peaks = {"fp32": matmul_peak("fp32", device, sizes)}
    if bf16_supported(device):
        peaks["bf16"] = matmul_peak("bf16", device, sizes)
    return peaks


def model_flops(
    labels: int, image_size: int, backbone: str = "resnet101", dim: int = 2048
) -> dict[str, float]:
    """GFLOPs per image of ``encode`` (backbone) and ``decode`` (transformer + readout), batch 1."""
    model = build_model(labels, backbone=backbone, dim=dim).eval()
    image = torch.zeros(1, 3, image_size, image_size)
    states = torch.full((1, labels), -1)
    with torch.inference_mode():
        tokens = model.encode(image)
        encode = count_flops(lambda: model.encode(image))
        decode = count_flops(lambda: model.decode(tokens, states))
    return {"gflops_encode": encode / 1e9, "gflops_decode": decode / 1e9, "gflops": (encode + decode) / 1e9}


def main(argv: list[str] | None = None) -> dict:
    p = base_parser(__doc__, "peak")
    args = p.parse_args(argv)
    device = setup(args)
    peaks = machine_peaks(device, args.quick)
    for name, rate in peaks.items():
        print(f"matmul peak {name}: {rate / 1e9:.0f} GFLOP/s")
    rows = []
    settings = [(80, 448)] if args.quick else [(80, 576), (1000, 576), (80, 448)]
    for labels, size in settings:
        flops = model_flops(labels, size)
        rows.append({"name": f"resnet101_{size}_L{labels}", **{k: round(v, 2) for k, v in flops.items()}})
        print(f"{rows[-1]['name']}: {flops['gflops']:.1f} GFLOPs/image ({flops['gflops_decode']:.1f} decode)")
    peaks_gflops = {name: round(rate / 1e9, 1) for name, rate in peaks.items()}
    write_report(args.out, "peak", machine_info(device), rows, matmul_peak_gflops=peaks_gflops)
    return {"peaks": peaks, "rows": rows}


if __name__ == "__main__":
    main()
