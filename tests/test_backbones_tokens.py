"""Transformer backbones from timm give C-Tran their patch grid: ViT tokens (class token dropped) and Swin's
channels-last maps come out as (B, C, h, w), token (i, j) where the backbone put it."""

from __future__ import annotations

import pytest
import torch

from ctran.model import build_model
from ctran.model.backbone import TimmBackbone


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))


def test_vit_tokens_become_the_patch_grid_without_the_class_token(images: torch.Tensor) -> None:
    torch.manual_seed(0)
    backbone = TimmBackbone("vit_tiny_patch16_224").eval()
    assert backbone.num_prefix_tokens == 1 and backbone.num_channels == 192
    with torch.no_grad():
        grid = backbone(images)  # (B, C, 14, 14)
        tokens = backbone.body.forward_features(images)  # (B, 1 + 196, C)
    assert grid.shape == (2, 192, 14, 14)
    for i, j in ((0, 0), (0, 13), (5, 2), (13, 13)):
        torch.testing.assert_close(grid[:, :, i, j], tokens[:, 1 + i * 14 + j])


def test_swin_channels_last_maps_are_permuted_to_channels_first(images: torch.Tensor) -> None:
    torch.manual_seed(0)
    backbone = TimmBackbone("swin_tiny_patch4_window7_224").eval()
    assert backbone.output_fmt == "NHWC" and backbone.num_prefix_tokens == 0
    with torch.no_grad():
        grid = backbone(images)
        nhwc = backbone.body.forward_features(images)  # (B, 7, 7, C)
    assert grid.shape == (2, backbone.num_channels, 7, 7)
    torch.testing.assert_close(grid, nhwc.permute(0, 3, 1, 2))


def test_ctran_on_a_vit_backbone_has_one_token_per_patch(images: torch.Tensor) -> None:
    model = build_model(5, backbone="vit_tiny_patch16_224", dim=32, layers=1, heads=2).eval()
    with torch.no_grad():
        memory = model.encode(images[:1])
    assert memory.shape[1] == 196  # 14 x 14 patches, no class token
