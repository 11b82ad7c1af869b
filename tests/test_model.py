"""C-Tran and the pooled-CNN baseline: shapes, attention, readout, embeddings, backbones, configs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import ctran
from ctran.errors import CTranError
from ctran.model import CTran, Output, PooledLinear, build_from_config
from ctran.model.position_encoding import PositionEmbeddingSine
from ctran.model.readout import PerLabelLinear
from ctran.model.transformer import one_way_mask
from ctran.states import NEGATIVE, POSITIVE, UNKNOWN, unknown_states

NUM_LABELS = 6
DIM = 32
HEADS = 4
LAYERS = 2


def _small(seed: int = 0, **options) -> CTran:
    torch.manual_seed(seed)
    kwargs = {"backbone": "small_cnn", "layers": LAYERS, "heads": HEADS, "dim": DIM, "pretrained": False}
    kwargs.update(options)
    return ctran.build_model(NUM_LABELS, **kwargs)


def _images(batch: int = 2, size: int = 48, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _states(batch: int, num_labels: int = NUM_LABELS, seed: int = 2) -> torch.Tensor:
    return torch.randint(-1, 2, (batch, num_labels), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------- shapes


def test_small_cnn_48_gives_36_tokens_and_logits_shape():
    model = _small().eval()
    images = _images(3)
    with torch.no_grad():
        tokens = model.encode(images)
        logits = model(images, unknown_states(3, NUM_LABELS))
    assert tokens.shape == (3, 36, DIM)
    assert logits.shape == (3, NUM_LABELS)
    assert torch.isfinite(logits).all()


def test_forward_equals_decode_of_encode():
    model = _small().eval()
    images, states = _images(2), _states(2)
    with torch.no_grad():
        fused = model(images, states)
        split = model.decode(model.encode(images), states)
    torch.testing.assert_close(fused, split, atol=1e-6, rtol=0)


@pytest.mark.parametrize("attention", ["full", "one_way"])
@pytest.mark.parametrize("inference_mode", [False, True])
def test_return_attention_matches_fused_path(inference_mode, attention):
    """Asking for attention must not change the logits (fused split path vs explicit weights)."""
    model = _small(attention=attention).eval()
    images, states = _images(2), _states(2)
    context = torch.inference_mode() if inference_mode else torch.no_grad()
    with context:
        fused = model(images, states)
        out = model(images, states, return_attention=True)
    assert isinstance(out, Output)
    assert out.logits.shape == (2, NUM_LABELS)
    torch.testing.assert_close(out.logits, fused, atol=1e-5, rtol=0)
    assert len(out.attentions) == LAYERS
    n = 36 + NUM_LABELS
    for attention in out.attentions:
        assert attention.shape == (2, HEADS, n, n)
        assert (attention >= 0).all()
        torch.testing.assert_close(attention.sum(-1), torch.ones(2, HEADS, n), atol=1e-5, rtol=0)


def test_decode_rejects_malformed_states():
    model = _small().eval()
    with torch.no_grad():
        tokens = model.encode(_images(2))
        with pytest.raises(ValueError):
            model.decode(tokens, unknown_states(2, NUM_LABELS + 1))
        with pytest.raises(ValueError):
            model.decode(tokens, torch.full((2, NUM_LABELS), 2))


def test_num_labels_must_be_positive():
    with pytest.raises(ValueError):
        ctran.build_model(0, backbone="small_cnn", dim=DIM)


# ------------------------------------------------------------------------------------------ timm backbones


def test_timm_resnet18_with_projection():
    torch.manual_seed(0)
    model = ctran.build_model(4, backbone="resnet18", layers=1, heads=4, dim=64, pretrained=False).eval()
    assert model.backbone.num_channels == 512
    assert isinstance(model.input_proj, nn.Conv2d)
    assert model.input_proj.kernel_size == (1, 1)
    assert (model.input_proj.in_channels, model.input_proj.out_channels) == (512, 64)
    images = _images(2, size=64)
    with torch.no_grad():
        tokens = model.encode(images)
        logits = model(images, _states(2, 4))
    assert tokens.shape == (2, 4, 64)  # 64 / 32 = 2 -> 2 x 2 tokens
    assert logits.shape == (2, 4)
    assert torch.isfinite(logits).all()


def test_timm_backbone_dim_equal_channels_has_identity_projection():
    torch.manual_seed(0)
    model = ctran.build_model(3, backbone="resnet18", layers=1, heads=4, dim=512, pretrained=False).eval()
    assert isinstance(model.input_proj, nn.Identity)
    with torch.no_grad():
        logits = model(_images(1, size=64), unknown_states(1, 3))
    assert logits.shape == (1, 3)


def test_paper_defaults_resnet101():
    model = ctran.build_model(80).eval()
    assert model.backbone.num_channels == 2048
    assert isinstance(model.input_proj, nn.Identity)
    assert len(model.encoder.layers) == 3
    layer = model.encoder.layers[0]
    assert layer.self_attn.num_heads == 4
    assert layer.linear1.out_features == 2048
    assert layer.dropout.p == pytest.approx(0.1)
    assert model.readout.weight.shape == (80, 2048)
    with torch.no_grad():
        features = model.backbone(torch.zeros(1, 3, 64, 64))
    # Output stride 32: 64 -> 2, so 576 x 576 inputs give the paper's 18 x 18 = 324 image tokens.
    assert features.shape == (1, 2048, 2, 2)
    assert 576 // (64 // features.shape[-1]) == 18


def test_unknown_timm_backbone_lists_similar_names():
    with pytest.raises(CTranError, match="resnet_foo") as info:
        ctran.build_model(3, backbone="resnet_foo", dim=64)
    message = str(info.value)
    assert "similar timm models" in message
    listed = message.split("similar timm models:")[1]
    assert "resnet" in listed


def test_pretrained_without_internet_raises_clear_error(monkeypatch):
    """This machine is offline: fetching weights must fail with a CTranError pointing at a local file.

    Hub offline mode is switched on (instead of waiting ~50 s for the hub's network retries); nothing is
    mocked: the failure is timm's real one.
    """
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True, raising=False)
    try:
        ctran.build_model(3, backbone="resnet18", dim=64, pretrained=True)
    except CTranError as err:
        message = str(err)
        assert "resnet18" in message
        assert "local" in message  # points at a local weights file ...
        assert ".pth" in message or ".safetensors" in message
        assert "pretrained" in message.lower()  # ... or at training from scratch
    else:
        pytest.skip("pretrained weights were available locally: nothing to check")


def test_small_cnn_has_no_pretrained_weights():
    with pytest.raises(CTranError, match="small_cnn"):
        ctran.build_model(3, backbone="small_cnn", dim=DIM, pretrained=True)


def test_local_backbone_weights_file_is_loaded(tmp_path):
    import timm

    source = timm.create_model("resnet18", num_classes=0, global_pool="")
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    torch.manual_seed(123)  # a different random init than ``source``
    model = ctran.build_model(3, backbone="resnet18", dim=64, layers=1, backbone_weights=path)
    loaded = model.backbone.body.state_dict()
    expected = source.state_dict()
    assert loaded.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key


def test_missing_backbone_weights_file(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(CTranError, match=r"nope\.pth"):
        ctran.build_model(3, backbone="resnet18", dim=64, backbone_weights=missing)


def test_backbone_weights_file_with_foreign_keys_is_rejected(tmp_path):
    import timm

    reference = timm.create_model("resnet18", num_classes=0, global_pool="")
    prefixed = {f"module.{k}": v for k, v in reference.state_dict().items()}  # as saved under DataParallel
    torch.save(prefixed, tmp_path / "prefixed.pth")
    model = ctran.build_model(
        3, backbone="resnet18", dim=64, layers=1, backbone_weights=tmp_path / "prefixed.pth"
    )
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(model.backbone.body.state_dict()[key], value)
    torch.save({"foo": torch.zeros(3)}, tmp_path / "foreign.pth")
    with pytest.raises(CTranError, match="does not hold resnet18 weights"):
        ctran.build_model(3, backbone="resnet18", dim=64, layers=1, backbone_weights=tmp_path / "foreign.pth")


# ---------------------------------------------------------------------------------------------- readout


def test_per_label_linear_equals_loop_and_official_diagonal():
    torch.manual_seed(0)
    num_labels, dim = 7, 16
    readout = PerLabelLinear(num_labels, dim)
    h = torch.randn(5, num_labels, dim)
    out = readout(h)
    assert out.shape == (5, num_labels)

    W, b = readout.weight, readout.bias
    loop = torch.stack([h[:, label] @ W[label] + b[label] for label in range(num_labels)], dim=1)
    torch.testing.assert_close(out, loop, atol=1e-6, rtol=0)

    official = (F.linear(h, W, b) * torch.eye(num_labels)).sum(-1)  # (B, L, L) diagonal
    torch.testing.assert_close(out, official, atol=1e-5, rtol=0)


def test_per_label_linear_is_linear_layout_and_label_local():
    """Parameters have nn.Linear(D, L)'s layout (O(L*D)); logit l depends only on token l."""
    torch.manual_seed(0)
    readout = PerLabelLinear(4, 8)
    assert readout.weight.shape == (4, 8)
    assert readout.bias.shape == (4,)
    assert sum(p.numel() for p in readout.parameters()) == 4 * 8 + 4
    linear = nn.Linear(8, 4)
    readout.load_state_dict(linear.state_dict())  # official nn.Linear weights load unchanged
    h = torch.randn(3, 4, 8)
    changed = h.clone()
    changed[:, 2] += 1.0
    diff = (readout(changed) - readout(h)).abs()
    assert diff[:, [0, 1, 3]].max() == 0
    assert diff[:, 2].min() > 0


# ---------------------------------------------------------------------------------------------- embeddings


def test_embedding_initialisation_scale():
    model = _small()
    bound = 1 / math.sqrt(DIM)
    label = model.label_embed.weight.detach()
    state = model.state_embed.weight.detach()
    assert label.shape == (NUM_LABELS, DIM)
    assert state.shape == (3, DIM)
    assert label.abs().max() <= bound + 1e-7
    assert state.abs().max() <= bound + 1e-7
    # On that scale, not vanishingly small (e.g. uniform, not zeros).
    assert label.abs().max() > 0.5 * bound
    assert state[1:].abs().max() > 0.5 * bound
    assert torch.equal(state[0], torch.zeros(DIM))


def test_unknown_state_row_gets_no_gradient():
    model = _small().train()
    states = torch.tensor([[UNKNOWN, NEGATIVE, POSITIVE, UNKNOWN, NEGATIVE, POSITIVE]] * 2)
    logits = model(_images(2), states)
    logits.pow(2).sum().backward()
    grad = model.state_embed.weight.grad
    assert torch.equal(grad[0], torch.zeros(DIM))
    assert grad[1].abs().sum() > 0
    assert grad[2].abs().sum() > 0
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    optimizer.step()
    assert torch.equal(model.state_embed.weight[0].detach(), torch.zeros(DIM))
    assert model.state_embed.weight[1:].detach().abs().sum() > 0


def test_known_states_change_logits_and_eval_is_deterministic():
    model = _small().eval()
    images = _images(2)
    unknown = unknown_states(2, NUM_LABELS)
    positive = unknown.clone()
    positive[:, 0] = POSITIVE
    negative = unknown.clone()
    negative[:, 0] = NEGATIVE
    with torch.no_grad():
        base = model(images, unknown)
        again = model(images, unknown)
        told_pos = model(images, positive)
        told_neg = model(images, negative)
    assert torch.equal(base, again)
    assert (told_pos - base).abs().max() > 1e-4
    assert (told_neg - base).abs().max() > 1e-4
    assert (told_pos - told_neg).abs().max() > 1e-4
    # Other labels are affected too (through attention), not just the revealed one.
    assert (told_pos[:, 1:] - base[:, 1:]).abs().max() > 1e-5


def test_train_mode_uses_dropout():
    model = _small(dropout=0.5).train()
    images, states = _images(2), _states(2)
    with torch.no_grad():
        first = model(images, states)
        second = model(images, states)
    assert not torch.allclose(first, second)


# ---------------------------------------------------------------------------------------------- position


@pytest.mark.parametrize(("size", "tokens"), [(48, 36), (64, 64)])
def test_position_encoding_works_at_several_sizes(size, tokens):
    model = _small(position_encoding=True).eval()
    with torch.no_grad():
        encoded = model.encode(_images(2, size=size))
        logits = model(_images(2, size=size), _states(2))
    assert encoded.shape == (2, tokens, DIM)
    assert logits.shape == (2, NUM_LABELS)
    assert torch.isfinite(logits).all()


def test_position_encoding_is_added_to_tokens():
    with_pos = _small(position_encoding=True).eval()
    without = _small(position_encoding=False).eval()
    without.load_state_dict(with_pos.state_dict())  # the encoding has no parameters
    images = _images(2)
    with torch.no_grad():
        difference = with_pos.encode(images) - without.encode(images)
    expected = PositionEmbeddingSine(DIM)(6, 6, torch.device("cpu"), torch.float32)
    torch.testing.assert_close(difference, expected.expand(2, -1, -1), atol=1e-5, rtol=0)


def test_position_embedding_sine_properties():
    pe = PositionEmbeddingSine(32)
    h, w = 5, 7
    enc = pe(h, w, torch.device("cpu"), torch.float32)
    assert enc.shape == (h * w, 32)
    assert enc.min() >= -1 and enc.max() <= 1
    assert torch.cdist(enc, enc).add(torch.eye(h * w) * 10).min() > 1e-3  # all rows distinct
    grid = enc.reshape(h, w, 32)
    # Row-major: the first half encodes only the row, the second half only the column.
    assert torch.equal(grid[:, :1, :16].expand(h, w, 16), grid[..., :16])
    assert torch.equal(grid[:1, :, 16:].expand(h, w, 16), grid[..., 16:])
    assert pe(2, 3, torch.device("cpu"), torch.float16).dtype == torch.float16


def test_position_embedding_sine_values_follow_the_formula():
    """Entry by entry, in float64: row channels sin/cos(2 pi (i + 1/2) / h * T^(-k / (D/4))), then the same
    for the column; a 3 x 4 grid, D = 8, T = 100 (not the default, so the temperature must be honoured)."""
    h, w, dim, temperature = 3, 4, 8, 100.0
    enc = PositionEmbeddingSine(dim, temperature)(h, w, torch.device("cpu"), torch.float64)
    quarter = dim // 4
    expected = torch.empty(h * w, dim, dtype=torch.float64)
    for i in range(h):
        for j in range(w):
            for k in range(quarter):
                freq = temperature ** (-k / quarter)
                row, col = 2 * math.pi * (i + 0.5) / h * freq, 2 * math.pi * (j + 0.5) / w * freq
                values = (math.sin(row), math.cos(row), math.sin(col), math.cos(col))
                for part, value in enumerate(values):
                    expected[i * w + j, part * quarter + k] = value
    torch.testing.assert_close(enc, expected, rtol=0, atol=1e-6)
    assert PositionEmbeddingSine(dim).temperature == 10000.0


def test_position_embedding_needs_dim_divisible_by_4():
    with pytest.raises(ValueError, match="divisible by 4"):
        PositionEmbeddingSine(30)


# ---------------------------------------------------------------------------------------------- configs


def test_build_from_config_ctran_round_trip():
    config = {"kind": "ctran", "num_labels": 5, "backbone": "small_cnn", "dim": 32, "layers": 1, "heads": 2}
    torch.manual_seed(0)
    first = build_from_config(config).eval()
    torch.manual_seed(1)
    second = build_from_config(config).eval()
    assert isinstance(first, CTran)
    assert first.num_labels == 5 and len(first.encoder.layers) == 1
    second.load_state_dict(first.state_dict())  # same architecture: strict load works
    images, states = _images(2), _states(2, 5)
    with torch.no_grad():
        assert torch.equal(first(images, states), second(images, states))


def test_build_from_config_defaults_and_ignores_pretrained():
    # "pretrained" would make small_cnn raise; a stored config must rebuild without any download.
    model = build_from_config(
        {"num_labels": 3, "backbone": "small_cnn", "dim": 16, "layers": 1, "heads": 2, "pretrained": True}
    )
    assert isinstance(model, CTran)


def test_build_from_config_baseline():
    model = build_from_config({"kind": "baseline", "num_labels": 4, "backbone": "small_cnn"})
    assert isinstance(model, PooledLinear)
    assert model.num_labels == 4


def test_build_from_config_unknown_kind():
    with pytest.raises(ValueError, match="kind"):
        build_from_config({"kind": "resnet", "num_labels": 3})


# ---------------------------------------------------------------------------------------------- baseline


def test_baseline_ignores_states_and_has_target_outputs():
    torch.manual_seed(0)
    baseline = ctran.build_baseline(5, backbone="small_cnn").eval()
    images = _images(3)
    with torch.no_grad():
        plain = baseline(images)
        a = baseline(images, _states(3, 9, seed=1))
        b = baseline(images, _states(3, 9, seed=2))
        split = baseline.decode(baseline.encode(images), _states(3, 9))
    assert plain.shape == (3, 5)
    assert torch.equal(a, plain)
    assert torch.equal(b, plain)
    torch.testing.assert_close(split, plain, atol=1e-6, rtol=0)
    assert baseline.encode(images).shape == (3, 128)


# ------------------------------------------------------------------------------------ one-way attention


def _one_way_and_full(layers: int = 3) -> tuple[CTran, CTran]:
    """The same weights under both attention patterns."""
    one_way = _small(layers=layers, attention="one_way").eval()
    full = _small(layers=layers, attention="full").eval()
    full.load_state_dict(one_way.state_dict())  # the pattern has no parameters
    return one_way, full


def test_one_way_cached_logits_equal_the_uncached_forward():
    """decode(encode()) runs only label rows over cached per-layer image keys/values; the whole masked
    sequence (explicit weights, and the fused kernel with a block mask) must give the same logits."""
    model, _ = _one_way_and_full()
    images, states = _images(3), _states(3)
    with torch.no_grad():
        memory = model.encode(images)
        cached = model.decode(memory, states)
        explicit = model(images, states, return_attention=True).logits
        x = model.norm(torch.cat([model.image_tokens(images), model.label_tokens(states)], dim=1))
        mask = one_way_mask(36, NUM_LABELS)
        masked, _ = model.encoder(x, keep=NUM_LABELS, mask=mask)
    assert memory.shape == (3, 36, 3 * 2 * DIM)  # every layer's image keys and values
    torch.testing.assert_close(cached, explicit, atol=1e-5, rtol=0)
    torch.testing.assert_close(cached, model.readout(masked), atol=1e-5, rtol=0)


def test_one_way_image_tokens_never_attend_to_labels_and_full_ones_do():
    one_way, full = _one_way_and_full()
    images, states = _images(2), _states(2)
    with torch.no_grad():
        one = one_way(images, states, return_attention=True)
        every = full(images, states, return_attention=True)
    for weights in one.attentions:
        assert torch.equal(weights[:, :, :36, 36:], torch.zeros(2, HEADS, 36, NUM_LABELS))
        assert weights[:, :, 36:, 36:].min() > 0  # label tokens still read each other
    assert every.attentions[0][:, :, :36, 36:].min() > 0
    assert (one.logits - every.logits).abs().max() > 1e-4  # the pattern changes the model


def test_one_way_decode_computes_only_label_rows():
    """The FLOPs of a one-way decode are those of the L label rows (plus attention over T + L keys):
    recomputing any image row would add at least its key/value projection."""
    from torch.utils.flop_counter import FlopCounterMode

    model, _ = _one_way_and_full()
    batch, labels, tokens, layers = 2, NUM_LABELS, 36, 3
    with torch.no_grad():
        memory = model.encode(_images(batch))
        with FlopCounterMode(display=False) as counter:
            model.decode(memory, _states(batch))
    per_layer = 2 * batch * labels * DIM * (3 * DIM + DIM + 2 * DIM)  # Q/K/V, output projection, FFN
    products = layers * per_layer + 2 * batch * labels * DIM  # + readout
    attention = layers * 4 * batch * labels * (tokens + labels) * DIM
    image_kv = 2 * batch * tokens * DIM * 2 * DIM  # one layer's image keys/values: what must not recur
    assert attention < image_kv
    assert products <= counter.get_total_flops() <= products + attention


@pytest.mark.parametrize("attention", ["full", "one_way"])
def test_one_memory_serves_many_state_rows(attention):
    model = _small(attention=attention).eval()
    states = _states(4)
    with torch.no_grad():
        memory = model.encode(_images(1))
        shared = model.decode(memory, states)
        repeated = model.decode(memory.expand(4, -1, -1).contiguous(), states)
    torch.testing.assert_close(shared, repeated, atol=1e-6, rtol=0)


def test_one_way_trains_every_stream():
    model = _small(attention="one_way").train()
    model(_images(2), _states(2)).pow(2).sum().backward()
    for name in ("backbone", "encoder.layers.0.linear1", "encoder.layers.1.self_attn", "label_embed"):
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(name)]
        assert grads and all(g is not None and g.abs().sum() > 0 for g in grads), name


