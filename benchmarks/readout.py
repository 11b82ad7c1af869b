"""Benchmark the per-label readout against the official C-Tran diagonal formulation.

Both compute ``logit_l = <w_l, h_l> + b_l``. Ours (``PerLabelLinear``) computes only those L dot products,
O(L * D). The official code applies ``Linear(D, L)`` to all L tokens, masks the (B, L, L) result with
``eye(L)`` and sums the last dim, O(L^2 * D) time and memory. This script checks that they agree on the same
weights, measures the peak memory of one forward pass of each, then times them interleaved.

Run: ``.venv/bin/python benchmarks/readout.py`` (see ``--help``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from ctran.model.readout import PerLabelLinear

Readout = Callable[[torch.Tensor], torch.Tensor]
MIN_TIMED_REPEATS = 3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; the defaults finish in a few minutes on a 2-core CPU."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--labels", default="80,1000,10000", help="comma-separated label counts L")
    p.add_argument("--dim", type=int, default=2048, help="token width D")
    p.add_argument("--batch", type=int, default=8, help="batch size B")
    p.add_argument("--repeats", type=int, default=7, help="timed calls per implementation (at most)")
    p.add_argument(
        "--budget-s",
        type=float,
        default=60.0,
        help=f"time budget per L for the timed calls; lowers --repeats, not below {MIN_TIMED_REPEATS}",
    )
    p.add_argument(
        "--ref-max-gib",
        type=float,
        default=6.0,
        help="skip the reference when its (B, L, L) product is larger",
    )
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/readout.json"), help="JSON output")
    return p.parse_args(argv)


def reference_readout(weight: torch.Tensor, bias: torch.Tensor) -> Readout:
    """The official formulation: every label's classifier on every token, then keep the diagonal."""
    num_labels = weight.shape[0]

    def forward(h: torch.Tensor) -> torch.Tensor:
        all_pairs = nn.functional.linear(h, weight, bias)  # (B, L, L)
        return (all_pairs * torch.eye(num_labels, device=h.device, dtype=h.dtype)).sum(-1)

    return forward


