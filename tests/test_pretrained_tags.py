"""Which pretrained weights a run starts from is named, not implied: the paper configs pin the paper's
weights (timm's bare ``resnet101`` is its own stronger a1h recipe), and every checkpoint records them."""

from __future__ import annotations

import contextlib
import hashlib
import io
from pathlib import Path

import pytest
import torch

from ctran.checkpoint import read_checkpoint
from ctran.cli import main
from ctran.config import load_config
from ctran.model.backbone import describe_weights, pretrained_weights
from ctran.training.run import initial_weights

TORCHVISION_R101 = {
    "source": "timm",
    "tag": "resnet101.tv_in1k",
    "hf_hub_id": "timm/resnet101.tv_in1k",
    "url": "https://download.pytorch.org/models/resnet101-63fe2227.pth",
}


def test_paper_configs_name_the_papers_weights() -> None:
    """ResNet-101: torchvision's weights, as the official code (``models.resnet101(pretrained=True)``);
    CUB: torchvision's Inception-v3 file ported from TensorFlow, the very file the official code loaded."""
    for name in ("coco80", "vg500", "nuswide", "voc2007"):
        assert initial_weights(load_config(name)) == TORCHVISION_R101, name
    cub = initial_weights(load_config("cub312"))
    assert cub["tag"] == "inception_v3.tv_in1k"
    assert cub["url"] == "https://download.pytorch.org/models/inception_v3_google-1a9a5a14.pth"
    assert initial_weights(load_config(None)) == TORCHVISION_R101  # the defaults are the paper's


def test_a_bare_name_is_timms_default_tag_and_is_recorded_as_such() -> None:
    assert pretrained_weights("resnet101", True)["tag"] == "resnet101.a1h_in1k"  # timm's recipe, ~82% top-1
    assert pretrained_weights("resnet101", False) == {"source": "none"}
    assert describe_weights(TORCHVISION_R101) == "resnet101.tv_in1k (timm, timm/resnet101.tv_in1k)"
    assert describe_weights(None) == "unrecorded"  # a checkpoint from before the record


@pytest.mark.slow
def test_a_trained_checkpoint_records_its_weights_file_and_a_fine_tune_its_checkpoint(tmp_path: Path) -> None:
    """Offline: timm's tiny ``test_resnet`` from a local file; the run prints and records the file's name and
    SHA-256, ``ctran evaluate`` shows it; a run initialised from that checkpoint records the checkpoint."""
    import timm

    weights = tmp_path / "tiny.pth"
    torch.manual_seed(0)
    torch.save(timm.create_model("test_resnet", num_classes=0).state_dict(), weights)
    sha256 = hashlib.sha256(weights.read_bytes()).hexdigest()
    tiny = ["data.sizes={train: 32, val: 16, test: 16}", "train.epochs=1", "train.batch_size=16", "--quiet"]
    first, out = tmp_path / "first", io.StringIO()
    argv = ["train", "--config", "digits-tiny", "--out", str(first), "model.backbone=test_resnet.r160_in1k"]
    with contextlib.redirect_stdout(out):
        assert main([*argv, "model.pretrained=true", "--backbone-weights", str(weights), *tiny]) == 0
    recorded = {"source": "file", "backbone": "test_resnet.r160_in1k", "file": "tiny.pth", "sha256": sha256}
    for name in ("best.pt", "last.pt"):
        assert read_checkpoint(first / name)["pretrained_weights"] == recorded
    assert f"initial weights: file tiny.pth (sha256 {sha256[:12]})\n" in out.getvalue()
    shown = io.StringIO()
    with contextlib.redirect_stdout(shown):
        assert main(["evaluate", "--checkpoint", str(first / "best.pt"), "--size", "16", "--quiet"]) == 0
    assert f"initial weights: file tiny.pth (sha256 {sha256[:12]})\n" in shown.getvalue()
    second = tmp_path / "second"
    argv = ["train", "--config", "digits-tiny", "--out", str(second), "model.backbone=test_resnet.r160_in1k"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main([*argv, "--init-from", str(first / "best.pt"), *tiny]) == 0
    checkpoint_sha = hashlib.sha256((first / "best.pt").read_bytes()).hexdigest()
    assert read_checkpoint(second / "best.pt")["pretrained_weights"] == {
        "source": "init_from",
        "file": "best.pt",
        "sha256": checkpoint_sha,
    }
