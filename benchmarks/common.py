"""What every benchmark script shares: the machine description, timing, peak memory, rows and tables.

Timing alternates the implementations under test (A B C, C B A, ...) so that a change in clock speed or in
the load of a shared machine hits all of them alike, and reports the median with the min/max spread. Peak
memory is measured on a separate call of each implementation (the first one, which also warms it up).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from ctran.inference.performance import optimize_for_inference
from ctran.model import CTran, build_model
from ctran.report import write_json
from ctran.training.precision import autocast, resolve_precision

Call = Callable[[], object]
RESULTS = Path(__file__).resolve().parent / "results"


def cpu_name() -> str:
    """The CPU's marketing name (``platform.processor`` is often just the architecture)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gib() -> float:
    """This machine's physical memory."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def bf16_supported(device: torch.device) -> bool:
    """bf16 in hardware: CUDA with bf16, or a CPU with AVX512-BF16 (what ``precision="auto"`` picks)."""
    return resolve_precision("auto", device) == "bf16"


def machine_info(device: torch.device) -> dict:
    """What the numbers were measured on, so they are compared only with like (the load average too)."""
    info = {
        "platform": platform.platform(),
        "processor": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_bf16": bf16_supported(torch.device("cpu")),
        "memory_gib": round(memory_gib(), 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------ peak memory


def _cpu_peak_from_profiler(prof: profile) -> int:
    """Peak bytes held by torch's CPU allocator during the profiled region, above its starting level.

    The trace holds one ``[memory]`` event per allocation and free with the allocator's running total, so
    temporaries allocated and freed inside a single op count too (per-op ``self_cpu_memory_usage`` nets them
    out, and RSS only moves in steps of hundreds of KiB). Memory that libraries such as MKL or oneDNN
    allocate on their own is not seen.
    """
    with tempfile.TemporaryDirectory() as tmp:
        trace_path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace_path))
        events = json.loads(trace_path.read_text())["traceEvents"]
    memory = sorted((e for e in events if e.get("name") == "[memory]"), key=lambda e: e["ts"])
    if not memory:
        return 0
    start = memory[0]["args"]["Total Allocated"] - memory[0]["args"]["Bytes"]
    return max(e["args"]["Total Allocated"] for e in memory) - start


def run_with_peak(call: Call, device: torch.device) -> tuple[object, int]:
    """One call, and the memory it needed above what was already held, in bytes."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        out = call()
        synchronize(device)
        return out, torch.cuda.max_memory_allocated(device) - before
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = call()
    return out, _cpu_peak_from_profiler(prof)


# ------------------------------------------------------------------------------------------------ timing


def time_call(call: Call, device: torch.device) -> float:
    """Wall time of one call in seconds, waiting for the GPU where there is one."""
    synchronize(device)
    start = time.perf_counter()
    call()
    synchronize(device)
    return time.perf_counter() - start


def time_interleaved(calls: dict[str, Call], repeats: int, device: torch.device) -> dict[str, list[float]]:
    """Seconds per call, alternating the order every round (ABC, CBA, ...)."""
    names = list(calls)
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(repeats):
        for name in names if i % 2 == 0 else reversed(names):
            times[name].append(time_call(calls[name], device))
    return times


@dataclass(frozen=True)
class Budget:
    """How many timed rounds to run: ``fixed`` if given, else as many as fit ``seconds`` (``least`` to 30)."""

    seconds: float
    least: int = 3
    fixed: int | None = None

    def repeats(self, round_s: float) -> int:
        """Rounds for a setting whose one round (every implementation once) takes ``round_s``."""
        if self.fixed:
            return self.fixed
        return max(self.least, min(30, int(self.seconds / max(round_s, 1e-9))))


def budget_from(args: argparse.Namespace, seconds: float) -> Budget:
    """``seconds`` of timed calls per setting, or a short smoke-run budget with ``--quick``."""
    if args.quick:
        return Budget(min(seconds, 6.0), least=2, fixed=args.repeats)
    return Budget(seconds, least=3, fixed=args.repeats)


def rates(samples: list[float] | None, items: int) -> dict:
    """Items per second: the median, and the spread over the samples (slowest, fastest)."""
    if not samples:
        return {"per_s": None, "per_s_min": None, "per_s_max": None}
    return {
        "per_s": items / statistics.median(samples),
        "per_s_min": items / max(samples),
        "per_s_max": items / min(samples),
    }


def contract_row(
    name: str,
    items: int,
    ours_s: list[float],
    ref_s: list[float] | None,
    ours_peak: int | None = None,
    ref_peak: int | None = None,
    flops_per_item: float | None = None,
    peak_flops: float | None = None,
    **details: object,
) -> dict:
    """One row of ``latest.json``: ``ratio`` is ours/ref throughput; ``fraction_of_peak`` is the FLOP rate
    ours achieved over this machine's measured matmul peak (``None`` where it does not apply)."""
    ours, ref = rates(ours_s, items), rates(ref_s, items)
    achieved = flops_per_item * ours["per_s"] if flops_per_item else None
    return {
        "name": name,
        "ours_per_s": _round(ours["per_s"]),
        "ref_per_s": _round(ref["per_s"]),
        "ratio": _round(ours["per_s"] / ref["per_s"]) if ref["per_s"] else None,
        "ours_peak_mb": _mb(ours_peak),
        "ref_peak_mb": _mb(ref_peak),
        "fraction_of_peak": _round(achieved / peak_flops) if achieved and peak_flops else None,
        "ours_per_s_range": [_round(ours["per_s_min"]), _round(ours["per_s_max"])],
        "ref_per_s_range": [_round(ref["per_s_min"]), _round(ref["per_s_max"])] if ref_s else None,
        "repeats": len(ours_s),
        "gflops_per_item": _round(flops_per_item / 1e9) if flops_per_item else None,
        **details,
    }


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else float(f"{value:.{digits}g}")


