"""Inference fusion (``ctran.inference.fusion``): same logits as the unfused model, and the fusion happens.

Each test that guards a speed effect looks at the ops that actually ran (``torch.profiler``), so removing
the effect (BatchNorm left in, ReLU/add run as separate passes, weights cast at every call) fails it.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import profile

import ctran
from ctran.inference.fusion import FusedBackbone, FusedConv2d, fuse_backbone, fuse_for_inference, max_pool
from ctran.inference.performance import optimize_for_inference

CL = torch.channels_last


def _model(backbone: str = "resnet18", dim: int = 64, labels: int = 5) -> ctran.CTran:
    """A small C-Tran whose BatchNorms hold non-trivial statistics (so folding them is exercised)."""
    torch.manual_seed(0)
    model = ctran.build_model(labels, backbone=backbone, dim=dim, layers=2, heads=2)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.3, 1.2)
                module.bias.uniform_(-0.2, 0.2)
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _inputs(size: int, labels: int = 5, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(batch, 3, size, size, generator=generator)
    return images, torch.randint(-1, 2, (batch, labels), generator=generator)


def _ops(call) -> set[str]:
    with torch.inference_mode(), profile() as prof:
        call()
    return {event.key for event in prof.key_averages()}


CASES = [("resnet18", 64, 64), ("resnet26", 64, 64), ("small_cnn", 32, 48)]  # basic, bottleneck, stack


@pytest.mark.parametrize(("backbone", "dim", "size"), CASES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_model_gives_the_unfused_logits(
    backbone: str, dim: int, size: int, channels_last: bool
) -> None:
    model = _model(backbone, dim)
    images, states = _inputs(size)
    fused = optimize_for_inference(copy.deepcopy(model), channels_last=channels_last)
    assert isinstance(fused.backbone, FusedBackbone)
    with torch.inference_mode():
        expected, got = model(images, states), fused(images, states)
        features = fused.backbone(images)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert features.is_contiguous(memory_format=CL) == channels_last  # the layout asked for, not another


@pytest.mark.parametrize(("backbone", "dim", "size"), CASES)
def test_batchnorm_is_folded_away(backbone: str, dim: int, size: int) -> None:
    images, _ = _inputs(size)
    model = _model(backbone, dim)
    assert "aten::native_batch_norm" in _ops(lambda: model.backbone(images))
    fused = fuse_backbone(model.backbone, torch.float32)
    assert not any("batch_norm" in op for op in _ops(lambda: fused(images)))


def test_channels_last_runs_relu_and_residual_add_inside_the_convolutions() -> None:
    images, _ = _inputs(64)
    model = optimize_for_inference(_model(), channels_last=True)
    ops = _ops(lambda: model.backbone(images))
    assert "mkldnn::_convolution_pointwise" in ops
    assert not ops & {"aten::relu_", "aten::clamp_min_", "aten::add_", "aten::relu"}, sorted(ops)


def test_nchw_keeps_its_layout_and_the_plain_convolution() -> None:
    images, _ = _inputs(64)
    model = optimize_for_inference(_model(), channels_last=False)
    ops = _ops(lambda: model.backbone(images))
    assert "mkldnn::_convolution_pointwise" not in ops and "aten::conv2d" in ops


def test_nchw_bottlenecks_accumulate_their_last_convolution_into_the_shortcut() -> None:
    images, _ = _inputs(64)
    model = optimize_for_inference(_model("resnet26"), channels_last=False)
    convs = sum(e.count for e in _profile(lambda: model.backbone(images)) if e.key == "aten::conv2d")
    ops = _ops(lambda: model.backbone(images))
    assert "aten::addmm_" in ops
    assert convs == 1 + 8 * 2 + 4  # stem, two convolutions in each of 8 blocks, 4 downsamples: not conv3
    with profile() as prof:  # where autograd needs the shortcut, it is not overwritten
        model.backbone(images.requires_grad_()).sum().backward()
    assert "aten::addmm_" not in {e.key for e in prof.key_averages()}


def _profile(call) -> list:
    with torch.inference_mode(), profile() as prof:
        call()
    return list(prof.key_averages())


def test_bf16_weights_are_stored_once_and_give_autocast_results() -> None:
    model = _model()
    images, states = _inputs(64)
    fused = optimize_for_inference(copy.deepcopy(model), channels_last=True, precision="bf16")
    linears = [m for m in fused.encoder.modules() if isinstance(m, nn.Linear)]
    assert linears and all(m.weight.dtype == torch.bfloat16 for m in linears)
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
        tokens = model.encode(images).to(torch.bfloat16)
        # the transformer's linear layers get the values autocast would make: bit-identical outputs
        assert torch.equal(fused.decode(tokens, states), model.decode(tokens, states))
        got = fused(images, states)
    with torch.inference_mode():
        expected = model(images, states)
    assert (got.float() - expected).abs().max() < 0.1  # the bf16 tolerance of the benchmarks


def test_bf16_weights_are_not_cast_at_every_call() -> None:
    model = _model()
    images, states = _inputs(64)
    fused = optimize_for_inference(copy.deepcopy(model), channels_last=True, precision="bf16")

    def casts(m: nn.Module) -> int:
        with torch.inference_mode(), profile() as prof, torch.autocast("cpu", torch.bfloat16):
            m(images, states)
        return sum(e.count for e in prof.key_averages() if e.key == "aten::_to_copy")

    weights = sum(1 for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear))
    assert casts(model) >= weights > 4 * casts(fused)  # only activations are cast once fused


def test_fused_backbone_refuses_training() -> None:
    fused = fuse_for_inference(_model())
    fused.train()
    with pytest.raises(RuntimeError, match="inference only"):
        fused(*_inputs(64))


def test_backbones_it_cannot_fuse_are_left_alone() -> None:
    model = ctran.build_model(3, backbone="resnet18d", dim=64, layers=1, heads=2).eval()  # deep stem
    assert fuse_backbone(model.backbone, torch.float32) is model.backbone


@pytest.mark.parametrize("size", [(13, 16), (32, 31), (7, 7)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_strided_max_pool_equals_max_pool(size: tuple[int, int], dtype: torch.dtype) -> None:
    x = torch.randn(2, 5, *size).to(dtype)
    pool = nn.MaxPool2d(3, 2, 1)
    assert torch.equal(max_pool(x, pool), F.max_pool2d(x, 3, 2, 1))
    assert torch.equal(max_pool(x.contiguous(memory_format=CL), pool), F.max_pool2d(x, 3, 2, 1))
    assert "aten::max_pool2d_with_indices" not in _ops(lambda: max_pool(x, pool))


def test_compiled_models_leave_the_fusion_to_inductor_in_one_graph() -> None:
    model = optimize_for_inference(_model("small_cnn", 32), channels_last=True, compile=True)
    convs = [m for m in model.backbone.modules() if isinstance(m, FusedConv2d)]
    assert convs and not any(conv.post_ops for conv in convs)  # dynamo cannot trace oneDNN's fused ops
    backbone = fuse_backbone(_model("small_cnn", 32).backbone, post_ops=False)
    with torch.inference_mode():
        explained = torch._dynamo.explain(backbone)(_inputs(48)[0])
    assert explained.graph_break_count == 0
