"""``make gpu-check``: what the package does on a CUDA GPU, measured in one run of under 8 minutes.

It stops at once, with exit status 2 and a message saying so, when no CUDA GPU is visible; nothing is
written then. On a GPU it runs, in this order and within ``--budget`` seconds (default 420; every item has
an estimate, and an item that would not fit in what is left is recorded as skipped, never run half):

1. **environment**: GPU name, memory, torch/CUDA versions, and the GPU's bf16 matmul rate measured here
   (the "peak" for the training rows' fraction of peak).
2. **parity** of ours vs the reference on CUDA, ResNet-101 at 576, L = 80, batch 2, mixed unknown/negative/
   positive states: float32 (TF32 off), TF32, bf16 and fp16 autocast, each within the tolerance of
   ``TOLERANCES`` (ours vs the reference at the same precision; the difference from the float32 reference is
   reported too).
3. **inference** images/s and peak memory, ours (as ``ctran.load`` runs it) vs the reference at the same
   precision and layout (fp32 and bf16 + channels-last; TF32 too at batch 32), 576 x 576, L = 80 and
   1000, batch 1 and 32, ``torch.compile`` off; and, last of all, with ``torch.compile`` of both at
   L = 80, batch 32, bf16.
4. **training** images/s of one step (LMT states, forward, backward, AdamW) at 576 and 448, batch 16:
   fp32, TF32, bf16 autocast, fp16 autocast with loss scaling; ours vs the reference at the same precision;
   the fraction of the measured bf16 matmul rate that ours achieves (FLOPs counted by
   ``torch.utils.flop_counter``).
5. **label scaling**: ours and the reference at L = 80, 1000 and 10,000, batch 32, bf16 (time and peak
   memory; a reference that runs out of memory is recorded as such).
6. **distributed**: a digits-tiny training run under ``torchrun --nproc_per_node=1`` (NCCL, on the GPU) and
   the same run on the CPU, with the test mAP each reaches.

Estimates are scaled by how much slower than estimated the items so far ran, so a slow machine skips the
last items rather than overrunning. It writes ``benchmarks/results/gpu.json`` (every measurement, the
plan, what was skipped and why) and ``benchmarks/results/gpu.md`` (the Markdown tables for
``BENCHMARKS.md``). The exit status is 0 when every item ran and passed its parity check, 1 otherwise.
``--plan`` prints the plan and its time estimates without running anything (no GPU needed).

Run: ``make gpu-check`` or ``.venv/bin/python benchmarks/gpu_check.py`` (see ``--help``).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from common import (
    RESULTS,
    Variant,
    forward,
    machine_info,
    make_model,
    mixed_states,
    prepared,
    reference_prepared,
    run_with_peak,
    time_interleaved,
    use_clock,
)
from ctran.report import write_json
from peak import count_flops, matmul_peak
from reference import reference_from
from training import train_step

ROOT = Path(__file__).resolve().parent.parent
NO_GPU_EXIT = 2
# max abs logit difference allowed between ours and the reference at the same precision on CUDA. float32 is
# looser than on CPU (1e-4): cuDNN picks different algorithms for the two models' layouts.
TOLERANCES = {"fp32": 1e-3, "tf32": 0.05, "bf16": 0.1, "fp16": 0.05}
# How each precision runs: the autocast precision, channels-last, and whether TF32 matmuls are allowed.
PRECISIONS = {
    "fp32": ("fp32", False, False),
    "tf32": ("fp32", False, True),
    "bf16": ("bf16", True, False),
    "fp16": ("fp16", True, False),
}


# ------------------------------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class Item:
    """One measurement: its section, its name, what it needs (seconds, estimated on an H100-class GPU)."""

    section: str
    name: str
    estimate_s: float
    options: dict = field(default_factory=dict)


def build_plan() -> list[Item]:
    """Every item the check runs, in order (the long torch.compile item last)."""
    plan = [Item("environment", "gpu_and_bf16_matmul_peak", 10)]
    plan += [Item("parity", f"parity_576_L80_b2_{p}", 8, {"precision": p}) for p in PRECISIONS]
    for labels in (80, 1000):
        for batch in (1, 32):
            for p in ("fp32", "tf32", "bf16") if batch > 1 else ("fp32", "bf16"):
                options = {"labels": labels, "batch": batch, "precision": p}
                plan.append(Item("inference", f"infer_576_L{labels}_b{batch}_{p}", 8, options))
    for size in (576, 448):
        for p in PRECISIONS:
            options = {"size": size, "batch": 16, "precision": p}
            plan.append(Item("training", f"train_{size}_b16_{p}", 15, options))
    for labels in (80, 1000, 10000):
        plan.append(Item("label_scaling", f"labels_{labels}_b32_bf16", 15, {"labels": labels, "batch": 32}))
    plan.append(Item("distributed", "digits_tiny_torchrun_nccl_vs_cpu", 90))
    compiled = {"labels": 80, "batch": 32, "precision": "bf16", "compile": True}
    plan.append(Item("inference", "infer_576_L80_b32_bf16_compiled", 150, compiled))
    return plan


class Deadline:
    """Seconds left of the budget; ``fits(estimate)`` says whether an item may start.

    ``record(estimate, actual)`` after each item keeps the ratio of actual to estimated time; estimates
    are scaled by it (never below 1), so a machine slower than the estimates skips the last items.
    """

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock, self.end = clock, clock() + seconds
        self.estimated = self.actual = 0.0

    def left(self) -> float:
        return self.end - self.clock()

    def scale(self) -> float:
        return max(1.0, self.actual / self.estimated) if self.estimated else 1.0

    def needs(self, estimate_s: float) -> float:
        return estimate_s * self.scale()

    def fits(self, estimate_s: float) -> bool:
        return self.left() >= self.needs(estimate_s)

    def record(self, estimate_s: float, actual_s: float) -> None:
        self.estimated += estimate_s
        self.actual += actual_s


def run_plan(plan: list[Item], runners: dict[str, Callable[[Item], dict]], deadline: Deadline) -> list[dict]:
    """Run each item that fits the deadline; record ok / skipped / out of memory / error for each.

    One failing item does not stop the others: its error is recorded and the exit status says so.
    """
    results = []
    for item in plan:
        record = {"section": item.section, "name": item.name, "estimate_s": item.estimate_s}
        if not deadline.fits(item.estimate_s):
            left, needs = max(deadline.left(), 0.0), deadline.needs(item.estimate_s)
            record |= {
                "status": "skipped",
                "reason": f"time budget: {left:.0f} s left, needs about {needs:.0f} s",
            }
            results.append(record)
            continue
        start = deadline.clock()
        try:
            record |= {"status": "ok", **runners[item.section](item)}
        except torch.cuda.OutOfMemoryError as err:
            record |= {"status": "out of memory", "reason": str(err).splitlines()[0]}
        except Exception as err:  # recorded, so one failure does not hide the other measurements
            record |= {
                "status": "error",
                "reason": f"{type(err).__name__}: {err}",
                "traceback": traceback.format_exc(),
            }
        record["seconds"] = round(deadline.clock() - start, 1)
        deadline.record(item.estimate_s, deadline.clock() - start)
        if record.get("parity_ok") is False:
            record["status"] = "parity failed"
        results.append(record)
        print(f"[{record['status']}] {item.section} {item.name} ({record['seconds']} s)", flush=True)
    return results


def exit_status(results: list[dict]) -> int:
    """0 when every item ran and passed its parity check, else 1."""
    return 0 if all(r["status"] == "ok" for r in results) else 1


# ------------------------------------------------------------------------------------------- the GPU


def require_gpu() -> None:
    """Exit with ``NO_GPU_EXIT`` and a clear message unless a CUDA GPU is usable."""
    if torch.cuda.is_available():
        return
    built = torch.version.cuda or "none (a CPU-only build)"
    print(
        "gpu-check needs a CUDA GPU, and none is visible: torch.cuda.is_available() is False "
        f"(torch {torch.__version__}, built for CUDA {built}; CUDA_VISIBLE_DEVICES="
        f"{os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}). Nothing was measured and no result was "
        "written. Run it on a machine with an NVIDIA GPU and a CUDA build of torch.",
        file=sys.stderr,
    )
    raise SystemExit(NO_GPU_EXIT)


@contextlib.contextmanager
def tf32(allowed: bool) -> Iterator[None]:
    """TF32 matmuls and convolutions on or off for the duration (both back as they were after)."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def under_tf32(call: Callable[[], object], allowed: bool) -> Callable[[], object]:
    def wrapped() -> object:
        with tf32(allowed):
            return call()

    return wrapped


