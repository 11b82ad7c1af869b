"""Two gloo processes (torchrun): unreadable images on one rank, per-process batches, frozen BatchNorm."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

import ctran
from ctran.training.distributed import DistContext
from ctran.training.loaders import StepBatches

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


@pytest.mark.parametrize("world", [1, 2, 3])
def test_the_processes_batches_are_one_process_batch_split(world: int) -> None:
    """``StepBatches``: every step, the union of the N shares of B is one process's batch of N*B, the short
    last step included (25 images: its one image goes to rank 0, the other ranks' shares are empty)."""
    one = StepBatches(25, 4 * world, seed=5, ctx=DistContext())
    shares = [StepBatches(25, 4, seed=5, ctx=DistContext(rank=r, world_size=world)) for r in range(world)]
    for sampler in (one, *shares):
        sampler.set_epoch(2)
    assert all(len(share) == len(one) for share in shares)
    steps = list(zip(one, *shares, strict=True))
    for whole, *parts in steps:
        assert sorted(whole) == sorted(index for part in parts for index in part)
    assert [len(part) for part in steps[-1][1:]] == [len(steps[-1][0])] + [0] * (world - 1)
    assert sorted(index for whole in one for index in whole) == list(range(25))
    one.set_epoch(3)
    assert list(one) != [whole for whole, *_ in steps]  # a new order every epoch


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


def _random_weights_file(path: Path) -> Path:
    """timm's tiny test ResNet, random weights and BatchNorm statistics: a "pretrained" weights file."""
    import timm

    torch.manual_seed(1)
    state = timm.create_model("test_resnet", pretrained=False).state_dict()
    for key, value in state.items():
        if key.endswith("running_mean"):
            value.normal_(0, 0.1)
        elif key.endswith("running_var"):
            value.uniform_(0.5, 2.0)
    torch.save(state, path)
    return path


def test_two_processes_with_batch_b_train_like_one_with_batch_2b(tmp_path: Path) -> None:
    """A pretrained (weights-file) backbone, trained, its BatchNorm frozen by default: 2 x 8 == 1 x 16.

    Measured: weights agree to 4e-6 (Adam's steps on the attention key bias, whose gradient is zero up to
    rounding), val mAP exactly; with ``model.batchnorm=live`` running statistics differ by up to 0.28 and the
    last val mAP by 1.1 points.
    """
    weights = _random_weights_file(tmp_path / "test_resnet.pth")
    common = ["train", "--config", "digits-tiny", "--quiet", "--backbone-weights", str(weights)]
    common += ["model.backbone=test_resnet", "data.sizes={train: 57, val: 32, test: 37}", "train.epochs=2"]
    common += ["model.dropout=0.0", "train.precision=fp32", "train.lr=1e-4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run(
        [sys.executable, "-m", "ctran", *common, "--out", str(tmp_path / "one"), "train.batch_size=16"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    double = _torchrun([*common, "--out", str(tmp_path / "two"), "train.batch_size=8"], 29531, timeout=300)
    assert double.returncode == 0, double.stderr[-3000:]
    assert "batch: 16 images per process x 1 process(es) = 16 per step; backbone BatchNorm: frozen" in (
        single.stdout
    )
    assert "batch: 8 images per process x 2 process(es) = 16 per step" in double.stdout
    assert "BatchNorm normalises over" not in single.stderr + double.stderr  # no warning: frozen
    assert yaml.safe_load((tmp_path / "two" / "config.yaml").read_text())["model"]["batchnorm"] == "frozen"
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert one["n_images"] == two["n_images"] == 37  # uneven shards: nothing dropped or duplicated
    weights_one = torch.load(tmp_path / "one" / "last.pt", weights_only=True)["state_dict"]
    weights_two = torch.load(tmp_path / "two" / "last.pt", weights_only=True)["state_dict"]
    assert not any("num_batches_tracked" in key for key in weights_two)  # FrozenBatchNorm2d throughout
    start = torch.load(weights, weights_only=True)
    convolutions = [key for key, value in start.items() if value.dim() == 4]
    moved = max(float((weights_two[f"backbone.body.{key}"] - start[key]).abs().max()) for key in convolutions)
    assert moved > 3e-4  # the backbone's weights were trained (8 Adam steps of lr 1e-4), not frozen
    for key, value in weights_one.items():
        torch.testing.assert_close(weights_two[key], value, rtol=0, atol=5e-5, msg=key)
    for row_one, row_two in zip(_history(tmp_path / "one"), _history(tmp_path / "two"), strict=True):
        assert abs(float(row_one["train_loss"]) - float(row_two["train_loss"])) < 1e-5
        assert abs(float(row_one["val_mAP"]) - float(row_two["val_mAP"])) < 1e-3
    for key in ("mAP", "CF1", "OF1"):
        assert abs(one[key] - two[key]) < 1e-3, key
    rows = (tmp_path / "two" / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 2  # header + one row per epoch: written once, by rank 0
    assert double.stdout.count("test mAP") == 1
    predictor = ctran.load(tmp_path / "two" / "best.pt")  # the frozen modules are rebuilt from the checkpoint
    assert type(predictor.model.backbone.body.bn1).__name__ == "FrozenBatchNorm2d"


def _history(run: Path) -> list[dict]:
    """metrics.csv's rows."""
    with open(run / "metrics.csv") as file:
        return list(csv.DictReader(file))