def test_attention_pattern_is_validated_and_recorded(tmp_path):
    from ctran.checkpoint import load_checkpoint, save_checkpoint
    from ctran.config import load_config

    with pytest.raises(CTranError, match="model.attention"):
        load_config("digits", ["model.attention=both"])
    with pytest.raises(ValueError, match="one_way"):
        _small(attention="both")
    assert load_config("digits").model.attention == "full"  # the paper's, by default
    config = {"kind": "ctran", "num_labels": NUM_LABELS, "backbone": "small_cnn", "dim": DIM, "heads": HEADS}
    model = build_from_config({**config, "attention": "one_way"}).eval()
    path = save_checkpoint(tmp_path / "one_way.pt", model, {**config, "attention": "one_way"}, list("abcdef"))
    loaded, _ = load_checkpoint(path)
    assert loaded.attention == "one_way"
    images, states = _images(2), _states(2)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images, states), model(images, states), atol=0, rtol=0)
    assert build_from_config(config).attention == "full"  # checkpoints from before the option


@pytest.mark.parametrize("attention", ["full", "one_way"])
def test_tabulated_label_projections_give_the_same_logits_for_less_work(attention):
    """After ``freeze_label_projections`` decode looks the first layer's label Q/K/V up (one matrix product
    of L rows fewer per image) and gives the same logits; training ignores the table."""
    from torch.utils.flop_counter import FlopCounterMode

    model = _small(layers=3, attention=attention).eval()
    images, states = _images(2), _states(2)

    def decode_with_flops() -> tuple[torch.Tensor, int]:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            logits = model.decode(memory, states)
        return logits, counter.get_total_flops()

    with torch.no_grad():
        memory = model.encode(images)
    computed, flops = decode_with_flops()
    model.freeze_label_projections()
    assert model.label_qkv.shape == (3, NUM_LABELS, 3 * DIM)
    looked_up, fewer = decode_with_flops()
    torch.testing.assert_close(looked_up, computed, atol=1e-5, rtol=0)
    assert flops - fewer == 2 * 2 * NUM_LABELS * DIM * 3 * DIM  # batch 2: the first layer's label Q/K/V
    with torch.no_grad():
        model.state_embed.weight.mul_(3)  # the table is now stale: eval uses it, training must not
        stale = model.decode(memory, states)
        model.train()
        torch.manual_seed(0)
        trained = model.decode(memory, states)
        model.label_qkv = None
        torch.manual_seed(0)
        fresh = model.decode(memory, states)
    assert (stale - computed).abs().max() > 1e-4 and torch.equal(trained, fresh)