def variant(precision: str, compile: bool = False) -> tuple[Variant, bool]:
    autocast_precision, channels_last, allow_tf32 = PRECISIONS[precision]
    return Variant(autocast_precision, channels_last, compile), allow_tf32


def pair(models: tuple, batch: int, size: int, precision: str, device: torch.device, compile: bool = False):
    """Ours and the reference as calls at ``precision``, on the same weights, images and mixed states."""
    v, allow_tf32 = variant(precision, compile)
    model, ref = models
    labels = model.num_labels
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)
    states = mixed_states(batch, labels, device=device)
    calls = {
        "ours": under_tf32(forward(prepared(model, v), images, states, v.precision), allow_tf32),
        "ref": under_tf32(forward(reference_prepared(ref, v), images, states, v.precision), allow_tf32),
    }
    fp32_ref = under_tf32(forward(ref, images, states), False)
    return calls, fp32_ref


def timed(calls: dict[str, Callable[[], object]], items: int, device: torch.device, repeats: int) -> dict:
    """Peak memory of a first call of each, then ``repeats`` interleaved rounds: rates, ratio, peaks."""
    memory = {key: run_with_peak(call, device)[1] for key, call in calls.items()}
    for call in calls.values():
        call()  # warm-up (cuDNN autotuning, caches)
    times = time_interleaved(calls, repeats, device)
    rate = {key: items * len(t) / sum(t) for key, t in times.items()}
    return {
        "ours_per_s": round(rate["ours"], 2),
        "ref_per_s": round(rate["ref"], 2),
        "ratio": round(rate["ours"] / rate["ref"], 3),
        "ratio_range": [
            round(min(r / o for o, r in zip(times["ours"], times["ref"], strict=True)), 3),
            round(max(r / o for o, r in zip(times["ours"], times["ref"], strict=True)), 3),
        ],
        "ours_peak_mb": round(memory["ours"] / 1e6, 1),
        "ref_peak_mb": round(memory["ref"] / 1e6, 1),
        "repeats": repeats,
    }


