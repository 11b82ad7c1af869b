"""What every benchmark script shares: the machine description, timing, peak memory, rows and tables.

Timing alternates the implementations under test (A B C, C B A, ...) so that a change in clock speed or in
the load of a shared machine hits all of them alike, and reports the median with the min/max spread; the
ratio of two implementations also comes with the range of its per-round values. Peak memory is measured on
a separate call of each implementation (the first one, which also warms it up).

The clock: on a CPU with one torch thread, ``--clock auto`` times each call by this process's CPU time
(``time.process_time``), which a shared machine's other jobs do not inflate while they hold the core;
otherwise (GPU, several threads) by wall time, waiting for the GPU. Each row says which it used.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
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
from reference import REFERENCE

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


_CLOCK = {"name": "wall"}
CLOCKS = ("auto", "cpu", "wall")


def use_clock(name: str, device: torch.device) -> str:
    """Select the timing clock (see the module docstring); returns the one in use."""
    if name not in CLOCKS:
        raise ValueError(f"clock must be one of {CLOCKS}, got {name!r}")
    if name == "auto":
        name = "cpu" if device.type == "cpu" and torch.get_num_threads() == 1 else "wall"
    if name == "cpu" and device.type != "cpu":
        raise ValueError("the cpu clock cannot time GPU work; use --clock wall")
    _CLOCK["name"] = name
    return name


def clock_name() -> str:
    return _CLOCK["name"]


def _now() -> float:
    return time.process_time() if _CLOCK["name"] == "cpu" else time.perf_counter()


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
    """Seconds of one call on the selected clock, waiting for the GPU where there is one."""
    synchronize(device)
    start = _now()
    call()
    synchronize(device)
    return _now() - start


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


def ratio_range(ours_s: list[float], ref_s: list[float]) -> list[float]:
    """Lowest and highest per-round speed ratio (ref time / ours time of the same interleaved round)."""
    per_round = [r / o for o, r in zip(ours_s, ref_s, strict=False)]
    return [_round(min(per_round)), _round(max(per_round))]


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
    """One row of ``latest.json``: ``ratio`` is ours/ref throughput (``ratio_range``: its per-round
    extremes), ``against`` what ref is (``REFERENCE`` unless given) and ``threads`` torch's CPU threads;
    ``fraction_of_peak`` is the FLOP rate ours achieved over this machine's measured matmul peak (``None``
    where it does not apply)."""
    ours, ref = rates(ours_s, items), rates(ref_s, items)
    against = details.pop("against", REFERENCE) if ref_s else None
    achieved = flops_per_item * ours["per_s"] if flops_per_item else None
    return {
        "name": name,
        "ours_per_s": _round(ours["per_s"]),
        "ref_per_s": _round(ref["per_s"]),
        "ratio": _round(ours["per_s"] / ref["per_s"]) if ref["per_s"] else None,
        "ours_peak_mb": _mb(ours_peak),
        "ref_peak_mb": _mb(ref_peak),
        "fraction_of_peak": _round(achieved / peak_flops) if achieved and peak_flops else None,
        "ratio_range": ratio_range(ours_s, ref_s) if ref_s else None,
        "ours_per_s_range": [_round(ours["per_s_min"]), _round(ours["per_s_max"])],
        "ref_per_s_range": [_round(ref["per_s_min"]), _round(ref["per_s_max"])] if ref_s else None,
        "repeats": len(ours_s),
        "clock": clock_name(),
        "threads": torch.get_num_threads(),
        "against": against,
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


def _ratio_cell(row: dict) -> str:
    if row["ratio"] is None:
        return "n/a"
    spread = row.get("ratio_range")
    return f"{row['ratio']:.2f}x" + (f" ({spread[0]:.2f}-{spread[1]:.2f})" if spread else "")


def _ref_peak_cell(row: dict) -> str:
    """The measured peak, or the estimate where the reference was not run, marked as such."""
    if row["ref_peak_mb"] is None and row.get("ref_peak_mb_estimate") is not None:
        return f"~{row['ref_peak_mb_estimate']:.0f} (estimate, not run)"
    return _cell(row["ref_peak_mb"], ".1f")


def _parity_cell(row: dict) -> str:
    diff = row.get("max_abs_logit_diff_vs_ref", row.get("max_abs_prob_diff_vs_ref"))
    return "n/a" if diff is None else f"{diff:.1e}"


def markdown_table(rows: list[dict]) -> str:
    """One line per row; "n/a" where a value does not apply or was not measured.

    ``ours/ref`` compares the two at the row's numerics (``numerics``: precision and layout, the same on both
    sides), with its per-round range; ``bf16 gain`` is ours in bf16 over ours in float32, measured in the
    same interleaved rounds; ``parity`` is the max abs logit difference checked before timing; ``threads``
    is torch's CPU threads and ``ref is`` what ours was timed against (the re-implemented reference or the
    official code).
    """
    lines = [
        "| name | numerics (both) | ours/s | ref/s | ours/ref (range) | bf16 gain | parity | ours peak MB "
        "| ref peak MB | fraction of peak | rounds | threads | ref is |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        cells = [
            r["name"],
            r.get("numerics", "fp32"),
            _cell(r["ours_per_s"]),
            _cell(r["ref_per_s"]),
            _ratio_cell(r),
            _cell(r.get("precision_gain"), ".2f", "x"),
            _parity_cell(r),
            _cell(r["ours_peak_mb"], ".1f"),
            _ref_peak_cell(r),
            _cell(r["fraction_of_peak"], ".1%"),
            str(r["repeats"]),
            str(r.get("threads", "n/a")),
            r.get("against") or "n/a",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(path: Path, benchmark: str, machine: dict, rows: list[dict], **extra: object) -> Path:
    """``{"benchmark", "machine", "rows", "command", ...}`` as JSON (atomically); ``command`` defaults to
    this process's command line, so every result file says how it was made."""
    extra.setdefault("command", "python " + " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]))
    written = write_json(path, {"benchmark": benchmark, "machine": machine, "rows": rows, **extra})
    print(f"wrote {path}")
    return written


def print_rows(rows: list[dict]) -> None:
    """The Markdown lines of rows just measured, without the header: a long script's progress."""
    print(markdown_table(rows).split("\n", 2)[2], flush=True)


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
    p.add_argument(
        "--clock",
        choices=CLOCKS,
        default="auto",
        help="what times a call: this process's CPU time (cpu; only with one CPU thread), wall time, or "
        "auto (cpu on a CPU with --threads 1, else wall)",
    )
    return p


def setup(args: argparse.Namespace) -> torch.device:
    """Apply ``--threads`` and ``--clock``; return the device the benchmark runs on (CUDA when present)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = default_device()
    use_clock(getattr(args, "clock", "auto"), device)
    return device


# ------------------------------------------------------------------------------------------------ models


@dataclass(frozen=True)
class Variant:
    """Numerics and switches a row runs at, on both sides: precision, channels-last, torch.compile."""

    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False

    @property
    def name(self) -> str:
        return self.precision + ("_cl" if self.channels_last else "") + ("_compiled" if self.compile else "")

    @property
    def numerics(self) -> str:
        """How the row is described in tables: what both implementations ran with."""
        parts = [self.precision if self.precision == "fp32" else f"{self.precision} autocast"]
        parts += ["channels-last"] if self.channels_last else []
        parts += ["compiled"] if self.compile else []
        return " + ".join(parts)


VARIANTS = {v.name: v for v in (Variant(), Variant("fp32", True), Variant("bf16", True))}
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
    """A copy of ``model`` as ``ctran.load`` runs it at ``variant``: ``optimize_for_inference`` (fusion
    included) with the variant's precision and switches."""
    return optimize_for_inference(
        copy.deepcopy(model), variant.channels_last, variant.compile, variant.precision
    ).eval()


def reference_prepared(ref: nn.Module, variant: Variant) -> nn.Module:
    """The reference with the same layout and compilation switches (its precision is the autocast of
    ``forward``): ``ref`` itself when there are none."""
    if not (variant.channels_last or variant.compile):
        return ref
    ref = copy.deepcopy(ref)
    if variant.channels_last:
        ref.to(memory_format=torch.channels_last)
    if variant.compile:
        ref.compile()
    return ref


def mixed_states(batch: int, labels: int, seed: int = 1, device: torch.device | str = "cpu") -> torch.Tensor:
    """(B, L) states drawn uniformly from unknown/negative/positive, so parity covers the state
    embeddings; every state occurs (L >= 3)."""
    generator = torch.Generator().manual_seed(seed)
    states = torch.randint(-1, 2, (batch, labels), generator=generator)
    if labels >= 3:
        states[0, :3] = torch.tensor([-1, 0, 1])
    return states.to(device)


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