def _random_biases(model: CTran) -> CTran:
    """Every transformer bias made non-zero (attention's are zero at initialisation, never after training)."""
    with torch.no_grad():
        for name, value in model.encoder.named_parameters():
            if name.endswith("bias"):
                value.copy_(torch.randn_like(value) * 0.5)
    return model


@pytest.mark.parametrize("attention", ["full", "one_way"])
def test_fast_paths_use_the_attention_biases_like_the_module_does(attention):
    """The fused-kernel paths (forward, decode of encode, the Q/K/V table) against the path through
    ``nn.MultiheadAttention`` itself (``return_attention=True``), with non-zero biases everywhere."""
    model = _random_biases(_small(attention=attention)).eval()
    images, states = _images(2), _states(2)
    with torch.no_grad():
        reference = model(images, states, return_attention=True).logits
        fast = model(images, states)
        cached = model.decode(model.encode(images), states)
        model.freeze_label_projections()
        tabulated = model.decode(model.encode(images), states)
    for logits in (fast, cached, tabulated):
        torch.testing.assert_close(logits, reference, atol=1e-5, rtol=0)


def test_label_projection_table_in_bf16_matches_bf16_decoding():
    """A table made for bf16 (``freeze_label_projections(torch.bfloat16)``, as fusion does for bf16) holds
    what decode computes under bf16 autocast, within bf16 rounding."""
    model = _random_biases(_small(attention="one_way")).eval()
    images, states = _images(2), _states(2)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        memory = model.encode(images)
        computed = model.decode(memory, states).float()
    model.freeze_label_projections(torch.bfloat16)
    assert model.label_qkv.dtype == torch.bfloat16
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        looked_up = model.decode(memory, states).float()
    torch.testing.assert_close(looked_up, computed, atol=0.05, rtol=0)


