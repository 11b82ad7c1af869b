"""convert-official: a hand-built official-layout state dict gives the official logits (float64, 1e-5)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import ctran
from ctran.cli import main
from ctran.errors import CTranError
from ctran.inference.official import build_converted, convert_official, infer_config, read_official

NUM_LABELS, LAYERS, HEADS = 5, 2, 4
NAMES = ["person", "car", "dog", "cat", "boat"]
BACKBONE = "backbone.base_network."


def _official_state(resnet: nn.Module, num_labels: int = NUM_LABELS, layers: int = LAYERS) -> dict:
    """The key table of the paper notes (§8), filled with random values; row 0 of the states is non-zero."""
    generator = torch.Generator().manual_seed(0)
    state = {BACKBONE + key: value.clone() for key, value in resnet.state_dict().items()}
    for key, value in state.items():  # non-trivial batch-norm statistics and affine parameters
        if key.endswith("running_var"):
            value.uniform_(0.5, 1.5, generator=generator)
        elif value.is_floating_point() and ("bn" in key or "downsample.1" in key):
            value.add_(0.1 * torch.randn(value.shape, generator=generator))
    dim = state[BACKBONE + "fc.weight"].shape[1]

    def rand(*shape: int, scale: float | None = None) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * (scale or dim**-0.5)

    state["label_lt.weight"] = rand(num_labels, dim, scale=0.5)
    state["known_label_lt.weight"] = rand(3, dim, scale=0.5)
    state["LayerNorm.weight"], state["LayerNorm.bias"] = 1 + rand(dim, scale=0.1), rand(dim, scale=0.1)
    for i in range(layers):
        p = f"self_attn_layers.{i}.transformer_layer."
        state[p + "self_attn.in_proj_weight"], state[p + "self_attn.in_proj_bias"] = (
            rand(3 * dim, dim),
            rand(3 * dim),
        )
        state[p + "self_attn.out_proj.weight"], state[p + "self_attn.out_proj.bias"] = (
            rand(dim, dim),
            rand(dim),
        )
        state[p + "linear1.weight"], state[p + "linear1.bias"] = rand(dim, dim), rand(dim)
        state[p + "linear2.weight"], state[p + "linear2.bias"] = rand(dim, dim), rand(dim)
        for norm in ("norm1", "norm2"):
            state[p + norm + ".weight"], state[p + norm + ".bias"] = (
                1 + rand(dim, scale=0.1),
                rand(dim, scale=0.1),
            )
    state["output_linear.weight"], state["output_linear.bias"] = rand(num_labels, dim), rand(num_labels)
    return state


def _official_logits(
    state: dict, images: torch.Tensor, label_states: torch.Tensor, lmt: bool = True
) -> torch.Tensor:
    """The official forward pass written out (float64), readout included: Linear(D, L) on every label token,
    then the diagonal."""
    s = {key: value.double() for key, value in state.items()}
    num_labels, dim = s["label_lt.weight"].shape
    resnet = torchvision.models.resnet18().double().eval()
    resnet.load_state_dict({k.removeprefix(BACKBONE): v for k, v in s.items() if k.startswith(BACKBONE)})
    x = resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(images))))
    x = resnet.layer4(resnet.layer3(resnet.layer2(resnet.layer1(x))))  # (B, D, h, w)
    x = x.flatten(2).transpose(1, 2)  # (B, T, D)
    t = s["label_lt.weight"].expand(len(images), -1, -1)  # (B, L, D)
    if lmt:
        t = t + s["known_label_lt.weight"][label_states + 1]  # states -1/0/1 -> rows 0/1/2
    z = F.layer_norm(torch.cat([x, t], dim=1), (dim,), s["LayerNorm.weight"], s["LayerNorm.bias"])
    layer = 0
    while f"self_attn_layers.{layer}.transformer_layer.linear1.weight" in s:
        p = f"self_attn_layers.{layer}.transformer_layer."
        attention = nn.MultiheadAttention(dim, HEADS).double().eval()  # sequence-first, as the official code
        attention.load_state_dict(
            {k.removeprefix(p + "self_attn."): v for k, v in s.items() if k.startswith(p + "self_attn.")}
        )
        seq = z.transpose(0, 1)  # (N, B, D)
        attended = attention(seq, seq, seq)[0].transpose(0, 1)
        z = F.layer_norm(z + attended, (dim,), s[p + "norm1.weight"], s[p + "norm1.bias"])
        ffn = F.linear(
            F.relu(F.linear(z, s[p + "linear1.weight"], s[p + "linear1.bias"])), s[p + "linear2.weight"]
        )
        z = F.layer_norm(z + ffn + s[p + "linear2.bias"], (dim,), s[p + "norm2.weight"], s[p + "norm2.bias"])
        layer += 1
    h = z[:, -num_labels:]  # (B, L, D)
    every = F.linear(h, s["output_linear.weight"], s["output_linear.bias"])  # (B, L, L)
    return (every * torch.eye(num_labels, dtype=every.dtype)).sum(-1)  # (B, L)


@pytest.fixture(scope="module")
def official_state() -> dict:
    torch.manual_seed(0)
    return _official_state(torchvision.models.resnet18())


def _save_official(state: dict, path: Path) -> Path:
    """As the official trainer saves: DataParallel's module. prefix, a state_dict wrapper, numpy metrics."""
    wrapped = {"module." + key: value for key, value in state.items()}
    torch.save(
        {"epoch": 7, "state_dict": wrapped, "valid_mAP": np.float64(71.5), "test_mAP": np.float32(70.1)}, path
    )
    return path


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(3, 3, 96, 96, generator=generator, dtype=torch.float64)
    states = torch.tensor([[-1, -1, -1, -1, -1], [1, 0, -1, -1, 1], [0, 0, 0, 1, -1]])
    return images, states


