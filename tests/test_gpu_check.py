"""``make gpu-check`` (``benchmarks/gpu_check.py``): its CPU-side logic, tested without a GPU.

The measurements themselves need CUDA; what is tested here is everything around them: it refuses clearly
without a GPU and writes nothing, its plan covers every measurement it promises, the time budget skips
what does not fit (scaling estimates on a slow machine), failures are recorded without stopping the run,
the report renders every outcome, the distributed run's commands, and the ours-vs-reference pairing and
timing code on a tiny CPU model.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import gpu_check  # noqa: E402
from common import make_model  # noqa: E402
from reference import reference_from  # noqa: E402


def test_without_a_gpu_it_fails_clearly_and_writes_nothing(monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "gpu.json"
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.main(["--out", str(out)])
    assert exit_info.value.code == gpu_check.NO_GPU_EXIT != 0
    message = capsys.readouterr().err
    assert "needs a CUDA GPU" in message and "Nothing was measured" in message
    assert not out.exists() and not out.with_suffix(".md").exists()


def test_plan_covers_every_promised_measurement_and_prints_without_a_gpu(monkeypatch, capsys) -> None:
    plan = gpu_check.build_plan()
    names = {item.name for item in plan}
    assert {f"parity_576_L80_b2_{p}" for p in ("fp32", "tf32", "bf16", "fp16")} <= names
    for labels in (80, 1000):
        for batch in (1, 32):
            assert {f"infer_576_L{labels}_b{batch}_fp32", f"infer_576_L{labels}_b{batch}_bf16"} <= names
    assert "infer_576_L80_b32_bf16_compiled" in names  # torch.compile on as well as off
    assert {f"train_{s}_b16_{p}" for s in (576, 448) for p in ("fp32", "tf32", "bf16", "fp16")} <= names
    assert "labels_10000_b32_bf16" in names and "digits_tiny_torchrun_nccl_vs_cpu" in names
    assert plan[0].section == "environment" and plan[-1].options.get("compile")  # the long item last
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--plan"]) == 0
    assert "28 items" in capsys.readouterr().out


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_budget_skips_what_does_not_fit_and_records_failures() -> None:
    clock = FakeClock()
    deadline = gpu_check.Deadline(100.0, clock)
    plan = [
        gpu_check.Item("a", "fast", 10, {"takes": 10}),
        gpu_check.Item("a", "slow", 10, {"takes": 40}),  # 4x its estimate: later estimates are scaled
        gpu_check.Item("a", "scaled", 15, {"takes": 1}),  # needs 15 s x 50/20 = 37.5 s of the 50 s left
        gpu_check.Item("b", "oom", 1, {"raise": torch.cuda.OutOfMemoryError("CUDA out of memory. Tried")}),
        gpu_check.Item("b", "broken", 1, {"raise": ValueError("bad")}),
        gpu_check.Item("c", "parity", 1, {"parity_ok": False}),
        gpu_check.Item("c", "too_long", 40, {"takes": 1}),  # 40 s would fit the 49 s left; 40 x 51/38 not
    ]

    def runner(item: gpu_check.Item) -> dict:
        clock.now += item.options.get("takes", 0)
        if "raise" in item.options:
            raise item.options["raise"]
        return {"parity_ok": item.options.get("parity_ok", True)}

    results = gpu_check.run_plan(plan, {"a": runner, "b": runner, "c": runner}, deadline)
    status = {r["name"]: r["status"] for r in results}
    assert status == {
        "fast": "ok",
        "slow": "ok",
        "scaled": "ok",
        "oom": "out of memory",
        "broken": "error",
        "parity": "parity failed",
        "too_long": "skipped",
    }
    skipped = results[-1]["reason"]
    assert skipped == "time budget: 49 s left, needs about 54 s"
    assert "ValueError: bad" in results[4]["reason"]
    assert gpu_check.exit_status(results) == 1
    assert gpu_check.exit_status(results[:3]) == 0


def test_report_renders_every_section_and_outcome() -> None:
    results = [
        {
            "section": "environment",
            "name": "env",
            "status": "ok",
            "gpu": "NVIDIA H200",
            "bf16_matmul_tflops": 700.0,
        },
        {
            "section": "parity",
            "name": "p",
            "status": "ok",
            "precision": "bf16",
            "max_abs_logit_diff_vs_ref": 0.02,
        },
        {
            "section": "inference",
            "name": "infer_576_L80_b32_bf16",
            "status": "ok",
            "ratio": 1.4,
            "ratio_range": [1.3, 1.5],
            "ours_per_s": 900.0,
        },
        {"section": "training", "name": "t", "status": "skipped", "reason": "time budget: 3 s left"},
        {"section": "label_scaling", "name": "l", "status": "ok", "ref": "out of memory: CUDA"},
        {
            "section": "distributed",
            "name": "d",
            "status": "ok",
            "torchrun_nccl_cuda": {"mAP": 61.2, "seconds": 30.0},
            "cpu": {"mAP": 61.0, "seconds": 50.0},
            "map_difference": 0.2,
        },
    ]
    text = gpu_check.markdown(results, {"gpu": "NVIDIA H200", "torch": "2.14"})
    for section in gpu_check.COLUMNS:
        assert f"**{section}**" in text
    assert "1.40x (1.30-1.50)" in text and "900" in text
    assert "skipped: time budget: 3 s left" in text
    assert "out of memory: CUDA" in text and "mAP 61.2 (30.0 s)" in text


def test_distributed_commands_and_reading_the_map(tmp_path) -> None:
    command, metrics = gpu_check.torchrun_command(tmp_path / "cuda", "cuda")
    joined = " ".join(command)
    assert "torch.distributed.run" in joined and "--nproc_per_node=1" in joined
    assert "-m ctran train --config digits-tiny" in joined and "--device cuda" in joined
    cpu, _ = gpu_check.train_command(tmp_path / "cpu", "cpu")
    assert "torch.distributed.run" not in " ".join(cpu) and "--device cpu" in " ".join(cpu)
    metrics.parent.mkdir(parents=True)
    metrics.write_text(json.dumps({"mAP": 61.23456, "CF1": 50.0}))
    assert gpu_check.read_map(metrics) == 61.235
    metrics.write_text(json.dumps({"CF1": 50.0}))
    with pytest.raises(KeyError, match="no mAP"):
        gpu_check.read_map(metrics)


def test_tf32_switch_is_restored() -> None:
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    with gpu_check.tf32(not before[0]):
        assert torch.backends.cuda.matmul.allow_tf32 is (not before[0])
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before


def test_pairing_and_timing_run_on_a_tiny_cpu_model() -> None:
    model = make_model(5, backbone="small_cnn", dim=128).eval()  # D = channels: no projection
    models = (model, reference_from(model))
    calls, fp32_ref = gpu_check.pair(models, 2, 48, "fp32", torch.device("cpu"))
    torch.testing.assert_close(calls["ours"](), fp32_ref(), atol=1e-4, rtol=0)
    result = gpu_check.timed(calls, 2, torch.device("cpu"), repeats=2)
    assert result["repeats"] == 2 and result["ratio"] == pytest.approx(
        result["ours_per_s"] / result["ref_per_s"], rel=0.01
    )
    assert result["ratio_range"][0] <= result["ratio_range"][1]