def test_position_embedding_is_made_in_float32_on_the_requested_device():
    """Same values in every dtype (computed in float32, then cast), even under a float64 default dtype;
    and built where the tokens are (here the meta device), never on the CPU first."""
    pe = PositionEmbeddingSine(16)
    reference = pe(3, 5, torch.device("cpu"), torch.float32)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        wide = pe(3, 5, torch.device("cpu"), torch.float64)
    finally:
        torch.set_default_dtype(previous)
    assert wide.dtype == torch.float64 and torch.equal(wide, reference.double())
    assert pe(3, 5, torch.device("meta"), torch.bfloat16).device.type == "meta"
    assert one_way_mask(4, 2, torch.device("meta")).device.type == "meta"


# ------------------------------------------------------------------------- defaults, dtypes, devices


def test_ctran_class_defaults_are_the_papers() -> None:
    """``CTran(backbone, L)`` built directly has the paper's settings, as ``build_model`` documents."""
    from ctran.model.backbone import SmallCNN
    from ctran.model.transformer import Encoder

    with torch.device("meta"):  # D = 2048: shapes only, no memory
        model = CTran(SmallCNN(), 80)
    assert model.readout.weight.shape == (80, 2048)
    assert len(model.encoder.layers) == 3
    layer = model.encoder.layers[0]
    assert layer.self_attn.num_heads == 4
    assert layer.linear1.out_features == 2048
    assert layer.dropout.p == pytest.approx(0.1)
    assert layer.self_attn.dropout == pytest.approx(0.1)
    assert model.position is None
    assert model.attention == "full"
    assert Encoder(8, 2, 1, 8, 0.0).attention == "full"


