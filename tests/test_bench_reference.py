"""The benchmark reference and the inference speed switches: same logits as the official formulation.

``benchmarks/reference.py`` re-implements the official forward pass; the benchmarks refuse to time anything
whose logits differ from it. These tests hold the same guarantees on tiny models: the reference loaded with
our weights gives our logits; the last-layer label-rows-only encoder, the fused attention and the
channels_last layout change nothing beyond float rounding; bf16 stays within the stated tolerance.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.profiler import profile

import ctran
from ctran.cli import main
from ctran.errors import CTranError
from ctran.inference import Predictor
from ctran.inference.official import convert_state
from ctran.inference.performance import inference_precision, optimize_for_inference
from ctran.model.transformer import Encoder

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from common import Budget, contract_row  # noqa: E402
from reference import PARITY_ATOL, check_parity, official_state, reference_from  # noqa: E402

BF16_ATOL = 0.1  # the tolerance the inference benchmark states for bf16 logits


def _model(backbone: str = "small_cnn", dim: int = 128, labels: int = 6) -> ctran.CTran:
    """A tiny C-Tran whose every weight is non-trivial (so each must be mapped right to agree)."""
    torch.manual_seed(0)
    model = ctran.build_model(labels, backbone=backbone, dim=dim, layers=2, heads=2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def _inputs(batch: int = 3, size: int = 48, labels: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    return torch.randn(batch, 3, size, size), torch.randint(-1, 2, (batch, labels))


@pytest.mark.parametrize(("backbone", "dim", "size"), [("small_cnn", 128, 48), ("resnet18", 512, 64)])
def test_reference_with_our_weights_gives_our_logits(backbone: str, dim: int, size: int) -> None:
    model = _model(backbone, dim)
    ref = reference_from(model)
    images, states = _inputs(size=size)
    with torch.inference_mode():
        ours = model(images, states)
        theirs, attentions = ref(images, states)
    assert check_parity(ours, theirs, "tiny") <= PARITY_ATOL
    tokens = model.encode(images).shape[1] + 6
    assert [tuple(a.shape) for a in attentions] == [(3, tokens, tokens)] * 2  # head-averaged, every layer


def test_reference_uses_the_official_key_layout() -> None:
    model = _model()
    state = official_state(model)
    assert "label_lt.weight" in state and "output_linear.weight" in state
    assert "self_attn_layers.1.transformer_layer.self_attn.in_proj_weight" in state
    back = convert_state(state)
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items())


def test_parity_check_refuses_different_logits() -> None:
    with pytest.raises(RuntimeError, match="disagree"):
        check_parity(torch.zeros(2, 3), torch.full((2, 3), 1e-2), "tiny")


@pytest.mark.parametrize("training", [False, True])
def test_encoder_last_layer_label_rows_only_is_exact(training: bool) -> None:
    torch.manual_seed(0)
    encoder = Encoder(dim=16, heads=2, layers=3, ffn_dim=24, dropout=0.0).train(training)
    x = torch.randn(2, 11, 16)
    full, _ = encoder(x)
    kept, _ = encoder(x, keep=4)
    assert kept.shape == (2, 4, 16)
    torch.testing.assert_close(kept, full[:, -4:], atol=1e-6, rtol=1e-5)
    weighted, attentions = encoder(x, need_weights=True, keep=4)
    torch.testing.assert_close(weighted, kept, atol=1e-6, rtol=1e-5)
    assert [tuple(a.shape) for a in attentions] == [(2, 2, 11, 11)] * 3  # explanations keep every row


def test_eval_attention_is_the_fused_kernel_without_score_matrix() -> None:
    model = _model()
    images, states = _inputs()
    tokens = model.encode(images)
    with torch.inference_mode(), profile() as prof:
        model.decode(tokens, states)
    ops = {event.key for event in prof.key_averages()}
    assert any("scaled_dot_product_flash_attention" in op for op in ops), sorted(ops)
    assert "aten::_softmax" not in ops and "aten::_native_multi_head_attention" not in ops


def test_channels_last_keeps_float32_logits() -> None:
    model = _model()
    images, states = _inputs()
    with torch.inference_mode():
        expected = model(images, states)
        fast = optimize_for_inference(_model(), channels_last=True, fuse=False)
        torch.testing.assert_close(fast(images, states), expected, atol=1e-5, rtol=1e-5)
    assert fast.backbone.body[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    assert fast.state_dict().keys() == model.state_dict().keys()


def test_bf16_predictor_stays_within_the_stated_tolerance() -> None:
    names = [f"label_{i}" for i in range(6)]
    images, _ = _inputs()
    exact = Predictor(_model(), names, image_size=48)
    fast = Predictor(
        optimize_for_inference(_model(), channels_last=True), names, image_size=48, precision="bf16"
    )
    for a, b in zip(exact.predict(images), fast.predict(images), strict=True):
        assert (
            max(abs(a.probs[n] - b.probs[n]) for n in names) < BF16_ATOL / 4
        )  # |d sigmoid| <= |d logit| / 4
    features = fast.encode(images)
    assert features.tokens.dtype == torch.bfloat16
    assert fast.condition(features, known={"label_0": True})[0].known == {"label_0": True}


def test_precision_is_checked_and_resolved() -> None:
    assert inference_precision("fp32", "cpu") == "fp32"
    assert inference_precision("auto", "cpu") in {"fp32", "bf16"}
    with pytest.raises(CTranError, match="precision must be one of"):
        inference_precision("int8", "cpu")
    with pytest.raises(CTranError, match="CUDA"):
        inference_precision("fp16", "cpu")


def test_load_and_cli_take_a_precision(tiny_checkpoint: Path, tmp_path: Path) -> None:
    image = torch.randn(3, 48, 48)
    exact = ctran.load(tiny_checkpoint).predict(image)[0]
    predictor = ctran.load(tiny_checkpoint, precision="bf16")
    first = predictor.model.backbone.body.layers[0].weight  # fused: BatchNorm folded, stored in bf16
    assert predictor.precision == "bf16" and first.dtype == torch.bfloat16
    assert first.is_contiguous(memory_format=torch.channels_last)
    fast = predictor.predict(image)[0]
    assert max(abs(exact.probs[n] - p) for n, p in fast.probs.items()) < BF16_ATOL / 4

    Image.new("RGB", (60, 50), (200, 30, 30)).save(tmp_path / "red.png")
    out = tmp_path / "out.json"
    args = [str(tmp_path / "red.png"), "--checkpoint", str(tiny_checkpoint), "--json", str(out), "--quiet"]
    assert main(["predict", *args, "--precision", "bf16"]) == 0
    assert set(json.loads(out.read_text())[0]["probs"]) == {"cat", "dog", "person", "car"}


def test_contract_row_and_budget() -> None:
    row = contract_row("x", 8, [2.0, 4.0, 3.0], [8.0, 8.0], 2_000_000, 6_000_000, 1e9, 1e10)
    assert list(row)[:7] == [
        "name",
        "ours_per_s",
        "ref_per_s",
        "ratio",
        "ours_peak_mb",
        "ref_peak_mb",
        "fraction_of_peak",
    ]
    expected = (8 / 3, 1.0, 8 / 3, 2.0, 6.0, 8 / 30)  # items / median seconds; MB; FLOP/s over peak
    assert [row[k] for k in list(row)[1:7]] == pytest.approx(expected, rel=1e-3)
    assert row["ours_per_s_range"] == [2.0, 4.0]  # slowest and fastest call
    assert contract_row("y", 1, [1.0], None)["ratio"] is None
    assert Budget(10.0).repeats(1.0) == 10 and Budget(10.0).repeats(100.0) == 3
    assert Budget(10.0, fixed=2).repeats(0.01) == 2


def test_estimates_are_marked_and_never_count_as_met() -> None:
    from common import markdown_table
    from run_all import targets, verdict

    row = contract_row("labels_10000_b8", 8, [1.0], None, 300_000_000, None, ref_peak_mb_estimate=42000.0)
    row |= {"ref_failed": "not run: needs about 42 GiB", "batch": 8}
    assert "~42000 (estimate, not run)" in markdown_table([row])
    goal = next(g for g in targets([row], None) if "L=10000, batch 8" in g["target"])
    assert goal["met"] is None and goal["estimate"] and verdict(goal) == "estimate only, not counted"
    measured = contract_row("labels_10000_b1", 1, [1.0], [2.0], 40_000_000, 5_000_000_000) | {"batch": 1}
    goal = next(g for g in targets([measured], None) if "L=10000, batch 1" in g["target"])
    assert goal["met"] is True and verdict(goal) == "met"


def test_speed_targets_use_the_same_numerics_ratio_and_its_spread() -> None:
    from run_all import SPEED_GOAL, targets

    fast = contract_row("infer_r101_576_L80_b1_fp32", 1, [1.0, 1.0], [1.3, 1.2], 1, 1)
    slow = contract_row("infer_r101_576_L1000_b1_bf16_cl", 1, [1.0, 1.0], [1.1, 1.1], 1, 1)
    goals = {g["target"]: g for g in targets([fast, slow], None)}
    assert SPEED_GOAL == 1.15
    assert goals["inference 576, L=80, batch 1, fp32 on both: ours / reference"]["met"] is True
    assert (
        "rounds 1.2-1.3" in goals["inference 576, L=80, batch 1, fp32 on both: ours / reference"]["measured"]
    )
    assert goals["inference 576, L=1000, batch 1, bf16_cl on both: ours / reference"]["met"] is False
    assert goals["inference 576, L=80, batch 8, fp32 on both: ours / reference"]["met"] is None  # not run
