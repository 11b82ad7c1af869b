"""What a run needs from its machine: no more loader workers than CPUs, TensorBoard only when installed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ctran.config import load_config
from ctran.data.digit_scenes import load_digit_scenes
from ctran.model import build_from_config
from ctran.training.distributed import DistContext
from ctran.training.loaders import cpu_count, eval_loader, train_loader, usable_workers
from ctran.training.run import checkpoint_meta, model_config
from ctran.training.trainer import Trainer

TINY = ["data.sizes={train: 32, val: 16, test: 16}", "train.batch_size=16", "train.precision=fp32"]


def test_loader_workers_are_capped_at_the_cpus(monkeypatch) -> None:
    dataset = load_digit_scenes("test", 0, 8)
    assert eval_loader(dataset, 4, workers=10_000).num_workers == cpu_count()
    assert train_loader(dataset, 4, 0, DistContext(), workers=10_000).num_workers == cpu_count()
    assert eval_loader(dataset, 4, workers=0).num_workers == 0
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(cpu_count() * 2))  # more torchrun processes than CPUs
    assert usable_workers(10_000) == 1


@pytest.mark.parametrize("installed", [True, False])
def test_tensorboard_logs_or_one_notice_that_they_are_off(
    installed: bool, tmp_path: Path, monkeypatch, capsys
) -> None:
    if not installed:
        monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import raises ImportError
    config = load_config("digits-tiny", [*TINY, "train.epochs=2"])
    data = {split: load_digit_scenes(split, 0, 16 if split != "train" else 32) for split in ("train", "val")}
    num_labels = len(data["train"].label_names)
    model = build_from_config(model_config(config, num_labels))
    meta = checkpoint_meta(config, data["train"], num_labels)
    Trainer(model, data["train"], data["val"], config, None, tmp_path, meta, progress=False).fit()
    err = capsys.readouterr().err
    assert len((tmp_path / "metrics.csv").read_text().strip().splitlines()) == 3  # header + 2 epochs
    assert (tmp_path / "tensorboard").is_dir() == installed
    assert err.count("TensorBoard logs are off") == (0 if installed else 1)