class Runners:
    """The measurement of each section, on ``device``; ``bf16_peak`` is set by the environment item."""

    def __init__(self, device: torch.device, work: Path) -> None:
        self.device, self.work = device, work
        self.bf16_peak: float | None = None
        self._models: dict[int, tuple] = {}

    def models(self, labels: int) -> tuple:
        """Our C-Tran (random weights) and the reference with the same weights, on the GPU; the last two
        label counts asked for are kept."""
        if labels not in self._models:
            if len(self._models) >= 2:
                self._models.pop(next(iter(self._models)))
            model = make_model(labels).to(self.device)
            self._models[labels] = (model, reference_from(model))
        return self._models[labels]

    def table(self) -> dict[str, Callable[[Item], dict]]:
        return {
            "environment": self.environment,
            "parity": self.parity,
            "inference": self.inference,
            "training": self.training,
            "label_scaling": self.label_scaling,
            "distributed": self.distributed,
        }

    def environment(self, item: Item) -> dict:
        props = torch.cuda.get_device_properties(self.device)
        self.bf16_peak = matmul_peak("bf16", self.device, sizes=(4096, 8192))
        return {
            "gpu": props.name,
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "capability": f"{props.major}.{props.minor}",
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "bf16_matmul_tflops": round(self.bf16_peak / 1e12, 1),
        }

    def parity(self, item: Item) -> dict:
        precision = item.options["precision"]
        calls, fp32_ref = pair(self.models(80), 2, 576, precision, self.device)
        with torch.no_grad():
            ours, ref, exact = (c().float() for c in (calls["ours"], calls["ref"], fp32_ref))
        diff = (ours - ref).abs().max().item()
        return {
            "precision": precision,
            "max_abs_logit_diff_vs_ref": diff,
            "max_abs_logit_diff_vs_fp32_ref": (ours - exact).abs().max().item(),
            "ref_vs_fp32_ref": (ref - exact).abs().max().item(),
            "tolerance": TOLERANCES[precision],
            "parity_ok": diff <= TOLERANCES[precision],
        }

    def inference(self, item: Item) -> dict:
        o = item.options
        models = self.models(o["labels"])
        calls, _ = pair(models, o["batch"], 576, o["precision"], self.device, o.get("compile", False))
        repeats = 10 if o["batch"] > 1 else 20
        return {**o, **timed(calls, o["batch"], self.device, repeats)}

    def training(self, item: Item) -> dict:
        o = item.options
        v, allow_tf32 = variant(o["precision"])
        model, ref = (copy.deepcopy(m) for m in self.models(80))
        if v.channels_last:
            model.to(memory_format=torch.channels_last)
        ref = reference_prepared(ref, v)
        generator = torch.Generator().manual_seed(1)
        images = torch.randn(o["batch"], 3, o["size"], o["size"], generator=generator).to(self.device)
        truth = torch.randint(0, 2, (o["batch"], 80), generator=generator).to(self.device)
        calls = {
            "ours": under_tf32(train_step(copy.deepcopy(model), images, truth, v.precision), allow_tf32),
            "ref": under_tf32(train_step(ref, images, truth, v.precision), allow_tf32),
        }
        for call in calls.values():
            call()  # creates the optimiser state
        result = {**o, **timed(calls, o["batch"], self.device, repeats=5)}
        flops = count_flops(
            under_tf32(train_step(copy.deepcopy(model), images, truth, v.precision), allow_tf32)
        )
        result["gflops_per_image"] = round(flops / o["batch"] / 1e9, 1)
        if self.bf16_peak:
            result["fraction_of_bf16_peak"] = round(
                flops / o["batch"] * result["ours_per_s"] / self.bf16_peak, 4
            )
        return result

    def label_scaling(self, item: Item) -> dict:
        o = item.options
        calls, _ = pair(self.models(o["labels"]), o["batch"], 576, "bf16", self.device)
        result = {**o, "precision": "bf16"}
        _, ours_peak = run_with_peak(calls["ours"], self.device)
        result["ours_peak_mb"] = round(ours_peak / 1e6, 1)
        result["ours_s_per_batch"] = round(
            min(time_interleaved({"ours": calls["ours"]}, 3, self.device)["ours"]), 4
        )
        try:
            _, ref_peak = run_with_peak(calls["ref"], self.device)
        except torch.cuda.OutOfMemoryError as err:
            result["ref"] = f"out of memory: {str(err).splitlines()[0]}"
            torch.cuda.empty_cache()
            return result
        result["ref_peak_mb"] = round(ref_peak / 1e6, 1)
        result["ref_s_per_batch"] = round(
            min(time_interleaved({"ref": calls["ref"]}, 3, self.device)["ref"]), 4
        )
        return result

    def distributed(self, item: Item) -> dict:
        runs = {
            "torchrun_nccl_cuda": torchrun_command(self.work / "cuda", "cuda"),
            "cpu": train_command(self.work / "cpu", "cpu"),
        }
        result: dict = {}
        for name, (command, metrics_path) in runs.items():
            start = time.monotonic()
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=child_env())
            if done.returncode != 0:
                raise RuntimeError(f"{name} run failed ({done.returncode}): {done.stderr[-2000:]}")
            result[name] = {"mAP": read_map(metrics_path), "seconds": round(time.monotonic() - start, 1)}
            result[name]["command"] = " ".join(command)
        result["map_difference"] = round(abs(result["torchrun_nccl_cuda"]["mAP"] - result["cpu"]["mAP"]), 3)
        return result


