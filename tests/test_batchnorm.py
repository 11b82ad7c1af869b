"""``model.batchnorm``: frozen keeps a pretrained backbone's statistics, live updates them, sync needs CUDA;
checkpoints rebuild the same modules; runs say their per-process batch and warn about tiny live batches."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch import nn

import ctran
from ctran.checkpoint import init_from_checkpoint, save_checkpoint
from ctran.cli import main
from ctran.config import load_config
from ctran.data.digit_scenes import CONTEXT_NAMES, DIGIT_NAMES, TAG_NAMES
from ctran.errors import CTranError
from ctran.model import build_from_config, resolve_batchnorm
from ctran.model.backbone import build_backbone
from ctran.training.distributed import DistContext
from ctran.training.run import print_batch


def _statistics(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items() if "running" in k}


@pytest.mark.parametrize("name", ["test_resnet", "test_efficientnet"])  # plain BatchNorm2d; timm's BN + act
def test_frozen_batchnorm_keeps_its_statistics_and_computes_what_eval_mode_did(name: str) -> None:
    torch.manual_seed(0)
    live = build_backbone(name)
    for module in live.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    frozen = build_backbone(name, batchnorm="frozen")
    frozen.load_state_dict(live.state_dict())  # num_batches_tracked is dropped on the way
    assert not any(isinstance(module, nn.BatchNorm2d) for module in frozen.modules())
    images = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        expected = live.eval()(images)
        before = _statistics(frozen)
        got = frozen.train()(images)  # training mode: a frozen layer still uses the stored statistics
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert all(torch.equal(value, before[key]) for key, value in _statistics(frozen).items())
    assert len(list(frozen.parameters())) < len(list(live.parameters()))  # BN's affine terms are not trained
    with torch.no_grad():
        live.train()(images)
    changed = [k for k, v in _statistics(live).items() if not torch.equal(v, before[k])]
    assert changed  # live BatchNorm moves its running statistics towards the batch's


def test_auto_is_frozen_for_pretrained_backbones_and_live_from_scratch() -> None:
    assert resolve_batchnorm("auto", pretrained=True, weights_file=None) == "frozen"
    assert resolve_batchnorm("auto", pretrained=False, weights_file="w.pth") == "frozen"
    assert resolve_batchnorm("auto", pretrained=False, weights_file=None) == "live"
    assert resolve_batchnorm("sync", pretrained=True, weights_file=None) == "sync"
    with pytest.raises(CTranError, match="model.batchnorm must be one of"):
        resolve_batchnorm("off", pretrained=True, weights_file=None)
    assert load_config("coco80").model.batchnorm == "auto"
    with pytest.raises(CTranError, match="model.batchnorm"):
        load_config("coco80", ["model.batchnorm=none"])


def _frozen_checkpoint(folder: Path) -> Path:
    config = {"kind": "ctran", "num_labels": 20, "backbone": "small_cnn", "dim": 16, "layers": 1, "heads": 2}
    config["batchnorm"] = "frozen"
    torch.manual_seed(0)
    model = build_from_config(config)
    labels = (DIGIT_NAMES + TAG_NAMES, CONTEXT_NAMES)
    return save_checkpoint(folder / "frozen.pt", model, config, *labels, image_size=48)


def test_a_frozen_batchnorm_checkpoint_loads_in_every_command(tmp_path: Path) -> None:
    """The checkpoint records the mode, so load, evaluate, predict and export rebuild FrozenBatchNorm2d."""
    path = _frozen_checkpoint(tmp_path)
    assert not any("num_batches_tracked" in key for key in torch.load(path, weights_only=True)["state_dict"])
    predictor = ctran.load(path)
    assert type(predictor.model.backbone.body[0][1]).__name__ == "FrozenBatchNorm2d"
    Image.fromarray(np.full((48, 48, 3), 90, dtype=np.uint8)).save(tmp_path / "grey.png")
    with contextlib.redirect_stdout(io.StringIO()):
        evaluate = ["evaluate", "--checkpoint", str(path), "--size", "20", "--json", str(tmp_path / "e.json")]
        assert main([*evaluate, "--quiet"]) == 0
        assert main(["predict", "--checkpoint", str(path), str(tmp_path / "grey.png"), "--quiet"]) == 0
        export = ["export", "--checkpoint", str(path), "--out", str(tmp_path / "m.pt")]
        assert main([*export, "--json", str(tmp_path / "x.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["n_images"] == 20
    assert json.loads((tmp_path / "x.json").read_text())["max_abs_diff_vs_pytorch"] < 1e-4


def test_fine_tuning_moves_weights_between_live_and_frozen_batchnorm(tmp_path: Path) -> None:
    """``--init-from`` a frozen-BatchNorm checkpoint into a live run and back (the counters aside)."""
    frozen_path = _frozen_checkpoint(tmp_path)
    labels = list(DIGIT_NAMES + TAG_NAMES + CONTEXT_NAMES)
    options = {"kind": "ctran", "num_labels": 20, "backbone": "small_cnn", "dim": 16, "layers": 1, "heads": 2}
    torch.manual_seed(1)
    live = build_from_config(options)
    init_from_checkpoint(live, frozen_path, labels)
    first_conv = "backbone.body.0.0.weight"
    frozen_state = torch.load(frozen_path, weights_only=True)["state_dict"]
    assert torch.equal(live.state_dict()[first_conv], frozen_state[first_conv])
    live.backbone.body[0][1].running_var.fill_(2.0)
    live_path = save_checkpoint(tmp_path / "live.pt", live, options, DIGIT_NAMES + TAG_NAMES, CONTEXT_NAMES)
    frozen = build_from_config({**options, "batchnorm": "frozen"})
    init_from_checkpoint(frozen, live_path, labels)
    assert float(frozen.backbone.body[0][1].running_var[0]) == 2.0


def test_sync_batchnorm_off_cuda_is_a_user_error(tmp_path: Path, capsys) -> None:
    args = [
        "train",
        "--config",
        "digits-tiny",
        "--out",
        str(tmp_path / "run"),
        "--quiet",
        "model.batchnorm=sync",
    ]
    assert main([*args, "data.sizes={train: 8, val: 4, test: 4}", "train.device=cpu"]) == 2
    error = capsys.readouterr().err
    assert "model.batchnorm=sync needs CUDA GPUs" in error and error.count("\n") == 1


@pytest.mark.parametrize(
    ("overrides", "warned"),
    [
        (["model.batchnorm=live", "train.batch_size=4"], True),
        (["model.batchnorm=live", "train.batch_size=8"], False),
        (["model.batchnorm=live", "train.batch_size=4", "train.freeze_backbone=all"], False),
        (["model.batchnorm=frozen", "train.batch_size=1"], False),
    ],
)
def test_the_run_states_its_batch_and_warns_about_tiny_live_batches(overrides, warned, capsys) -> None:
    config = load_config("digits-tiny", [*overrides, "train.grad_accum=2"])
    print_batch(config, DistContext(world_size=2))
    out, err = capsys.readouterr()
    per_process = config.train.batch_size
    assert f"batch: {per_process} images per process x 2 process(es) x 2 accumulated" in out
    assert f"= {per_process * 4} per step; backbone BatchNorm: {config.model.batchnorm}" in out
    assert ("fewer than 8" in err) == warned


def test_resuming_a_run_from_before_the_option_keeps_its_live_batchnorm(tmp_path: Path) -> None:
    """A run folder whose config.yaml predates ``model.batchnorm`` trained live BatchNorm: resume goes on
    so (``auto`` would freeze a pretrained backbone, and its optimiser state would no longer fit)."""
    from test_distributed import _random_weights_file

    run = tmp_path / "run"
    weights = _random_weights_file(tmp_path / "w.pth")
    args = ["train", "--config", "digits-tiny", "--out", str(run), "--quiet", "--backbone-weights"]
    args += [str(weights), "model.backbone=test_resnet", "data.sizes={train: 16, val: 8, test: 8}"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main([*args, "train.epochs=1", "train.schedule=plateau", "model.batchnorm=live"]) == 0
        saved = yaml.safe_load((run / "config.yaml").read_text())
        del saved["model"]["batchnorm"]
        (run / "config.yaml").write_text(yaml.safe_dump(saved))
        assert main(["train", "--resume", str(run), "--quiet", "train.epochs=2"]) == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["batchnorm"] == "live"
    state = torch.load(run / "last.pt", weights_only=True)
    assert any(key.endswith("num_batches_tracked") for key in state["state_dict"])
    assert [row["epoch"] for row in state["training_state"]["history"]] == [1, 2]