def test_unknown_attention_pattern_error_lists_the_choices() -> None:
    """The error names every valid pattern, comma-separated, and the rejected value."""
    with pytest.raises(ValueError) as info:
        _small(attention="both")
    assert str(info.value) == "attention must be one of full, one_way, got 'both'"


def test_label_projection_table_is_not_saved_in_checkpoints() -> None:
    """The table is derived from the weights: a frozen model's state dict loads strictly into a fresh one."""
    model = _small().eval()
    keys = set(model.state_dict())
    model.freeze_label_projections()
    assert set(model.state_dict()) == keys
    fresh = _small(seed=1)
    fresh.load_state_dict(model.state_dict())  # strict: no unexpected "label_qkv"
    assert fresh.label_qkv is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_label_projection_table_has_the_requested_dtype_without_warnings(dtype: torch.dtype) -> None:
    """``freeze_label_projections(dtype)`` tabulates in that precision (fp16 too, not the autocast default)
    and says nothing for float32 (no autocast warning)."""
    import warnings

    model = _small().eval()
    images, states = _images(2), _states(2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.freeze_label_projections(dtype)
    assert model.label_qkv.dtype == dtype
    with torch.no_grad(), torch.autocast("cpu", dtype, enabled=dtype != torch.float32):
        looked_up = model.decode(model.encode(images), states).float()
        model.label_qkv = None
        computed = model.decode(model.encode(images), states).float()
    torch.testing.assert_close(looked_up, computed, atol=0.05, rtol=0)


def test_bf16_table_still_serves_float32_decoding() -> None:
    """A table made for bf16 decoding, used by a plain float32 decode: float32 logits within bf16 rounding."""
    for attention in ("full", "one_way"):
        model = _random_biases(_small(attention=attention)).eval()
        images, states = _images(2), _states(2)
        with torch.no_grad():
            memory = model.encode(images)
            computed = model.decode(memory, states)
            model.freeze_label_projections(torch.bfloat16)
            looked_up = model.decode(memory, states)
        assert looked_up.dtype == torch.float32, attention
        torch.testing.assert_close(looked_up, computed, atol=0.05, rtol=0)


def test_bf16_autocast_keeps_memory_in_bf16_and_explanations_match_predictions() -> None:
    """Under bf16 autocast the cached memory is bf16 (half the cache, position encoding included), and
    ``return_attention=True`` rounds the label tokens as the fused path does: a large common offset in the
    label embeddings (which bf16 resolves coarsely) must not make the two logits disagree."""
    model = _small(position_encoding=True).eval()
    with torch.no_grad():
        model.label_embed.weight.add_(8.0)  # LayerNorm removes it; bf16 rounding at 8 is 2^-5
    images, states = _images(2), _states(2)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        memory = model.encode(images)
        fused = model.decode(memory, states).float()
        explicit = model(images, states, return_attention=True).logits.float()
    assert memory.dtype == torch.bfloat16
    torch.testing.assert_close(explicit, fused, atol=0.03, rtol=0)


def test_encode_builds_the_position_encoding_on_the_tokens_device() -> None:
    """encode runs wholly on the model's device (here meta: nothing may be made on the CPU on the way)."""
    model = _small(position_encoding=True).to("meta").eval()
    with torch.no_grad():
        memory = model.encode(torch.empty(2, 3, 48, 48, device="meta"))
    assert memory.device.type == "meta"
    assert memory.shape == (2, 36, DIM)


# ---------------------------------------------------------------------------------------------- readout init


def test_per_label_linear_initialisation_matches_nn_linear_range() -> None:
    """Weights and biases uniform in ±1/sqrt(D), as ``nn.Linear(D, L)`` starts (both signs, whole range)."""
    torch.manual_seed(0)
    readout = PerLabelLinear(400, 16)
    bound = 1 / math.sqrt(16)
    for values in (readout.weight.detach(), readout.bias.detach()):
        assert values.abs().max() <= bound
        assert values.min() < -0.9 * bound and values.max() > 0.9 * bound


def test_per_label_linear_follows_the_input_dtype() -> None:
    """bf16 label outputs give bf16 logits (float32 parameters cast), equal to the float32 ones within
    bf16 rounding."""
    torch.manual_seed(0)
    readout = PerLabelLinear(5, 16)
    h = torch.randn(3, 5, 16)
    with torch.no_grad():
        low = readout(h.bfloat16())
        reference = readout(h)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), reference, atol=0.05, rtol=0)