def train_command(out: Path, device: str) -> tuple[list[str], Path]:
    """``ctran train`` of the digits-tiny config on ``device``, and where its metrics land."""
    command = [sys.executable, "-m", "ctran", "train", "--config", "digits-tiny", "--out", str(out)]
    command += ["--device", device, "--quiet", "--json", str(out / "final.json")]
    return command, out / "final.json"


def torchrun_command(out: Path, device: str) -> tuple[list[str], Path]:
    """The same run under ``torchrun --standalone --nproc_per_node=1`` (NCCL when ``device`` is cuda)."""
    command, metrics = train_command(out, device)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
    return launcher + command[1:], metrics


def child_env() -> dict[str, str]:
    """This environment, with the package importable from this checkout."""
    env = dict(os.environ)
    src = str(ROOT / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def read_map(path: Path) -> float:
    """The test mAP (regular inference) from a run's final metrics JSON."""
    metrics = json.loads(path.read_text())
    if "mAP" not in metrics:
        raise KeyError(f"{path} has no mAP (keys: {sorted(metrics)[:10]})")
    return round(float(metrics["mAP"]), 3)


# ------------------------------------------------------------------------------------------------ output


def _fmt(value: object) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


COLUMNS = {
    "environment": ["gpu", "gpu_memory_gib", "capability", "torch", "cuda", "bf16_matmul_tflops"],
    "parity": ["precision", "max_abs_logit_diff_vs_ref", "max_abs_logit_diff_vs_fp32_ref", "tolerance"],
    "inference": [
        "labels",
        "batch",
        "precision",
        "compile",
        "ours_per_s",
        "ref_per_s",
        "ratio",
        "ours_peak_mb",
        "ref_peak_mb",
    ],
    "training": [
        "size",
        "batch",
        "precision",
        "ours_per_s",
        "ref_per_s",
        "ratio",
        "fraction_of_bf16_peak",
        "ours_peak_mb",
        "ref_peak_mb",
    ],
    "label_scaling": [
        "labels",
        "batch",
        "ours_s_per_batch",
        "ref_s_per_batch",
        "ours_peak_mb",
        "ref_peak_mb",
        "ref",
    ],
    "distributed": ["torchrun_nccl_cuda", "cpu", "map_difference"],
}


def _cell(record: dict, column: str) -> str:
    value = record.get(column)
    if isinstance(value, dict) and "mAP" in value:
        return f"mAP {value['mAP']} ({value['seconds']} s)"
    if column == "ratio" and value is not None and record.get("ratio_range"):
        low, high = record["ratio_range"]
        return f"{value:.2f}x ({low:.2f}-{high:.2f})"
    return _fmt(value)


def markdown(results: list[dict], machine: dict) -> str:
    """One table per section; a skipped or failed item shows its status and reason."""
    lines = [f"GPU check on {machine.get('gpu', 'an unknown GPU')} (torch {machine.get('torch')})."]
    for section, columns in COLUMNS.items():
        records = [r for r in results if r["section"] == section]
        if not records:
            continue
        lines += ["", f"**{section}**", "", "| item | status | " + " | ".join(columns) + " |"]
        lines.append("|---|---|" + "---:|" * len(columns))
        for r in records:
            status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r.get('reason', '')}"
            lines.append(f"| {r['name']} | {status} | " + " | ".join(_cell(r, c) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def print_plan(plan: list[Item], budget: float) -> None:
    total = sum(item.estimate_s for item in plan)
    print(f"gpu-check plan: {len(plan)} items, about {total:.0f} s estimated, budget {budget:.0f} s")
    for item in plan:
        print(f"  {item.section:14s} {item.name:40s} ~{item.estimate_s:.0f} s")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--budget", type=float, default=400.0, help="seconds for all measurements (default 400: 8 min in all)"
    )
    p.add_argument("--out", type=Path, default=RESULTS / "gpu.json", help="JSON results (and .md beside)")
    p.add_argument("--plan", action="store_true", help="print the plan and exit (no GPU needed)")
    p.add_argument("--only", default=None, help="comma-separated sections to run (default: all)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = build_plan()
    if args.only:
        sections = {s.strip() for s in args.only.split(",")}
        plan = [item for item in plan if item.section in sections or item.section == "environment"]
    if args.plan:
        print_plan(plan, args.budget)
        return 0
    require_gpu()
    device = torch.device("cuda")
    use_clock("wall", device)
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        results = run_plan(plan, Runners(device, Path(tmp)).table(), Deadline(args.budget))
    machine = machine_info(device) | next((r for r in results if r["section"] == "environment"), {})
    report = {
        "benchmark": "gpu_check",
        "machine": machine,
        "seconds": round(time.monotonic() - start, 1),
        "budget_s": args.budget,
        "results": results,
        "ok": exit_status(results) == 0,
    }
    write_json(args.out, report)
    table = markdown(results, machine)
    args.out.with_suffix(".md").write_text(table)
    print(table)
    print(f"wrote {args.out} and {args.out.with_suffix('.md')} in {report['seconds']} s")
    return exit_status(results)


if __name__ == "__main__":
    sys.exit(main())
