"""Resume: an extended cosine run continues its decay (no jump back up), and a resumed run with DataLoader
workers and random crops trains exactly like one that never stopped."""

from __future__ import annotations

import contextlib
import io
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ctran.checkpoint import read_checkpoint
from ctran.cli import main
from ctran.config import load_config
from ctran.training import trainer as trainer_module
from ctran.training.optim import WarmupCosine, continue_schedule

TINY = ["data.sizes={train: 64, val: 32, test: 32}", "train.batch_size=16", "data.num_workers=0", "--quiet"]


def _train(*argv: str) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["train", *argv]) == 0


def test_resume_that_extends_a_cosine_run_continues_from_its_current_lr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """2 cosine epochs (4 steps each), then ``--resume DIR train.epochs=4``: the lr stays at the 1% floor the
    finished run reached (it once jumped back to 41% of the peak); the next resume keeps the new plan."""
    lrs: list[float] = []
    step = trainer_module.Trainer._optimizer_step

    def recorded(self) -> None:
        lrs.append(self.optimizer.param_groups[0]["lr"])
        step(self)

    monkeypatch.setattr(trainer_module.Trainer, "_optimizer_step", recorded)
    run = tmp_path / "run"
    _train("--config", "digits-tiny", "--out", str(run), "train.epochs=2", "train.warmup_epochs=0", *TINY)
    first = list(lrs)
    _train("--resume", str(run), "train.epochs=4", "--quiet")
    peak = 2e-3
    assert len(first) == 8 and first[0] == pytest.approx(peak) and first[-1] / peak < 0.05
    assert [lr / peak for lr in lrs[8:]] == pytest.approx([0.01] * 8)
    schedule = read_checkpoint(run / "last.pt")["training_state"]["scheduler"]["lr_lambdas"][0]
    assert schedule == {"warmup": 0, "total": 16, "start_step": 8, "start_factor": pytest.approx(0.01)}


def test_an_extended_cosine_decays_from_where_it_was_to_the_floor_at_the_new_end() -> None:
    """Stopped at step 10 of 16 (warm-up 4) and extended to 24: continuous, decreasing, floor at 24."""
    extended = WarmupCosine(warmup=4, total=16)
    at_stop = extended(10)
    extended.extend(10, 24)
    assert extended(10) == at_stop  # the steps before are history: the lr goes on from here
    after = [extended(s) for s in range(10, 25)]
    assert all(a > b for a, b in itertools.pairwise(after))
    assert after[-1] == pytest.approx(WarmupCosine.FLOOR) and extended(30) == pytest.approx(
        WarmupCosine.FLOOR
    )
    in_warmup = WarmupCosine(warmup=4, total=16)
    in_warmup.extend(2, 24)  # the decay had not started: only its end moves
    assert [in_warmup(s) for s in range(25)] == [WarmupCosine(warmup=4, total=24)(s) for s in range(25)]


def test_continue_schedule_leaves_an_unchanged_plan_alone() -> None:
    config = load_config("digits-tiny", ["train.epochs=2", "train.warmup_epochs=0"])
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(0, 8))
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    continue_schedule(scheduler, config.train, steps_per_epoch=4)
    assert vars(scheduler.lr_lambdas[0]) == {"warmup": 0, "total": 8, "start_step": 0, "start_factor": 1.0}
    continue_schedule(scheduler, config.train, steps_per_epoch=5)  # e.g. fewer processes: 10 steps now
    assert scheduler.lr_lambdas[0].start_step == 3 and scheduler.lr_lambdas[0].total == 10


def _png_set(root: Path, count: int = 24) -> Path:
    """A CSV set of small random PNGs (random crops of them differ), labels a, b, c."""
    rng = np.random.default_rng(0)
    rows = ["image,labels"]
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(root / f"{i}.png")
        rows.append(f"{i}.png,{'abc'[i % 3]};{'abc'[(i + 1) % 3]}")
    for split in ("train", "val", "test"):
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return root


def test_resume_with_loader_workers_and_random_crops_matches_a_run_that_never_stopped(tmp_path: Path) -> None:
    """Two epochs straight vs one epoch then ``--resume`` to two, with 2 DataLoader workers and the paper's
    random multi-scale crops and flips on real image files: the same weights, bit for bit."""
    (tmp_path / "data").mkdir()
    data = _png_set(tmp_path / "data")
    common = ["--config", "digits-tiny", "--data", "csv", "--data-root", str(data), "--quiet"]
    common += ["data.image_size=24", "data.scale_size=32", "data.crop_sizes=[32,28,24]", "data.num_workers=2"]
    common += ["train.batch_size=8", "train.schedule=plateau", "train.warmup_epochs=0", "eval.batch_size=24"]
    _train(*common, "--out", str(tmp_path / "straight"), "train.epochs=2")
    _train(*common, "--out", str(tmp_path / "resumed"), "train.epochs=1")
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["train", "--resume", str(tmp_path / "resumed"), "train.epochs=2", "--quiet"]) == 0
    straight = read_checkpoint(tmp_path / "straight" / "last.pt")["state_dict"]
    resumed = read_checkpoint(tmp_path / "resumed" / "last.pt")["state_dict"]
    for key, value in straight.items():
        torch.testing.assert_close(resumed[key], value, rtol=0, atol=0, msg=key)