# ------------------------------------------------------------------------------------ encoder internals


def test_attention_weights_are_dropped_out_in_training() -> None:
    """Training regularises attention too (dropout on its weights, as ``nn.TransformerEncoderLayer``), on
    the fused path: with every other dropout off, two training passes still differ; eval ones do not."""
    model = _small(dropout=0.5)
    for module in model.encoder.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0  # only attention dropout is left
    images, states = _images(2), _states(2)
    with torch.no_grad():
        model.train()
        first, second = model(images, states), model(images, states)
        model.eval()
        third, fourth = model(images, states), model(images, states)
    assert (first - second).abs().max() > 1e-4
    assert torch.equal(third, fourth)


def test_encoder_layer_returns_no_weights_unless_asked() -> None:
    """A layer called plainly runs the fused path and returns (output, None); asked, it returns weights."""
    from ctran.model.transformer import EncoderLayer

    torch.manual_seed(0)
    layer = EncoderLayer(16, 2, 16, 0.0).eval()
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        out, weights = layer(x)
        explicit, asked = layer(x, need_weights=True)
    assert weights is None
    assert asked.shape == (2, 2, 5, 5)
    torch.testing.assert_close(out, explicit, atol=1e-5, rtol=0)


def test_encoder_fast_paths_honour_an_arbitrary_mask() -> None:
    """``Encoder(mask=...)`` takes any (N, N) pattern: the fused paths (last-rows-only last layer, known
    first-layer projections) must mask exactly as ``nn.MultiheadAttention`` does, even label rows."""
    encoder = _random_biases(_small()).encoder.eval()  # 2 layers
    n, keep = 10, 4
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(2, n, DIM, generator=generator)
    mask = (torch.rand(n, n, generator=generator) > 0.5) | torch.eye(n, dtype=torch.bool)
    assert not mask[-keep:].all()  # the kept rows are masked too
    with torch.no_grad():
        reference, _ = encoder(x, need_weights=True, keep=keep, mask=mask)
        fast, _ = encoder(x, keep=keep, mask=mask)
        known, _ = encoder(x, keep=keep, mask=mask, first_qkv=encoder.layers[0].qkv(x[:, -keep:]))
        unmasked, _ = encoder(x, keep=keep)
    assert fast.shape == (2, keep, DIM)
    torch.testing.assert_close(fast, reference, atol=1e-5, rtol=0)
    torch.testing.assert_close(known, reference, atol=1e-5, rtol=0)
    assert (unmasked - reference).abs().max() > 1e-3


