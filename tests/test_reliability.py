"""Failure behaviour: non-finite steps, corrupt checkpoints, repeated kills, determinism."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ctran.checkpoint import read_checkpoint, save_checkpoint
from ctran.config import load_config
from ctran.data.base import LabeledImages, Sample
from ctran.data.digit_scenes import load_digit_scenes
from ctran.errors import CTranError
from ctran.model import build_from_config
from ctran.training.run import model_config
from ctran.training.trainer import Trainer

TINY = ["data.sizes={train: 96, val: 32, test: 32}", "train.batch_size=16", "train.precision=fp32"]


class PoisonedAfter(LabeledImages):
    """Digit scenes whose images turn to NaN after ``clean`` reads: a run that goes bad mid-way."""

    def __init__(self, base: LabeledImages, clean: int) -> None:
        self.base, self.clean, self.reads = base, clean, 0
        self.target_names, self.extra_names = base.target_names, base.extra_names

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> Sample:
        sample = self.base[index]
        self.reads += 1
        if self.reads > self.clean:
            sample = sample._replace(image=torch.full_like(sample.image, float("nan")))
        return sample


def test_non_finite_steps_are_skipped_then_training_stops_naming_causes(tmp_path: Path) -> None:
    config = load_config("digits-tiny", [*TINY, "train.epochs=3", "train.max_bad_steps=3"])
    train = load_digit_scenes("train", 0, 96)
    model = build_from_config(model_config(config, len(train.label_names)))
    meta = {"model_config": model_config(config, len(train.label_names)), "target_names": train.target_names}
    trainer = Trainer(
        model,
        PoisonedAfter(train, clean=96),
        load_digit_scenes("val", 0, 32),
        config,
        out_dir=tmp_path,
        checkpoint_meta=meta,
        progress=False,
    )
    with pytest.raises(CTranError) as stopped:
        trainer.fit()
    assert str(stopped.value) == (
        "training stopped at epoch 2: 3 consecutive steps had a non-finite loss or gradient. Likely causes: "
        "a learning rate too high (train.lr), fp16 overflow (train.precision=bf16 or fp32), or corrupt "
        f"inputs. The last good checkpoint is untouched ({tmp_path / 'last.pt'})"
    )
    assert trainer.bad_steps == trainer.skipped_steps == 3
    assert all(p.grad is None for p in trainer.model.parameters())  # the bad gradients were dropped
    state = read_checkpoint(tmp_path / "last.pt")  # epoch 1 was clean: its checkpoint is intact
    assert state["training_state"]["epoch"] == 1
    assert all(
        torch.isfinite(value).all() for value in state["state_dict"].values() if value.is_floating_point()
    )


def test_corrupt_checkpoint_is_named(tmp_path: Path) -> None:
    config = load_config("digits-tiny")
    options = model_config(config, 20)
    save_checkpoint(tmp_path / "good.pt", build_from_config(options), options, [f"l{i}" for i in range(20)])
    data = bytearray((tmp_path / "good.pt").read_bytes())
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CTranError, match="truncated.pt"):
        read_checkpoint(tmp_path / "truncated.pt")
    tensor_bytes = data.find(b"archive/data/0") + 200  # inside the first tensor's stored bytes
    data[tensor_bytes] ^= 0xFF
    (tmp_path / "flipped.pt").write_bytes(data)
    with pytest.raises(CTranError, match="flipped.pt"):
        read_checkpoint(tmp_path / "flipped.pt")


def _train(out: Path, overrides: list[str]) -> subprocess.Popen:
    """Resume the run in ``out`` if it has a checkpoint, else start it afresh."""
    command = [sys.executable, "-m", "ctran", "train", "--quiet"]
    if (out / "last.pt").exists():
        command += ["--resume", str(out)]
    else:
        shutil.rmtree(out, ignore_errors=True)  # killed before its first checkpoint: nothing to keep
        command += ["--config", "digits-tiny", "--out", str(out), *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_repeated_sigkill_at_random_points_then_resume(tmp_path: Path) -> None:
    """Kill the run at random moments (some during checkpoint writes) until it finishes; nothing breaks."""
    rng = random.Random(0)
    out = tmp_path / "run"
    overrides = [*TINY, "train.epochs=6", "data.sizes={train: 640, val: 32, test: 32}"]
    process, kills = _train(out, overrides), 0
    while kills < 5:  # then let the last resume finish
        deadline = time.time() + rng.uniform(1.5, 5.0)  # a (re)start alone takes about 3 s
        while time.time() < deadline and process.poll() is None:
            time.sleep(0.01)
        if process.poll() is not None:
            break
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += 1
        for checkpoint in out.glob("*.pt"):
            read_checkpoint(checkpoint)  # never half-written: atomic rename + checksum
        process = _train(out, overrides)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    assert kills >= 2
    history = read_checkpoint(out / "last.pt")["training_state"]["history"]
    assert [row["epoch"] for row in history] == [1, 2, 3, 4, 5, 6]
    rows = (out / "metrics.csv").read_text().strip().splitlines()[1:]
    assert [int(row.split(",")[0]) for row in rows] == [1, 2, 3, 4, 5, 6]
    assert json.loads((out / "metrics.json").read_text())["n_images"] == 32


def test_same_seed_gives_bit_identical_evaluation(tmp_path: Path) -> None:
    from ctran.cli import main

    for name in ("a", "b"):
        args = [
            "train",
            "--config",
            "digits-tiny",
            "--out",
            str(tmp_path / name),
            "--quiet",
            *TINY,
            "train.epochs=1",
        ]
        assert main(args) == 0
    a = json.loads((tmp_path / "a" / "metrics.json").read_text())
    b = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert a["settings"] == b["settings"]
    best = read_checkpoint(tmp_path / "a" / "best.pt")
    assert len(best["thresholds"]) == 16 and all(0 < t <= 1 for t in best["thresholds"])  # for --calibrated