def _cpu_peak_from_profiler(prof: profile) -> int:
    """Peak bytes held by torch's CPU allocator during the profiled region, above its starting level.

    The trace holds one ``[memory]`` event per allocation and free with the allocator's running total, so
    temporaries allocated and freed inside a single op count too (per-op ``self_cpu_memory_usage`` nets them
    out, and RSS only moves in steps of hundreds of KiB). Memory that libraries such as MKL allocate on their
    own is not seen.
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


def run_with_peak(fn: Readout, h: torch.Tensor) -> tuple[torch.Tensor, int]:
    """One forward pass, and the memory it needed above what was already held, in bytes."""
    if h.is_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        out = fn(h)
        torch.cuda.synchronize()
        return out, torch.cuda.max_memory_allocated() - before
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn(h)
    return out, _cpu_peak_from_profiler(prof)


def time_call(fn: Readout, h: torch.Tensor) -> float:
    """Wall time of one forward pass in seconds, waiting for the GPU where there is one."""
    if h.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn(h)
    if h.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def time_interleaved(fns: dict[str, Readout], h: torch.Tensor, repeats: int) -> dict[str, list[float]]:
    """Alternate the implementations (ABBA...) so drift in clock speed or load hits both alike."""
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(repeats):
        for name in names if i % 2 == 0 else reversed(names):
            times[name].append(time_call(fns[name], h))
    return times


def check_same_logits(labels: int, ours_out: torch.Tensor, ref_out: torch.Tensor) -> float:
    """Refuse to time implementations that disagree; returns the max abs difference."""
    diff = (ours_out - ref_out).abs().max().item()
    if not torch.allclose(ours_out, ref_out, atol=1e-4, rtol=1e-4):
        raise SystemExit(f"L={labels}: readouts disagree (max abs diff {diff:.2e})")
    return diff


def warm_up(args: argparse.Namespace, device: torch.device) -> None:
    """Run both readouts once on a tiny input, so one-off library set-up is neither timed nor measured."""
    ours = PerLabelLinear(2, args.dim).to(device)
    with torch.inference_mode():
        h = torch.randn(args.batch, 2, args.dim, device=device)
        ours(h)
        reference_readout(ours.weight, ours.bias)(h)


def bench_labels(labels: int, args: argparse.Namespace, device: torch.device) -> dict:
    """Check, measure and time both readouts for one label count; returns one JSON row."""
    torch.manual_seed(0)
    ours = PerLabelLinear(labels, args.dim).to(device).eval()
    ref = reference_readout(ours.weight.detach(), ours.bias.detach())
    h = torch.randn(args.batch, labels, args.dim, device=device, dtype=torch.float32)
    row: dict = {"name": f"readout_L{labels}", "labels": labels, "dim": args.dim, "batch": args.batch}
    fns: dict[str, Readout] = {"ours": ours}
    peaks: dict[str, int] = {}
    product_bytes = args.batch * labels * labels * 4

    with torch.inference_mode():
        start = time.perf_counter()
        ours_out, peaks["ours"] = run_with_peak(ours, h)
        if product_bytes > args.ref_max_gib * 2**30:
            row["ref_failed"] = f"(B, L, L) product needs {product_bytes / 2**30:.1f} GiB > --ref-max-gib"
        else:
            try:
                ref_out, peaks["ref"] = run_with_peak(ref, h)
            except (RuntimeError, MemoryError) as err:
                row["ref_failed"] = f"{type(err).__name__}: {err}"[:300]
            else:
                row["max_abs_diff"] = check_same_logits(labels, ours_out, ref_out)
                fns["ref"] = ref
                del ref_out
        first_round_s = time.perf_counter() - start
        del ours_out
        if device.type == "cuda":
            torch.cuda.empty_cache()
        repeats = min(args.repeats, max(MIN_TIMED_REPEATS, int(args.budget_s / first_round_s)))
        times = time_interleaved(fns, h, repeats)

    row["repeats"] = repeats
    for name in ("ours", "ref"):
        samples = times.get(name)
        row[f"{name}_ms"] = statistics.median(samples) * 1e3 if samples else None
        row[f"{name}_min_ms"] = min(samples) * 1e3 if samples else None
        row[f"{name}_max_ms"] = max(samples) * 1e3 if samples else None
        row[f"{name}_peak_mb"] = peaks[name] / 1e6 if name in peaks else None
    row["ratio"] = row["ref_ms"] / row["ours_ms"] if row["ref_ms"] is not None else None
    has_both = "ref" in peaks and peaks["ours"] > 0
    row["memory_ratio"] = peaks["ref"] / peaks["ours"] if has_both else None
    return row


def machine_info(device: torch.device) -> dict:
    """What the numbers were measured on, so they are compared only with like."""
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "n/a" if value is None else format(value, spec) + suffix


def markdown_table(rows: list[dict]) -> str:
    """One line per L; "n/a" where the reference was not run."""
    lines = [
        "| L | ours ms | ref ms | ratio | ours peak MB | ref peak MB | memory ratio |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        cells = [
            str(r["labels"]),
            _fmt(r["ours_ms"], ".3f"),
            _fmt(r["ref_ms"], ".1f"),
            _fmt(r["ratio"], ".0f", "x"),
            _fmt(r["ours_peak_mb"], ".3f"),
            _fmt(r["ref_peak_mb"], ".1f"),
            _fmt(r["memory_ratio"], ".0f", "x"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    warm_up(args, device)
    rows = []
    for labels in (int(x) for x in args.labels.split(",")):
        rows.append(bench_labels(labels, args, device))
        print(f"L={labels}: done, {rows[-1]['repeats']} timed calls each", flush=True)
    print(markdown_table(rows))
    for r in rows:
        if "ref_failed" in r:
            print(f"L={r['labels']}: reference not run: {r['ref_failed']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"benchmark": "readout", "machine": machine_info(device), "rows": rows}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