def test_single_layer_model_with_label_projection_table() -> None:
    """A one-layer C-Tran can be frozen for inference too: same logits as without the table."""
    for attention in ("full", "one_way"):
        model = _random_biases(_small(layers=1, attention=attention)).eval()
        images, states = _images(2), _states(2)
        with torch.no_grad():
            memory = model.encode(images)
            computed = model.decode(memory, states)
            model.freeze_label_projections()
            looked_up = model.decode(memory, states)
        torch.testing.assert_close(looked_up, computed, atol=1e-5, rtol=0)


def test_one_way_encode_computes_only_keys_and_values_in_the_last_layer() -> None:
    """One-way ``encode`` runs every layer but the last on the image tokens, and the last only for their
    keys and values (its image outputs are never read): the FLOPs say so."""
    from torch.utils.flop_counter import FlopCounterMode

    model = _small(attention="one_way").eval()  # 2 layers, FFN width D
    batch, tokens = 2, 36
    x = torch.randn(batch, tokens, DIM)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        memory = model.encoder.encode_images(x)
    assert memory.shape == (batch, tokens, LAYERS * 2 * DIM)
    full_layer = 2 * batch * tokens * DIM * (3 * DIM + DIM + 2 * DIM)  # Q/K/V, output projection, FFN
    products = (LAYERS - 1) * full_layer + 2 * batch * tokens * DIM * 2 * DIM  # + last keys/values
    attention = (LAYERS - 1) * 4 * batch * tokens * tokens * DIM
    assert products <= counter.get_total_flops() <= products + attention


