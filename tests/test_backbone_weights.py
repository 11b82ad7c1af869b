"""Local backbone weight files, fast: loading by name, by position under another naming scheme, and every
way a file can be wrong (timm's resnet18, built without downloading anything)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ctran.errors import CTranError
from ctran.model import backbone_normalization, build_backbone, build_baseline, build_from_config, build_model
from ctran.normalization import IMAGENET, Normalization
from ctran.states import unknown_states

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


@pytest.mark.parametrize(
    "content", [b"not a state dict", b"\x80\x02."], ids=["text", "pickle-stop-on-empty-stack"]
)
def test_an_unreadable_file_names_itself_and_the_model(tmp_path: Path, content: bytes) -> None:
    """Whatever error the unpickler raises on a corrupt file (here also an IndexError), the user gets one
    message naming the file, not a traceback."""
    (tmp_path / "w.pth").write_bytes(content)
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


def _timm_names(message: str) -> list[str]:
    return message.split("similar timm models: ")[1].split(", ")


def test_an_unknown_name_suggests_at_most_eight_real_timm_models_or_none() -> None:
    """A typo gets a short, readable list of real model names to copy; a hopeless name says 'none'."""
    import timm

    with pytest.raises(CTranError) as typo:
        build_backbone("resnet10l")  # timm has far more than eight names this close
    assert str(typo.value).startswith("unknown backbone 'resnet10l'; similar timm models: ")
    listed = _timm_names(str(typo.value))
    assert len(listed) == 8 and "resnet101" in listed
    assert all(timm.is_model(name) for name in listed)
    with pytest.raises(CTranError) as hopeless:
        build_backbone("zzzqqqxx")
    assert str(hopeless.value) == "unknown backbone 'zzzqqqxx'; similar timm models: none"


def test_timm_build_failures_name_the_model_and_the_cause() -> None:
    """A bad pretrained tag or a model that cannot drop its pooling fails as a CTranError saying why."""
    with pytest.raises(CTranError) as bad_tag:
        build_backbone("resnet18.bogus")  # timm: RuntimeError, invalid pretrained tag
    cause = bad_tag.value.__cause__
    assert isinstance(cause, RuntimeError)
    assert str(bad_tag.value) == f"cannot build timm model 'resnet18.bogus': RuntimeError: {cause}"
    with pytest.raises(CTranError) as no_feature_map:
        build_backbone("crossvit_tiny_240")  # timm asserts: only token or avg pooling
    cause = no_feature_map.value.__cause__
    assert isinstance(cause, AssertionError)
    assert str(no_feature_map.value) == (
        f"timm model 'crossvit_tiny_240' cannot be used as a backbone here: {cause}"
    )


def test_pretrained_weights_are_fetched_and_an_offline_failure_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pretrained=True really asks the hub (here offline, empty cache) and the error lists every way out."""
    hub_constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(CTranError) as offline:
        build_backbone(NAME, pretrained=True)
    cause = type(offline.value.__cause__).__name__
    assert str(offline.value) == (
        f"could not fetch pretrained weights for {NAME!r} ({cause}). Either let timm download them (this "
        "machine needs internet access to the Hugging Face hub), or pass a local .pth or .safetensors "
        "state dict with --backbone-weights FILE (model.backbone_weights=FILE in a config), or train from "
        "scratch with model.pretrained=false"
    )
    with pytest.raises(CTranError) as again:
        build_baseline(3, backbone=NAME, pretrained=True)
    assert str(again.value) == str(offline.value)


def test_small_cnn_refuses_weights_with_the_exact_hint() -> None:
    """The message names the option to change, spelled as the Python argument."""
    for options in ({"pretrained": True}, {"weights_file": "w.pth"}):
        with pytest.raises(CTranError) as refused:
            build_backbone("small_cnn", **options)
        assert str(refused.value) == "small_cnn has no pretrained weights; use pretrained=False"


def test_small_cnn_features_are_rectified_at_output_stride_8() -> None:
    """Each conv is followed by BatchNorm and ReLU: the 6 x 6 feature map is non-negative, part zero."""
    torch.manual_seed(0)
    backbone = build_backbone("small_cnn").eval()
    images = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        features = backbone(images)  # (2, 128, 6, 6)
    assert features.shape == (2, backbone.num_channels, 6, 6)
    assert features.min() == 0 and (features > 0).any()


def test_a_partial_pretrained_config_falls_back_to_imagenet(monkeypatch: pytest.MonkeyPatch) -> None:
    """A registered model whose config gives a mean but no std must not crash image preparation."""
    import timm.models
    from timm.models import PretrainedCfg

    monkeypatch.setattr(
        timm.models, "get_pretrained_cfg", lambda name: PretrainedCfg(mean=(0.5,) * 3, std=None)
    )
    assert backbone_normalization("my_model") == IMAGENET
    monkeypatch.setattr(
        timm.models, "get_pretrained_cfg", lambda name: PretrainedCfg(mean=(0.5,) * 3, std=(0.25,) * 3)
    )
    assert backbone_normalization("my_model") == Normalization((0.5,) * 3, (0.25,) * 3)


def test_build_model_accepts_a_single_label_and_names_a_bad_count() -> None:
    """One label is a valid multi-label problem; zero is refused with the value given."""
    model = build_model(1, backbone="small_cnn", dim=16, layers=1, heads=2).eval()
    with torch.no_grad():
        logits = model(torch.zeros(2, 3, 48, 48), unknown_states(2, 1))  # (2, 1)
    assert logits.shape == (2, 1)
    with pytest.raises(ValueError) as refused:
        build_model(0, backbone="small_cnn", dim=16)
    assert str(refused.value) == "num_labels must be positive, got 0"


def test_build_model_passes_the_feed_forward_width_on() -> None:
    """ffn_dim sets every encoder layer's feed-forward width; the default is the paper's D."""
    wide = build_model(2, backbone="small_cnn", dim=16, layers=2, heads=2, ffn_dim=24)
    assert [layer.linear1.out_features for layer in wide.encoder.layers] == [24, 24]
    plain = build_model(2, backbone="small_cnn", dim=16, layers=2, heads=2)
    assert [layer.linear1.out_features for layer in plain.encoder.layers] == [16, 16]


def test_a_checkpoint_config_never_loads_its_initial_backbone_weights(tmp_path: Path) -> None:
    """Rebuilding from a checkpoint drops pretrained and backbone_weights: the checkpoint has the weights."""
    initial = {
        "num_labels": 3,
        "backbone": "small_cnn",
        "pretrained": True,
        "backbone_weights": str(tmp_path / "gone.pth"),
    }
    for config in (
        {"kind": "ctran", "dim": 16, "layers": 1, "heads": 2, **initial},
        {"kind": "baseline", **initial},
    ):
        assert build_from_config(config).backbone.num_channels == 128
        with pytest.raises(CTranError, match="small_cnn has no pretrained weights"):
            build_from_config(config, initial_weights=True)
