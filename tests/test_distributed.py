"""Two gloo processes (torchrun): unreadable images on one rank, per-process batches, frozen BatchNorm."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

PER_PROCESS = 4  # train.batch_size in the unreadable-images run
COLOURS = {"a": (220, 40, 40), "b": (40, 220, 40), "c": (40, 40, 220)}


def _torchrun(args: list[str], port: int, timeout: float) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node=2 -m ctran ARGS`` on CPU (gloo); past ``timeout`` seconds every process
    of the run is killed and the test fails (a process left waiting in a collective never ends)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [*command, "-m", "ctran", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)  # torchrun passes it on to its workers (their own sessions)
        try:
            process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        pytest.fail(f"torchrun {' '.join(args[:3])} still running after {timeout} s (a rank hangs)")
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def _first_step_of_rank(rank: int, size: int, seed: int, epoch: int, world: int, batch: int) -> list[int]:
    """The training rows rank ``rank`` reads in the first step of ``epoch`` (the loader's seeded order)."""
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    return order[rank : world * batch : world]


def _csv_set(root: Path, size: int, corrupt: set[int], missing: int) -> None:
    """train.csv (``size`` readable-or-corrupt rows, then ``missing`` rows of absent files), val, test."""
    root.mkdir()
    names = list(COLOURS)
    for split, count in (("train", size), ("val", 12), ("test", 12)):
        rows = ["image,labels"]
        for i in range(count):
            label = names[i % len(names)]
            path = root / f"{split}{i}.png"
            if split == "train" and i in corrupt:
                path.write_text("not an image\n")
            else:
                Image.new("RGB", (16, 16), COLOURS[label]).save(path)
            rows.append(f"{path.name},{label}")
        if split == "train":
            rows += [f"absent{i}.png,a" for i in range(missing)]
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n")


def test_a_rank_whose_whole_step_is_unreadable_does_not_hang_the_others(tmp_path: Path) -> None:
    size = 24
    corrupt = set(_first_step_of_rank(1, size, seed=0, epoch=1, world=2, batch=PER_PROCESS))
    _csv_set(tmp_path / "data", size, corrupt, missing=2)
    args = ["train", "--config", "digits-tiny", "--data", "csv", "--data-root", str(tmp_path / "data")]
    args += ["--out", str(tmp_path / "run"), "--quiet", "data.image_size=16", "data.scale_size=null"]
    args += ["train.epochs=1", f"train.batch_size={PER_PROCESS}", "eval.batch_size=4", "model.dim=32"]
    result = _torchrun(args, port=29533, timeout=150)  # a rank left waiting in a collective: timeout
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["skipped_images"] == len(corrupt) + 2  # unreadable, and missing at start
    skipped = json.loads((tmp_path / "run" / "skipped_images.json").read_text())
    names = {Path(entry["path"]).name for entry in skipped["images"]}
    assert names == {f"train{i}.png" for i in corrupt} | {"absent0.png", "absent1.png"}
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].split(",")[rows[0].split(",").index("skipped_steps")] == "0"
