"""Local backbone weight files, fast: loading by name, by position under another naming scheme, and every
way a file can be wrong (timm's resnet18, built without downloading anything)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ctran.errors import CTranError
from ctran.model import backbone_normalization, build_backbone, build_baseline
from ctran.normalization import IMAGENET

NAME = "resnet18"


def _reference(seed: int = 0) -> dict[str, torch.Tensor]:
    """A headless resnet18's state dict with distinct random values, and a classifier after it."""
    torch.manual_seed(seed)
    state = {
        k: torch.randn_like(v.float()).to(v.dtype) for k, v in build_backbone(NAME).body.state_dict().items()
    }
    return {**state, "fc.weight": torch.randn(1000, 512), "fc.bias": torch.randn(1000)}


def _assert_loaded(backbone: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    for key, value in backbone.body.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_a_file_in_timm_names_loads_and_its_classifier_is_ignored(tmp_path: Path) -> None:
    state = _reference()
    torch.save(state, tmp_path / "w.pth")
    _assert_loaded(build_backbone(NAME, weights_file=tmp_path / "w.pth"), state)


def test_the_plain_weights_are_loaded_not_the_ema_copy(tmp_path: Path) -> None:
    state, ema = _reference(0), _reference(1)
    torch.save({"state_dict": state, "state_dict_ema": ema}, tmp_path / "w.pth")
    _assert_loaded(build_backbone(NAME, weights_file=tmp_path / "w.pth"), state)


@pytest.mark.parametrize("classifier", [True, False])
def test_another_naming_scheme_loads_by_position_and_says_so(
    tmp_path: Path, capsys, classifier: bool
) -> None:
    state = _reference()
    if not classifier:
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    renamed = {f"layer_{i:03d}": value for i, value in enumerate(state.values())}
    torch.save(renamed, tmp_path / "other.pth")
    _assert_loaded(build_backbone(NAME, weights_file=tmp_path / "other.pth"), state)
    count = len(state) - 2 * classifier  # the classifier's two tensors are left out
    assert capsys.readouterr().out == (
        f"other.pth: names differ from the model's; loaded {count} tensors by position (shapes match)\n"
    )


@pytest.mark.parametrize("damage", ["shapes", "short"])
def test_a_file_of_another_architecture_is_refused_naming_what_is_missing(
    tmp_path: Path, damage: str
) -> None:
    values = list(_reference().values())
    if damage == "shapes":
        values[0], values[1] = values[1], values[0]  # conv1.weight and bn1.weight: shapes no longer match
    else:
        values = values[:-3]  # one backbone tensor short
    torch.save({f"layer_{i:03d}": v for i, v in enumerate(values)}, tmp_path / "w.pth")
    # BatchNorm fills in a missing num_batches_tracked itself
    own = [k for k in build_backbone(NAME).body.state_dict() if not k.endswith("num_batches_tracked")]
    with pytest.raises(CTranError) as refused:
        build_backbone(NAME, weights_file=tmp_path / "w.pth")
    assert str(refused.value) == (
        f"{tmp_path / 'w.pth'} does not hold {NAME} weights: {len(own)} of the model's tensors are missing "
        f"from it (e.g. {', '.join(own[:5])})"
    )


def test_an_unreadable_file_names_itself_and_the_model(tmp_path: Path) -> None:
    (tmp_path / "w.pth").write_bytes(b"not a state dict")
    with pytest.raises(
        CTranError, match=rf"^cannot load backbone weights {tmp_path / 'w.pth'} into {NAME}: "
    ):
        build_backbone(NAME, weights_file=tmp_path / "w.pth")
    with pytest.raises(
        CTranError, match=r"^backbone weights file not found: .*missing.pth \(expected a \.pth"
    ):
        build_backbone(NAME, weights_file=tmp_path / "missing.pth")


def test_normalisation_comes_from_the_backbones_pretrained_config() -> None:
    assert backbone_normalization("small_cnn") == IMAGENET
    assert backbone_normalization(NAME) == IMAGENET
    tf = backbone_normalization("tf_efficientnet_lite0")
    assert tf.mean == (0.5, 0.5, 0.5) and tf.std == (0.5, 0.5, 0.5)


def test_build_baseline_passes_its_backbone_options_on(tmp_path: Path) -> None:
    assert build_baseline(3).backbone.body.default_cfg["architecture"] == "resnet101"  # the paper's
    state = _reference()
    torch.save(state, tmp_path / "w.pth")
    _assert_loaded(build_baseline(3, backbone=NAME, backbone_weights=tmp_path / "w.pth").backbone, state)
    with pytest.raises(CTranError, match="small_cnn has no pretrained weights"):
        build_baseline(3, backbone="small_cnn", pretrained=True)