def _mb(value: int | None) -> float | None:
    return None if value is None else round(value / 1e6, 1)


# ------------------------------------------------------------------------------------------------ output


def _cell(value: object, spec: str = ".3g", suffix: str = "") -> str:
    return "n/a" if value is None else format(value, spec) + suffix


def markdown_table(rows: list[dict]) -> str:
    """The contract columns, one line per row; "n/a" where a value does not apply or was not measured."""
    lines = [
        "| name | ours/s | ref/s | ratio | ours peak MB | ref peak MB | fraction of peak |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        cells = [
            r["name"],
            _cell(r["ours_per_s"]),
            _cell(r["ref_per_s"]),
            _cell(r["ratio"], ".2f", "x"),
            _cell(r["ours_peak_mb"], ".1f"),
            _cell(r["ref_peak_mb"], ".1f"),
            _cell(r["fraction_of_peak"], ".1%"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(path: Path, benchmark: str, machine: dict, rows: list[dict], **extra: object) -> Path:
    """``{"benchmark", "machine", "rows", ...}`` as JSON (atomically)."""
    return write_json(path, {"benchmark": benchmark, "machine": machine, "rows": rows, **extra})


def base_parser(description: str, name: str) -> argparse.ArgumentParser:
    """``--quick``, ``--repeats`` and ``--out`` (``results/<name>.json``): the options of every script."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a smoke run: smallest settings, fewest repeats")
    p.add_argument("--repeats", type=int, default=None, help="timed calls of each implementation")
    p.add_argument("--out", type=Path, default=RESULTS / f"{name}.json", help="JSON output")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's own). On a shared machine whose other jobs hold cores, "
        "fewer threads avoid OpenMP barrier waits that can slow every op down many times",
    )
    return p


def setup(args: argparse.Namespace) -> torch.device:
    """Apply ``--threads`` and return the device the benchmark runs on (CUDA when present)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    return default_device()


# ------------------------------------------------------------------------------------------------ models


@dataclass(frozen=True)
class Variant:
    """One combination of the inference switches of ``ctran.inference.performance``."""

    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False

    @property
    def name(self) -> str:
        return self.precision + ("_cl" if self.channels_last else "") + ("_compiled" if self.compile else "")


VARIANTS = {v.name: v for v in (Variant(), Variant("fp32", True), Variant("bf16"), Variant("bf16", True))}
COMPILED = Variant("bf16", True, True)


def make_model(labels: int, backbone: str = "resnet101", dim: int = 2048, seed: int = 0) -> CTran:
    """A C-Tran with random weights (speed does not depend on them), in eval mode.

    timm zero-initialises the last norm of every residual block; those are set to 0.2 so that every branch
    contributes to the output and the parity check with the reference covers every weight.
    """
    torch.manual_seed(seed)
    model = build_model(labels, backbone=backbone, dim=dim)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d) and not module.weight.any():
                module.weight.fill_(0.2)
    return model.eval()


def prepared(model: CTran, variant: Variant) -> CTran:
    """``model`` itself for plain float32, else a copy with the variant's layout/compilation switches."""
    if not (variant.channels_last or variant.compile):
        return model
    return optimize_for_inference(copy.deepcopy(model), variant.channels_last, variant.compile)


def forward(model: nn.Module, images: torch.Tensor, states: torch.Tensor, precision: str = "fp32") -> Call:
    """A call running ``model(images, states)`` without autograd in ``precision``."""

    def call() -> torch.Tensor:
        with torch.inference_mode(), autocast(images.device, precision):
            out = model(images, states)
        return out[0] if isinstance(out, tuple) else out

    return call


# ------------------------------------------------------------------------------------------------ photos

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")


def write_photo_dataset(folder: Path, count: int, labels: int, size: tuple[int, int] = (640, 480)) -> Path:
    """``count`` COCO-sized JPEG photos (random crops of scikit-image's sample photographs, quality 90) and a
    ``test.csv`` tagging each with a few of ``labels`` labels, for ``ctran.data`` 's CSV reader."""
    import numpy as np
    import skimage.data
    from PIL import Image

    rng = np.random.default_rng(0)
    sources = [Image.fromarray(getattr(skimage.data, name)()).convert("RGB") for name in PHOTOS]
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["image,labels"]
    for i in range(count):
        source = sources[i % len(sources)]
        w, h = source.size
        crop_w, crop_h = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        left, top = int(rng.integers(0, w - crop_w + 1)), int(rng.integers(0, h - crop_h + 1))
        photo = source.crop((left, top, left + crop_w, top + crop_h)).resize(size, Image.Resampling.BICUBIC)
        photo.save(folder / f"photo_{i:04d}.jpg", quality=90)
        tags = rng.choice(labels, size=3, replace=False)
        lines.append(f"photo_{i:04d}.jpg," + ";".join(f"label_{t}" for t in sorted(tags)))
    (folder / "labels.txt").write_text("\n".join(f"label_{t}" for t in range(labels)) + "\n")
    (folder / "test.csv").write_text("\n".join(lines) + "\n")
    return folder