def test_converted_checkpoint_gives_the_official_logits(official_state: dict, tmp_path: Path) -> None:
    labels = tmp_path / "names.txt"
    labels.write_text("\n".join(NAMES) + "\n")
    out = tmp_path / "converted.pt"
    source = _save_official(official_state, tmp_path / "official.pt")
    assert (
        main(
            [
                "convert-official",
                str(source),
                str(out),
                "--labels",
                str(labels),
                "--json",
                str(tmp_path / "s.json"),
            ]
        )
        == 0
    )
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["backbone"] == "resnet18" and summary["dim"] == 512 and summary["layers"] == LAYERS

    predictor = ctran.load(out)
    assert predictor.label_names == NAMES and predictor.image_size == 576 and predictor.scale_size == 640
    model = predictor.model.double()
    images, states = _inputs()
    with torch.no_grad():
        ours = model(images, states)
    expected = _official_logits(official_state, images, states)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)
    assert (expected[0] - expected[1]).abs().max() > 1e-3  # the states matter, so the test can fail
    torch.testing.assert_close(
        model.state_embed.weight[0].float(), official_state["known_label_lt.weight"][0]
    )


def test_no_lmt_model_ignores_states_like_the_official_one(official_state: dict) -> None:
    model, _ = build_converted(official_state, HEADS, lmt=False)
    images, states = _inputs()
    with torch.no_grad():
        ours = model.double()(images, states)
    torch.testing.assert_close(
        ours, _official_logits(official_state, images, states, lmt=False), atol=1e-5, rtol=0
    )


def test_paper_resnet101_keys_match_timm_and_are_recognised() -> None:
    """The official backbone is torchvision's ResNet-101; ctran's is timm's resnet101 with the same names."""
    tv = torchvision.models.resnet101().state_dict()
    ours = timm.create_model("resnet101", num_classes=0, global_pool="").state_dict()
    assert set(tv) - set(ours) == {"fc.weight", "fc.bias"} and set(ours) <= set(tv)
    assert all(ours[key].shape == tv[key].shape for key in ours)
    state = {BACKBONE + key: value for key, value in tv.items()}
    state["label_lt.weight"] = torch.empty(80, 2048)
    state["self_attn_layers.0.transformer_layer.linear1.weight"] = torch.empty(2048, 2048)
    for i in (1, 2):
        state[f"self_attn_layers.{i}.transformer_layer.linear1.weight"] = torch.empty(2048, 2048)
    config = infer_config(state)
    assert config == {
        "kind": "ctran",
        "backbone": "resnet101",
        "num_labels": 80,
        "dim": 2048,
        "layers": 3,
        "heads": 4,
        "ffn_dim": 2048,
        "dropout": 0.1,
        "attention": "full",  # the official model: every token attends to every token
    }


def test_bad_inputs(official_state: dict, tmp_path: Path, capsys) -> None:
    source = _save_official(official_state, tmp_path / "official.pt")
    short = tmp_path / "short.txt"
    short.write_text("a\nb\n")
    with pytest.raises(CTranError, match="has 2 label names but the checkpoint has 5 labels"):
        convert_official(source, tmp_path / "x.pt", short)
    twice = tmp_path / "twice.txt"
    twice.write_text("a\na\nb\nc\nd\n")
    with pytest.raises(CTranError, match="repeated: a"):
        convert_official(source, tmp_path / "x.pt", twice)
    with pytest.raises(CTranError, match="official checkpoint not found"):
        read_official(tmp_path / "none.pt")
    partial = tmp_path / "partial.pt"
    torch.save({k: v for k, v in official_state.items() if k != "output_linear.weight"}, partial)
    with pytest.raises(CTranError, match="missing output_linear.weight"):
        read_official(partial)
    with pytest.raises(CTranError, match="unexpected key .*: type_lt.weight"):
        build_converted({**official_state, "type_lt.weight": torch.zeros(2, 512)})
    with pytest.raises(CTranError, match="not divisible by 3 heads"):
        infer_config(official_state, heads=3)
    assert main(["convert-official", str(source), str(tmp_path / "x.pt"), "--labels", str(short)]) == 2
    assert "expected one name per line" in capsys.readouterr().err