# ---------------------------------------------------------------------------------------------- hot path


class _HostReads(TorchDispatchMode):
    """Records the ops that copy a tensor's value to the host (on a GPU: wait for the device)."""

    READS = ("aten._local_scalar_dense", "aten.equal", "aten.is_nonzero", "aten.item")

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if any(str(func).startswith(name) for name in self.READS):
            self.reads.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("attention", ["full", "one_way"])
def test_a_training_step_reads_no_value_back_from_the_device(attention):
    """Training states are Label Mask Training's, valid by construction: the forward checks their shape
    only, never their values (a min/max/round check waits for the GPU on every step)."""
    model = _small(attention=attention).train()
    images, states = _images(2), _states(2)
    with _HostReads() as spy:
        model(images, states).sum().backward()
        model(images, states[:, [0, 2, 5]], label_index=torch.tensor([0, 2, 5])).sum().backward()
    assert spy.reads == []
    with pytest.raises(ValueError, match=r"shape \(B, 6\)"):
        model(images, states[:, :5])
    with pytest.raises(ValueError, match=r"shape \(B, 2\)"):
        model(images, states[:, :3], label_index=torch.tensor([0, 2]))


def test_decode_on_a_label_index_is_the_model_of_those_labels():
    """``label_index`` runs those labels' embedding and readout rows, states and logits in its order: the
    same logits as a model holding only those labels (and every label: the plain call)."""
    model = _small().eval()
    index = torch.tensor([1, 3, 4])
    subset = ctran.build_model(3, backbone="small_cnn", layers=LAYERS, heads=HEADS, dim=DIM, pretrained=False)
    subset.eval()
    state = model.state_dict()
    for name in CTran.label_parameters:
        state[name] = state[name][index]
    subset.load_state_dict(state)
    images, states = _images(3), _states(3)
    with torch.no_grad():
        memory = model.encode(images)
        ours = model.decode(memory, states[:, index], label_index=index)
        torch.testing.assert_close(ours, subset.decode(memory, states[:, index]), rtol=0, atol=1e-6)
        torch.testing.assert_close(model(images, states[:, index], label_index=index), ours)
        attention = model(images, states[:, index], return_attention=True, label_index=index)
        torch.testing.assert_close(attention.logits, ours, rtol=0, atol=1e-5)
        every = model.decode(memory, states, label_index=torch.arange(NUM_LABELS))
        torch.testing.assert_close(every, model.decode(memory, states), rtol=0, atol=0)
        model.freeze_label_projections()
        tabulated = model.decode(memory, states[:, index], label_index=index)
        torch.testing.assert_close(tabulated, ours, rtol=0, atol=1e-5)
        with pytest.raises(ValueError, match="-1 \\(unknown\\)"):
            model.decode(memory, torch.full((3, 3), 2), label_index=index)
