"""The effect of each training option, through the real ``Trainer`` (and ``train_run`` / ``ctran train``).

Every test fails if its option is ignored or always on: EMA selection, gradient accumulation, clipping,
early stopping, the three schedules with warm-up, Adam vs AdamW, ASL, the no-LMT ablation, backbone
freezing, the backbone learning-rate multiplier, TensorBoard logs and the refusal of a second ``--out``.
Models are tiny (small CNN or ResNet-18 at 48 x 48, D = 32, one layer), in fp32 without dropout.
"""

from __future__ import annotations

import copy
import csv
import math
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from torch import nn

from ctran.checkpoint import read_checkpoint
from ctran.cli import main
from ctran.config import Config, load_config
from ctran.data.digit_scenes import DigitScenesDataset, load_digit_scenes
from ctran.data.partial import PartialAnnotations
from ctran.data.synthetic import write_synthetic
from ctran.errors import CTranError
from ctran.model import CTran, build_from_config
from ctran.states import UNKNOWN
from ctran.training import evaluation as evaluation_module
from ctran.training import trainer as trainer_module
from ctran.training.distributed import DistContext
from ctran.training.label_mask import sample_training_states, scored_mask, shown_images
from ctran.training.loaders import eval_loader, train_loader
from ctran.training.losses import asl_terms, bce_terms
from ctran.training.run import model_config, train_run
from ctran.training.trainer import Trainer

SMALL = [
    "model.dim=32",
    "model.layers=1",
    "model.heads=2",
    "model.dropout=0.0",
    "data.num_workers=0",
    "train.precision=fp32",
    "train.device=cpu",
    "train.epochs=1",
    "train.batch_size=8",
    "train.optimizer=adam",
    "train.lr=1e-2",
    "train.weight_decay=0",
    "train.schedule=plateau",
    "train.warmup_epochs=0",
    "train.grad_clip=0",
    "eval.batch_size=64",
]
NUM_TARGETS = 16  # 10 digits + 6 tags; the 4 contexts are extra labels
State = dict[str, torch.Tensor]


def _config(*overrides: str) -> Config:
    return load_config("digits-tiny", [*SMALL, *overrides])


def _still(*overrides: str) -> Config:
    """lr 0: the weights stay put, so a step's loss and gradient are measured, not minimised (set after
    loading: a config's ``train.lr`` must be positive)."""
    config = _config(*overrides)
    config.train.lr = 0.0
    return config


@cache
def _scenes(split: str, size: int) -> DigitScenesDataset:
    return load_digit_scenes(split, 0, size)


def _trainer(
    config: Config,
    n_train: int = 16,
    out_dir: Path | None = None,
    num_labels: int | None = None,
    **options: object,
) -> Trainer:
    """A seeded model (``num_labels`` outputs, default every label) on ``n_train`` training scenes and 4
    validation scenes, without a progress bar unless ``options`` (Trainer's) say otherwise."""
    train = _scenes("train", n_train)
    model_options = model_config(config, num_labels or len(train.label_names))
    torch.manual_seed(0)
    model = build_from_config(model_options)
    meta = {
        "model_config": model_options,
        "target_names": train.target_names,
        "extra_names": train.extra_names,
    }
    options = {"progress": False, **options}
    return Trainer(model, train, _scenes("val", 4), config, out_dir=out_dir, checkpoint_meta=meta, **options)


def _state(model: nn.Module) -> State:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def _assert_same(a: State, b: State, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for name, value in a.items():
        torch.testing.assert_close(b[name], value, rtol=0, atol=atol, msg=name)


def _record_steps(trainer: Trainer) -> list[dict]:
    """Before each optimiser step: every group's lr and every parameter's gradient (by name)."""
    names = {id(p): name for name, p in trainer.model.named_parameters()}
    steps: list[dict] = []

    def hook(optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        grads = {
            names[id(p)]: p.grad.detach().clone()
            for group in optimizer.param_groups
            for p in group["params"]
            if p.grad is not None
        }
        steps.append({"lrs": [group["lr"] for group in optimizer.param_groups], "grads": grads})

    trainer.optimizer.register_step_pre_hook(hook)
    return steps


def _script_val_map(monkeypatch: pytest.MonkeyPatch, values: Iterable[float]) -> None:
    """Validation mAPs in call order (per epoch: the raw model, then the EMA model when there is one)."""
    scripted = iter(values)
    monkeypatch.setattr(evaluation_module, "mean_ap_percent", lambda *args, **kwargs: next(scripted))


def _batch(dataset: DigitScenesDataset) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The whole dataset as one batch: images, ``cat[targets ; extras]`` and image indices."""
    samples = [dataset[i] for i in range(len(dataset))]
    images = torch.stack([s.image for s in samples])
    truth = torch.stack([torch.cat([s.targets, s.extras]) for s in samples])
    return images, truth, torch.tensor([s.index for s in samples])


# ---------------------------------------------------------------- EMA


@pytest.mark.parametrize("to_folder", [True, False], ids=["folder", "memory"])
@pytest.mark.parametrize("ema_better", [True, False], ids=["ema-better", "raw-better"])
def test_ema_weights_are_kept_only_when_their_val_map_is_better(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ema_better: bool, to_folder: bool
) -> None:
    """best.pt's ``ema`` flag and weights, and the model fit leaves, are the EMA's iff its mAP is higher."""
    _script_val_map(monkeypatch, [40.0, 60.0] if ema_better else [60.0, 40.0])  # raw, EMA
    config = _config("train.ema_decay=0.5", "train.batch_size=4")
    trainer = _trainer(config, n_train=8, out_dir=tmp_path if to_folder else None)
    result = trainer.fit()
    ema = _state(trainer.ema.module)
    assert result.best_val_map == 60.0
    assert [row["val_mAP_ema"] for row in result.history] == [40.0 + 20.0 * ema_better]
    if to_folder:
        raw = read_checkpoint(tmp_path / "last.pt")["state_dict"]
        best = read_checkpoint(tmp_path / "best.pt")
        assert best["ema"] is ema_better
        _assert_same(ema if ema_better else raw, best["state_dict"])
        _assert_same(best["state_dict"], _state(trainer.model))
        assert not torch.equal(raw["readout.weight"], ema["readout.weight"])
    final_is_ema = torch.equal(trainer.model.readout.weight, ema["readout.weight"])
    assert final_is_ema is ema_better
    if ema_better:
        _assert_same(ema, _state(trainer.model))


# ---------------------------------------------------------------- gradient accumulation


def _one_step(batch_size: int, grad_accum: int, *overrides: str) -> tuple[Trainer, list[dict]]:
    """One epoch of 16 scenes; the backbone is frozen so BatchNorm does not see the batch size."""
    config = _config(
        f"train.batch_size={batch_size}",
        f"train.grad_accum={grad_accum}",
        "train.freeze_backbone=all",
        *overrides,
    )
    trainer = _trainer(config)
    steps = _record_steps(trainer)
    trainer.fit()
    return trainer, steps


def _assert_accumulation_matches_big_batch(*overrides: str) -> None:
    accumulated, accumulated_steps = _one_step(8, 2, *overrides)
    big, big_steps = _one_step(16, 1, *overrides)
    assert accumulated.step == big.step == 1 and len(accumulated_steps) == 1
    grads, reference = accumulated_steps[0]["grads"], big_steps[0]["grads"]
    assert grads.keys() == reference.keys()
    weights, reference_weights = (
        dict(accumulated.model.named_parameters()),
        dict(big.model.named_parameters()),
    )
    for name, grad in reference.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-7, msg=name)
        # Adam's first step is lr * sign(g): entries whose true gradient is zero (the attention key bias)
        # step by +-lr on rounding noise, so weights are compared where the gradient is not noise.
        clear = grad.abs() > 1e-5
        torch.testing.assert_close(
            weights[name].detach()[clear],
            reference_weights[name].detach()[clear],
            rtol=0,
            atol=1e-5,
            msg=name,
        )


def test_grad_accum_gives_the_update_of_one_big_batch() -> None:
    """Batch 8 x 2 accumulation steps = one step on the same 16 scenes (no LMT: equal scored counts)."""
    _assert_accumulation_matches_big_batch("train.label_mask=false")


def test_grad_accum_gives_the_update_of_one_big_batch_under_label_mask_training() -> None:
    """With LMT each micro-batch scores a different number of labels; the mean must still be global."""
    _assert_accumulation_matches_big_batch("train.label_mask=true")


# ---------------------------------------------------------------- gradient clipping


def test_grad_clip_scales_the_gradient_down_to_max_norm() -> None:
    """The step sees the unclipped gradient rescaled to norm ``grad_clip`` (and unclipped without it)."""
    steps = {}
    for clip in (0.0, 1e-3):
        trainer = _trainer(_config(f"train.grad_clip={clip}"), n_train=8)
        steps[clip] = _record_steps(trainer)
        trainer.fit()
    raw, clipped = steps[0.0][0]["grads"], steps[1e-3][0]["grads"]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in raw.values()]))
    assert norm > 0.1  # so clipping to 1e-3 must act
    for name, grad in raw.items():
        torch.testing.assert_close(clipped[name], grad * (1e-3 / norm), rtol=1e-4, atol=1e-9, msg=name)


# ---------------------------------------------------------------- early stopping


@pytest.mark.parametrize(("early_stop", "epochs_run"), [(2, 5), (0, 6)])
def test_early_stop_after_k_epochs_without_a_better_val_map(
    monkeypatch: pytest.MonkeyPatch, early_stop: int, epochs_run: int
) -> None:
    """Epoch 3's improvement resets the count; epochs 4 and 5 are worse, so K = 2 stops after epoch 5."""
    _script_val_map(monkeypatch, [10.0, 5.0, 20.0, 15.0, 14.0, 13.0])
    config = _config("train.epochs=6", "train.batch_size=4", f"train.early_stop={early_stop}")
    trainer = _trainer(config, n_train=4)
    result = trainer.fit()
    assert [row["epoch"] for row in result.history] == list(range(1, epochs_run + 1))
    assert result.stopped_early is (early_stop > 0)
    assert (result.best_epoch, result.best_val_map) == (3, 20.0)


# ---------------------------------------------------------------- learning-rate schedules


def _warmup_cosine(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


def _one_cycle(step: int, peak: float, pct_start: float, total: int) -> float:
    """torch's OneCycleLR (cosine, div_factor 25, final_div_factor 1e4), written out."""
    start, end = peak / 25, peak / 25 / 1e4
    rise_end = pct_start * total - 1
    if step <= rise_end:
        return peak + (start - peak) / 2 * (1 + math.cos(math.pi * step / rise_end))
    fraction = (step - rise_end) / (total - 1 - rise_end)
    return end + (peak - end) / 2 * (1 + math.cos(math.pi * fraction))


def _schedule_run(*overrides: str) -> tuple[list[list[float]], list[float]]:
    """Two epochs of 4 steps; the lr of both param groups at each step, and the ``lr`` logged per epoch."""
    config = _config("train.epochs=2", "train.batch_size=2", "train.backbone_lr_mult=0.5", *overrides)
    trainer = _trainer(config, n_train=8)
    steps = _record_steps(trainer)
    result = trainer.fit()
    return [step["lrs"] for step in steps], [row["lr"] for row in result.history]


def test_cosine_schedule_warms_up_then_decays_per_step() -> None:
    """warmup_epochs 0.5 of 4 steps: 2 linear warm-up steps, cosine to 1% over the 8, in both groups."""
    lrs, logged = _schedule_run("train.schedule=cosine", "train.warmup_epochs=0.5")
    expected = [1e-2 * _warmup_cosine(step, 2, 8) for step in range(9)]
    assert lrs == [pytest.approx([lr, lr * 0.5], rel=1e-9) for lr in expected[:8]]
    assert logged == pytest.approx([expected[4], expected[8]], rel=1e-9)


@pytest.mark.parametrize(("warmup_epochs", "pct_start"), [(0.0, 0.2), (1.0, 0.5)])
def test_onecycle_schedule_peaks_after_the_warmup_fraction(warmup_epochs: float, pct_start: float) -> None:
    """One-cycle over the 8 steps, rising for ``warmup_epochs / epochs`` of them (0.2 without warm-up)."""
    lrs, logged = _schedule_run("train.schedule=onecycle", f"train.warmup_epochs={warmup_epochs}")
    expected = [_one_cycle(step, 1e-2, pct_start, 8) for step in range(8)]
    assert lrs == [pytest.approx([lr, lr * 0.5], rel=1e-6) for lr in expected]
    assert logged[0] == pytest.approx(_one_cycle(4, 1e-2, pct_start, 8), rel=1e-6)


def test_plateau_schedule_cuts_lr_tenfold_after_patience_epochs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Patience 1: two epochs without a better mAP cut the lr by 10 (for the epochs after); steps keep it."""
    _script_val_map(monkeypatch, [10.0, 10.0, 10.0, 20.0, 20.0, 20.0])
    config = _config("train.epochs=6", "train.batch_size=4", "train.plateau_patience=1")
    trainer = _trainer(config, n_train=4)
    steps = _record_steps(trainer)
    result = trainer.fit()
    assert [row["lr"] for row in result.history] == pytest.approx([1e-2] * 3 + [1e-3] * 3)
    assert [step["lrs"][0] for step in steps] == pytest.approx([1e-2] * 3 + [1e-3] * 3)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)


# ---------------------------------------------------------------- optimiser


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adamw_decouples_weight_decay_and_adam_adds_it_to_the_gradient(name: str) -> None:
    """First step with weight decay 0.5: AdamW shrinks then takes a sign step of g; Adam of g + wd * w."""
    lr, wd, eps = 1e-2, 0.5, 1e-8
    trainer = _trainer(_config(f"train.optimizer={name}", f"train.weight_decay={wd}"), n_train=8)
    assert type(trainer.optimizer) is {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name]
    before = dict(copy.deepcopy(list(trainer.model.named_parameters())))
    steps = _record_steps(trainer)
    trainer.fit()
    grads = steps[0]["grads"]
    for param_name, param in trainer.model.named_parameters():
        old, grad = before[param_name].detach(), grads[param_name]
        if name == "adamw":
            expected = old * (1 - lr * wd) - lr * grad / (grad.abs() + eps)
        else:
            decayed = grad + wd * old
            expected = old - lr * decayed / (decayed.abs() + eps)
        torch.testing.assert_close(param.detach(), expected, rtol=0, atol=1e-6, msg=param_name)


# ---------------------------------------------------------------- loss and Label Mask Training


@pytest.mark.parametrize("loss", ["bce", "asl"])
def test_trainer_minimises_the_configured_loss_on_the_scored_entries(loss: str) -> None:
    """lr 0, one batch: the logged loss and the step's gradient are those of ``asl_terms``/``bce_terms``."""
    gammas = ["train.asl_gamma_neg=2.0", "train.asl_gamma_pos=1.0", "train.asl_clip=0.1"]
    trainer = _trainer(_still(f"train.loss={loss}", *gammas), n_train=8)
    steps = _record_steps(trainer)
    result = trainer.fit()
    images, truth, indices = _batch(_scenes("train", 8))
    states = sample_training_states(truth, indices, seed=0, epoch=1)
    model = trainer.model.train()
    model.zero_grad()
    logits = model(images, states)[:, :NUM_TARGETS]
    args = (logits, truth[:, :NUM_TARGETS], states[:, :NUM_TARGETS])
    asl_sum, count = asl_terms(*args, gamma_neg=2.0, gamma_pos=1.0, clip=0.1)
    bce_sum, bce_count = bce_terms(*args)
    assert count == bce_count < truth.shape[0] * NUM_TARGETS  # LMT revealed some targets
    expected = asl_sum / count if loss == "asl" else bce_sum / bce_count
    other = bce_sum / bce_count if loss == "asl" else asl_sum / count
    assert result.history[0]["train_loss"] == pytest.approx(expected.item(), rel=1e-5)
    assert abs((other - expected).item()) > 0.1
    expected.backward()
    grads = {name: param.grad for name, param in model.named_parameters() if param.grad is not None}
    assert grads.keys() == steps[0]["grads"].keys()
    for name, grad in grads.items():
        torch.testing.assert_close(steps[0]["grads"][name], grad, rtol=1e-4, atol=1e-7, msg=name)


def _training_states(trainer: Trainer) -> list[torch.Tensor]:
    """The states the model is given in training forward passes (validation runs in eval mode)."""
    seen: list[torch.Tensor] = []

    def hook(module: nn.Module, args: tuple) -> None:
        if module.training:
            seen.append(args[1].clone())

    trainer.model.register_forward_pre_hook(hook)
    return seen


def test_without_label_mask_all_states_are_unknown_and_every_target_is_scored() -> None:
    """``label_mask=false``: nothing is revealed and the loss is BCE averaged over all 8 x 16 targets."""
    trainer = _trainer(_still("train.label_mask=false"), n_train=8)
    seen = _training_states(trainer)
    result = trainer.fit()
    assert len(seen) == 1 and (seen[0] == UNKNOWN).all()
    images, truth, _ = _batch(_scenes("train", 8))
    with torch.no_grad():
        logits = trainer.model.train()(images, torch.full_like(truth, UNKNOWN))[:, :NUM_TARGETS]
    expected = nn.functional.binary_cross_entropy_with_logits(logits, truth[:, :NUM_TARGETS].float())
    assert result.history[0]["train_loss"] == pytest.approx(float(expected), rel=1e-5)


def test_with_label_mask_the_states_are_the_lmt_draw() -> None:
    """``label_mask=true``: the model is told the (seed, epoch, index) LMT draw, which reveals labels."""
    trainer = _trainer(_config("train.label_mask=true"), n_train=8)
    seen = _training_states(trainer)
    trainer.fit()
    _, truth, indices = _batch(_scenes("train", 8))
    order = torch.argsort(torch.tensor([i for batch in trainer.train_loader.batch_sampler for _, i in batch]))
    expected = sample_training_states(truth, indices, seed=0, epoch=1)
    assert len(seen) == 1 and (seen[0] != UNKNOWN).any()
    assert torch.equal(seen[0][order], expected)


# ---------------------------------------------------------------- backbone freezing and lr multiplier


@pytest.mark.parametrize(
    ("mode", "backbone", "trained_prefix"),
    [
        ("none", "small_cnn", "backbone."),
        ("all", "small_cnn", None),
        pytest.param("all_but_last", "resnet18", "backbone.body.layer4.", marks=pytest.mark.slow),
    ],
)
def test_freeze_backbone_keeps_frozen_weights_and_batchnorm_statistics(
    mode: str, backbone: str, trained_prefix: str | None
) -> None:
    """After two steps every frozen backbone tensor (BatchNorm statistics too) is unchanged, every other
    backbone tensor has changed, and the transformer has trained."""
    config = _config(f"train.freeze_backbone={mode}", f"model.backbone={backbone}")
    trainer = _trainer(config)
    before = _state(trainer.model)
    trainer.fit()
    after = _state(trainer.model)
    backbone_names = [name for name in before if name.startswith("backbone.")]
    trained = [n for n in backbone_names if trained_prefix is not None and n.startswith(trained_prefix)]
    assert len(trained) > 0 or mode == "all"
    for name in backbone_names:
        assert torch.equal(before[name], after[name]) is (name not in trained), name
    assert not torch.equal(before["readout.weight"], after["readout.weight"])


@pytest.mark.parametrize("mult", [0.0, 0.25])
def test_backbone_lr_multiplier_scales_the_backbone_group(mult: float) -> None:
    """The backbone's group has lr * mult, the rest lr; with mult 0 the backbone's weights never move."""
    trainer = _trainer(_config(f"train.backbone_lr_mult={mult}"), n_train=8)
    backbone_ids = {id(p) for p in trainer.model.backbone.parameters()}
    lrs = {
        all(id(p) in backbone_ids for p in group["params"]): group["lr"]
        for group in trainer.optimizer.param_groups
    }
    assert lrs == {False: 1e-2, True: pytest.approx(1e-2 * mult)}
    before = dict(copy.deepcopy(list(trainer.model.named_parameters())))
    trainer.fit()
    for name, param in trainer.model.named_parameters():
        moved = not torch.equal(before[name], param)
        if name.startswith("backbone."):
            assert moved is (mult > 0), name
    assert not torch.equal(before["readout.weight"], trainer.model.readout.weight)


# ---------------------------------------------------------------- run folder: TensorBoard and --out

TINY_RUN = [
    *SMALL,
    "train.epochs=2",
    "data.sizes={train: 16, val: 16, test: 16}",
    "eval.known_fractions=[0.5]",
]


# ---------------------------------------------------------------- resuming


@pytest.mark.parametrize("ema", ["0.0", "0.9"])
def test_resume_continues_exactly_where_the_stopped_run_left_off(tmp_path: Path, ema: str) -> None:
    """Two epochs, then a resume to three, equal three straight epochs: weights, optimiser, EMA, history,
    thresholds, RNG."""
    config = _config("train.epochs=3", "train.label_mask=true", f"train.ema_decay={ema}")
    train = _scenes("train", 16)
    options = model_config(config, len(train.label_names))
    meta = {"model_config": options, "target_names": train.target_names, "extra_names": train.extra_names}
    torch.manual_seed(0)
    straight = build_from_config(options)
    result = trainer_module.fit(
        straight,
        train,
        _scenes("val", 4),
        config,
        out_dir=tmp_path / "a",
        checkpoint_meta=meta,
        progress=False,
    )
    assert [row["epoch"] for row in result.history] == [1, 2, 3]
    _trainer(
        _config("train.epochs=2", "train.label_mask=true", f"train.ema_decay={ema}"), out_dir=tmp_path / "b"
    ).fit()
    torch.manual_seed(123)  # the resumed run must take its RNG state from last.pt, not from here
    resumed = _trainer(config, out_dir=tmp_path / "b")
    resumed_result = resumed.fit(resume=True)
    assert [row["epoch"] for row in resumed_result.history] == [1, 2, 3]
    assert resumed.step == 6  # 16 scenes in batches of 8, three epochs
    a, b = read_checkpoint(tmp_path / "a" / "last.pt"), read_checkpoint(tmp_path / "b" / "last.pt")
    _assert_same(a["state_dict"], b["state_dict"])
    for key in ("train_loss", "val_mAP"):
        assert [row[key] for row in b["training_state"]["history"]] == [
            row[key] for row in a["training_state"]["history"]
        ]
    assert b["training_state"]["best_epoch"] == a["training_state"]["best_epoch"]
    assert b["training_state"]["scheduler"] == a["training_state"]["scheduler"]
    torch.testing.assert_close(b["training_state"]["rng"][0]["torch"], a["training_state"]["rng"][0]["torch"])
    for key in ("thresholds", "best_val_map", "bad_epochs", "stopped_early", "scaler"):
        assert b["training_state"][key] == a["training_state"][key], key
    _assert_same(b["training_state"]["optimizer"]["state"][0], a["training_state"]["optimizer"]["state"][0])
    assert resumed_result.thresholds == result.thresholds
    if ema == "0.0":
        assert a["training_state"]["ema"] is None and b["training_state"]["ema"] is None
    else:
        _assert_same(b["training_state"]["ema"], a["training_state"]["ema"])
        _assert_same(resumed.ema.module.state_dict(), a["training_state"]["ema"])


def _assert_tensorboard_matches_metrics_csv(run: Path) -> list[dict]:
    """Each metrics.csv column but ``epoch`` is a TensorBoard scalar with the same value at each epoch."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with (run / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    columns = [column for column in rows[0] if column != "epoch"]
    assert sorted(events.Tags()["scalars"]) == sorted(columns)
    for column in columns:
        assert [(e.step, e.value) for e in events.Scalars(column)] == [
            (int(row["epoch"]), pytest.approx(float(row[column]), rel=1e-6)) for row in rows
        ], column
    return rows


def test_every_epoch_is_logged_to_metrics_csv_and_tensorboard(tmp_path: Path) -> None:
    """Each epoch's row once in metrics.csv, and each of its columns but ``epoch`` as a TensorBoard scalar."""
    result = _trainer(_config("train.epochs=2"), out_dir=tmp_path).fit()
    rows = _assert_tensorboard_matches_metrics_csv(tmp_path)
    assert [row["epoch"] for row in rows] == ["1", "2"]
    assert [float(row["val_mAP"]) for row in rows] == pytest.approx([r["val_mAP"] for r in result.history])


def test_without_tensorboard_training_says_so_once_and_keeps_metrics_csv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name: str, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    _trainer(_config("train.epochs=2"), n_train=8).fit()
    assert "TensorBoard" not in capsys.readouterr().err  # no folder, no logs to miss
    _trainer(_config("train.epochs=2"), out_dir=tmp_path).fit()
    err = capsys.readouterr().err
    assert err.count("TensorBoard") == 1
    assert (
        "ctran: TensorBoard logs are off (writing them needs tensorboard, which is not installed: "
        "pip install 'ctran[tensorboard]'); metrics.csv has every epoch\n"
    ) in err.splitlines(keepends=True)
    assert not (tmp_path / "tensorboard").exists() and (tmp_path / "metrics.csv").is_file()


def test_resume_without_training_state_names_the_file(tmp_path: Path) -> None:
    trainer = _trainer(_config(), out_dir=tmp_path)
    trainer.fit()
    payload = read_checkpoint(tmp_path / "last.pt")
    payload.pop("training_state")
    torch.save(payload, tmp_path / "last.pt")
    with pytest.raises(CTranError, match=r"last\.pt holds no training state"):
        _trainer(_config("train.epochs=2"), out_dir=tmp_path).fit(resume=True)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished two-epoch ``train_run`` folder."""
    out = tmp_path_factory.mktemp("run") / "run"
    train_run(load_config("digits-tiny", TINY_RUN), out, progress=False)
    return out


@pytest.mark.slow
def test_tensorboard_scalars_equal_metrics_csv(tiny_run: Path) -> None:
    """Every metrics.csv column (but ``epoch``) is a TensorBoard scalar with the same value at each epoch."""
    rows = _assert_tensorboard_matches_metrics_csv(tiny_run)
    assert [row["epoch"] for row in rows] == ["1", "2"]


@pytest.mark.slow
def test_second_out_into_a_run_is_refused_and_leaves_it_untouched(
    tiny_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``ctran train --out DIR`` over a finished run exits 2 naming ``--resume`` and changes no file."""
    files = sorted(path for path in tiny_run.rglob("*") if path.is_file())
    before = {path: (path.stat().st_mtime_ns, path.read_bytes()) for path in files}
    code = main(["train", "--config", "digits-tiny", "--out", str(tiny_run), "--quiet", *TINY_RUN])
    assert code == 2
    assert f"--resume {tiny_run}" in capsys.readouterr().err
    assert sorted(path for path in tiny_run.rglob("*") if path.is_file()) == files
    assert {path: (path.stat().st_mtime_ns, path.read_bytes()) for path in files} == before


# ---------------------------------------------------------------- what an epoch reports


class _Clock:
    """A fake ``time.perf_counter`` that advances ``tick`` seconds per reading."""

    def __init__(self, tick: float) -> None:
        self.now, self.tick = 100.0, tick

    def perf_counter(self) -> float:
        self.now += self.tick
        return self.now


class _Bar:
    """A fake tqdm that records its options, postfixes and written lines."""

    made: ClassVar[list[_Bar]] = []
    lines: ClassVar[list[str]] = []

    def __init__(self, iterable: Iterable, **options: object) -> None:
        self.iterable, self.options, self.postfixes = iterable, options, []
        _Bar.made.append(self)

    def __iter__(self):
        return iter(self.iterable)

    def set_postfix(self, **values: str) -> None:
        self.postfixes.append(values)

    @staticmethod
    def write(line: str) -> None:
        _Bar.lines.append(line)


def _record_micro_batches(trainer: Trainer) -> list[tuple[float, float]]:
    """Each micro-batch's (loss sum, scored count), as the trainer's backward pass returns them."""
    seen: list[tuple[float, float]] = []
    forward_backward = trainer._forward_backward

    def record(*args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        loss_sum, n_scored = forward_backward(*args, **kwargs)
        seen.append((float(loss_sum), float(n_scored)))
        return loss_sum, n_scored

    trainer._forward_backward = record
    return seen


@pytest.fixture
def fake_bar_and_clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    _Bar.made, _Bar.lines = [], []
    clock = _Clock(0.123)
    monkeypatch.setattr(trainer_module, "tqdm", _Bar)
    monkeypatch.setattr(trainer_module, "time", clock)
    return clock


def test_the_bar_and_the_epoch_row_report_the_running_loss_images_per_second_and_time(
    fake_bar_and_clock: _Clock,
) -> None:
    """16 scenes in micro-batches of 4, 3 per step: steps of 12 and 4 images. The bar shows the running
    loss and throughput after each step, the row the epoch's mean loss, time, rate and the cosine lr after
    its 2 steps; one line per epoch is printed. The fake clock advances 0.123 s per reading."""
    config = _config(
        "train.batch_size=4", "train.grad_accum=3", "train.schedule=cosine", "train.ema_decay=0.5"
    )
    train = _scenes("train", 16)
    torch.manual_seed(0)
    model = build_from_config(model_config(config, len(train.label_names)))
    trainer = Trainer(model, train, _scenes("val", 4), config)  # the default bar, description and lines
    micro = _record_micro_batches(trainer)
    result = trainer.fit()
    row = result.history[0]
    (bar,) = _Bar.made
    assert bar.options == {"desc": "train 1/1", "disable": False, "leave": False}
    assert len(micro) == 4 and trainer.step == 2
    first, everything = micro[:3], micro
    loss_of = lambda parts: sum(s for s, _ in parts) / sum(n for _, n in parts)  # noqa: E731
    assert bar.postfixes == [
        {"loss": f"{loss_of(first):.4f}", "img_s": f"{12 / 0.123:.0f}"},
        {"loss": f"{loss_of(everything):.4f}", "img_s": f"{16 / 0.246:.0f}"},
    ]
    assert row == {
        "epoch": 1,
        "train_loss": pytest.approx(loss_of(everything), rel=1e-6),
        "lr": pytest.approx(1e-2 * _warmup_cosine(2, 0, 2)),
        "seconds": round(3 * 0.123, 2),
        "skipped_steps": 0,
        "images_per_s": round(16 / (3 * 0.123), 1),
        "val_mAP": row["val_mAP"],
        "val_mAP_ema": row["val_mAP_ema"],
    }
    assert result.seconds == pytest.approx(5 * 0.123)  # from fit's start to the end of the epoch
    loss, val, ema = row["train_loss"], row["val_mAP"], row["val_mAP_ema"]
    assert _Bar.lines == [f"train epoch 1: loss {loss:.4f}  val mAP {val:.2f}  (EMA {ema:.2f})"]


def test_progress_false_hides_the_bar_and_epoch_lines_false_prints_nothing(
    fake_bar_and_clock: _Clock,
) -> None:
    """The bar and the epoch lines are each switched off on their own, without an EMA note."""
    config = _config("train.batch_size=8")
    row = _trainer(config, n_train=8, desc="fold 2").fit().history[0]
    assert _Bar.made[0].options["disable"] is True and _Bar.made[0].options["desc"] == "fold 2 1/1"
    assert _Bar.lines == [f"fold 2 epoch 1: loss {row['train_loss']:.4f}  val mAP {row['val_mAP']:.2f}"]
    _trainer(config, n_train=8, epoch_lines=False).fit()
    assert len(_Bar.lines) == 1


def test_ema_follows_the_weights_at_the_configured_decay() -> None:
    """timm's EMA counting our steps: the first step copies the weights, each later one moves the EMA
    ``1 - decay`` of the way to the new weights."""
    trainer = _trainer(_config("train.ema_decay=0.5", "train.batch_size=4"), n_train=12)
    ema: State = {}

    def follow(*_: object) -> None:
        weights = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
        ema.update({k: 0.5 * ema[k] + 0.5 * v for k, v in weights.items()} if ema else weights)

    trainer.optimizer.register_step_post_hook(follow)
    trainer.fit()
    for name, value in trainer.ema.module.named_parameters():
        torch.testing.assert_close(value, ema[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_validation_map_and_thresholds_are_those_of_the_trained_model(precision: str) -> None:
    """The epoch's val mAP and the kept thresholds equal scikit-learn's AP and the F1-best thresholds of the
    model's own regular predictions on the validation scenes, at the training precision."""
    from sklearn.metrics import average_precision_score

    from ctran.metrics import calibrate_thresholds

    config = _config("train.batch_size=4", f"train.precision={precision}", "eval.batch_size=8")
    trainer = _trainer(config, n_train=8)
    val = PartialAnnotations(_scenes("val", 8), 0.6, seed=0)  # the unannotated entries are not scored
    trainer.val_loader = eval_loader(val, 8)
    result = trainer.fit()
    images, truth, _ = _batch(val)
    model = trainer.model.eval()
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
        logits = model.decode(model.encode(images), torch.full_like(truth, UNKNOWN))[:, :NUM_TARGETS]
    probs = logits.float().sigmoid()
    targets = truth[:, :NUM_TARGETS]
    annotated = targets != UNKNOWN
    assert not annotated.all()
    aps = [
        average_precision_score(targets[rows, j], probs[rows, j])
        for j in range(NUM_TARGETS)
        if (targets[rows := annotated[:, j], j] == 1).any()
    ]
    assert result.history[0]["val_mAP"] == pytest.approx(100 * sum(aps) / len(aps), rel=1e-5)
    expected = calibrate_thresholds(probs, targets, annotated).tolist()
    assert result.thresholds == pytest.approx(expected, rel=1e-6)


def test_the_gradient_is_the_mean_over_annotated_entries_only() -> None:
    """With missing annotations (``data.keep_annotations``), the first step's gradient is that of BCE
    averaged over the annotated targets: unannotated entries neither add loss nor dilute the mean."""
    config = _still("train.label_mask=false", "train.batch_size=8")
    trainer = _trainer(config, n_train=8)
    train = PartialAnnotations(_scenes("train", 8), 0.5, seed=0)
    trainer.train_loader = train_loader(train, 8, 0, DistContext(), 0)
    reference = copy.deepcopy(trainer.model)
    steps = _record_steps(trainer)
    trainer.fit()
    order = torch.tensor(
        [i for batch in trainer.train_loader.batch_sampler for _, i in batch]
    )  # (epoch, index) keys
    images, truth, _ = _batch(train)
    images, targets = images[order], truth[order, :NUM_TARGETS]
    annotated = targets != UNKNOWN
    assert not annotated.all()
    logits = reference.train()(images, torch.full_like(truth, UNKNOWN))[:, :NUM_TARGETS]
    nn.functional.binary_cross_entropy_with_logits(logits[annotated], targets[annotated].float()).backward()
    for name, param in reference.named_parameters():
        if param.grad is not None:
            torch.testing.assert_close(steps[0]["grads"][name], param.grad, rtol=1e-4, atol=1e-7, msg=name)


def test_deterministic_training_turns_on_torchs_deterministic_algorithms_with_warnings_only() -> None:
    """``train.deterministic`` asks torch for deterministic kernels, warning where there are none."""
    try:
        _trainer(_config("train.deterministic=true"), n_train=8)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
    finally:
        torch.use_deterministic_algorithms(False)


def test_extras_only_label_mask_can_reveal_every_extra_label_and_never_a_target() -> None:
    """``lmt_labels=extras`` (CUB-312): targets stay unknown; each extra, the first one too, gets revealed."""
    trainer = _trainer(_still("train.lmt_labels=extras", "train.epochs=3"), n_train=16)
    seen = _training_states(trainer)
    trainer.fit()
    states = torch.cat(seen)
    assert (states[:, :NUM_TARGETS] == UNKNOWN).all()
    assert (states[:, NUM_TARGETS:] != UNKNOWN).any(dim=0).all()


def test_the_baseline_scores_only_its_target_outputs_even_with_extra_loss() -> None:
    """The pooled-CNN baseline has no extra outputs, so ``extra_loss`` cannot score any."""
    config = _config("model.kind=baseline", "train.extra_loss=true", "train.batch_size=8")
    trainer = _trainer(config, n_train=8, num_labels=NUM_TARGETS)
    micro = _record_micro_batches(trainer)
    trainer.fit()
    assert micro[0][1] == 8 * NUM_TARGETS  # every target of the 8 images, no extra


def test_a_step_whose_micro_batches_were_all_unreadable_is_skipped_without_an_update() -> None:
    """A micro-batch of only corrupt images arrives as None: with nothing to learn, no optimiser step."""
    trainer = _trainer(_config("train.batch_size=4"), n_train=8)
    loader = trainer.train_loader

    class OneUnreadableBatch:
        batch_sampler = loader.batch_sampler

        def __len__(self) -> int:
            return len(loader) + 1

        def __iter__(self):
            yield None
            yield from loader

    trainer.train_loader = OneUnreadableBatch()
    result = trainer.fit()
    assert trainer.step == 2 and math.isfinite(result.history[0]["train_loss"])


# ---------------------------------------------------------------- which weights are kept


def _script_thresholds(monkeypatch: pytest.MonkeyPatch, *values: float) -> None:
    """Validation thresholds in call order, each the same for all targets (the targets fit one block)."""
    scripted = iter(values)
    monkeypatch.setattr(
        evaluation_module,
        "calibrate_thresholds",
        lambda *args, **kwargs: torch.full((NUM_TARGETS,), next(scripted), dtype=torch.float64).numpy(),
    )


def test_the_winners_thresholds_and_epoch_go_with_the_best_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The EMA wins epoch 1, the raw model epoch 2 (not better): best.pt keeps epoch 1 and the EMA's
    thresholds."""
    _script_val_map(monkeypatch, [40.0, 60.0, 50.0, 30.0])  # per epoch: raw, EMA
    _script_thresholds(monkeypatch, 0.1, 0.9, 0.2, 0.3)
    trainer = _trainer(_config("train.ema_decay=0.5", "train.epochs=2"), n_train=8, out_dir=tmp_path)
    result = trainer.fit()
    best = read_checkpoint(tmp_path / "best.pt")
    assert (result.best_epoch, best["epoch"], best["ema"]) == (1, 1, True)
    assert result.thresholds == best["thresholds"] == pytest.approx([0.9] * NUM_TARGETS)
    assert read_checkpoint(tmp_path / "last.pt")["training_state"]["scaler"] == {}  # fp32: no loss scale


def test_a_tie_is_not_an_improvement_and_prefers_the_raw_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    """Equal raw and EMA mAPs keep the raw model; an epoch only equal to the best counts towards early
    stopping."""
    _script_val_map(monkeypatch, [50.0] * 6)
    _script_thresholds(monkeypatch, 0.1, 0.9, 0.2, 0.8, 0.3, 0.7)
    config = _config("train.ema_decay=0.5", "train.epochs=3", "train.early_stop=1", "train.batch_size=4")
    trainer = _trainer(config, n_train=8)
    result = trainer.fit()
    assert (len(result.history), result.stopped_early, result.best_epoch) == (2, True, 1)
    assert result.thresholds == pytest.approx([0.1] * NUM_TARGETS)
    assert not torch.equal(trainer.model.readout.weight, trainer.ema.module.readout.weight)


def test_without_a_folder_the_best_epochs_weights_are_a_copy_later_epochs_do_not_touch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Epoch 1 is best and epoch 2 trains on: the model fit leaves holds epoch 1's weights."""
    _script_val_map(monkeypatch, [60.0, 10.0])
    trainer = _trainer(_config("train.epochs=2", "train.batch_size=8"), n_train=8)
    after_step: list[State] = []
    trainer.optimizer.register_step_post_hook(lambda *_: after_step.append(_state(trainer.model)))
    trainer.fit()
    assert len(after_step) == 2
    _assert_same(after_step[0], _state(trainer.model))
    assert not torch.equal(after_step[1]["readout.weight"], after_step[0]["readout.weight"])


def test_a_first_epoch_without_any_validation_positive_is_still_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A NaN val mAP (no positives) compares false with everything, yet epoch 1 must give a best.pt."""
    _script_val_map(monkeypatch, [math.nan])
    result = _trainer(_config(), n_train=8, out_dir=tmp_path).fit()
    assert result.best_epoch == 1 and result.thresholds is not None
    assert read_checkpoint(tmp_path / "best.pt")["epoch"] == 1


def test_without_a_folder_the_non_finite_stop_names_no_checkpoint() -> None:
    """Bad from the very first step: two skipped steps stop the run, and training in memory has no last.pt
    to point the user to."""
    trainer = _trainer(_config("train.max_bad_steps=2", "train.batch_size=4"), n_train=8)
    trainer.model.register_forward_hook(lambda module, args, out: out * math.nan)
    with pytest.raises(CTranError) as stopped:
        trainer.fit()
    assert str(stopped.value).startswith("training stopped at epoch 1: 2 consecutive steps had a non-finite")
    assert str(stopped.value).endswith("or corrupt inputs. The last good checkpoint is untouched")
    assert trainer.skipped_steps == 2 and trainer.step == 0


def test_auto_precision_is_resolved_for_the_training_device() -> None:
    """``train.precision=auto`` becomes what this device supports (bf16 on AVX512-BF16 CPUs, else fp32)."""
    from ctran.training.precision import resolve_precision

    trainer = _trainer(_config("train.precision=auto"), n_train=8)
    assert trainer.precision == resolve_precision("auto", "cpu") in {"bf16", "fp32"}


def test_fp16_training_scales_the_loss_and_resumes_with_its_scale(tmp_path: Path) -> None:
    """fp16 (allowed on CPUs too) trains through the loss scaler, whose scale is saved and restored."""
    config = _config("train.precision=fp16", "train.batch_size=4")
    trainer = _trainer(config, n_train=8, out_dir=tmp_path)
    trainer.fit()
    assert trainer.step == 2
    saved = read_checkpoint(tmp_path / "last.pt")["training_state"]["scaler"]
    assert saved["scale"] == 2.0**16 and saved["_growth_tracker"] == 2
    resumed = _trainer(_config("train.precision=fp16", "train.batch_size=4", "train.epochs=2"), 8, tmp_path)
    resumed.fit(resume=True)
    assert resumed.scaler.state_dict()["_growth_tracker"] == 4 and resumed.step == 4


# ---------------------------------------------------------------- label tokens (train.label_tokens)


def _sparse_batch(rows: int = 4) -> tuple:
    """A digit-scenes batch whose targets are mostly not annotated (2 of 16 per image), extras unknown."""
    images, truth, indices = _batch(_scenes("train", rows))
    targets = torch.full_like(truth[:, :NUM_TARGETS], UNKNOWN)
    for row in range(rows):
        columns = [(3 * row) % NUM_TARGETS, (3 * row + 1) % NUM_TARGETS]
        targets[row, columns] = truth[row, columns]
    extras = torch.full_like(truth[:, NUM_TARGETS:], UNKNOWN)
    return images, targets, extras, indices


def test_label_tokens_keep_every_scored_entry_and_run_the_model_on_the_kept_tokens_only() -> None:
    """With ``train.label_tokens=N`` a batch runs on the union of its loss/known tokens plus a sample up to
    N: the same scored entries as with every token (nothing leaves the loss), the kept columns only."""
    full = _trainer(_config("train.label_tokens=0", "train.max_known_fraction=1.0"))
    subset = _trainer(_config("train.label_tokens=11", "train.max_known_fraction=1.0"))
    subset.epoch = full.epoch = 1
    batch = _sparse_batch()
    _, truth, states, scored, options = full._prepare(batch)
    _, kept_truth, kept_states, kept_scored, kept_options = subset._prepare(batch)
    assert options == {} and scored == NUM_TARGETS
    keep = kept_options["label_index"]
    needed = ((truth[:, :scored] != UNKNOWN) | (states[:, :scored] != UNKNOWN)).any(0).nonzero().flatten()
    assert len(needed) == 8 and set(needed.tolist()) < set(keep.tolist()) and len(keep) == 11
    assert torch.equal(kept_truth, truth[:, keep]) and torch.equal(kept_states, states[:, keep])
    assert kept_scored == int((keep < NUM_TARGETS).sum())
    scored_full = scored_mask(truth[:, :scored], states[:, :scored])
    scored_kept = scored_mask(kept_truth[:, :kept_scored], kept_states[:, :kept_scored])
    assert int(scored_kept.sum()) == int(scored_full.sum()) > 0  # every loss entry is kept
    assert torch.equal(scored_full[:, keep[:kept_scored]], scored_kept)


def test_ctran_train_with_label_tokens_trains_on_the_subset_and_evaluates_on_every_label(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ctran train ... train.label_tokens=N`` end to end on sparse many-label data: every training
    forward sees the batch's loss/known tokens plus a sample (N in all here), every evaluation all L."""
    data = tmp_path / "synth"
    write_synthetic(data, 24, 300, val_images=8, test_images=8, image_size=16)
    seen: list[tuple[bool, int]] = []
    label_tokens = CTran.label_tokens

    def spy(model: CTran, states: torch.Tensor, label_index: torch.Tensor | None = None) -> torch.Tensor:
        seen.append((model.training, states.shape[1]))
        return label_tokens(model, states, label_index)

    monkeypatch.setattr(CTran, "label_tokens", spy)
    config, out = str(data / "ctran.yaml"), str(tmp_path / "run")
    overrides = [*SMALL, "train.batch_size=4", "train.label_tokens=100"]
    assert main(["train", "--config", config, "--out", out, "--quiet", *overrides]) == 0
    training = [width for is_training, width in seen if is_training]
    evaluation = {width for is_training, width in seen if not is_training}
    assert len(training) == 6 and evaluation == {300}
    assert all(width == 100 for width in training)


# ---------------------------------------------------------------- image dropout (train.image_dropout)


def test_shown_images_are_seeded_per_image_and_drop_about_the_asked_share() -> None:
    """The draw depends on (seed, epoch, index) only: a batch's rows are the same alone or together."""
    indices = torch.arange(4000)
    shown = shown_images(indices, seed=0, epoch=1, dropout=0.3)
    assert shown.dtype == torch.bool and abs(float((~shown).float().mean()) - 0.3) < 0.03
    assert torch.equal(shown[100:140], shown_images(indices[100:140], 0, 1, 0.3))
    assert torch.equal(shown[[7, 3]], shown_images([7, 3], 0, 1, 0.3))
    assert not torch.equal(shown, shown_images(indices, 0, 2, 0.3))  # a new draw each epoch
    assert not torch.equal(shown, shown_images(indices, 1, 1, 0.3))
    assert shown_images(indices, 0, 1, 0.0).all()


def test_a_dropped_image_is_predicted_from_its_known_labels_alone() -> None:
    """``forward(..., shown=False)``: the image memory is zeroed, so another image gives the same logits;
    a shown row is exactly the plain forward."""
    torch.manual_seed(0)
    model = build_from_config(model_config(_config(), 20)).eval()
    images, truth, _ = _batch(_scenes("train", 4))
    states = torch.where(torch.rand(truth.shape) < 0.3, truth, torch.full_like(truth, UNKNOWN))
    shown = torch.tensor([True, False, True, False])
    with torch.no_grad():
        logits = model(images, states, shown=shown)
        other = model(images.flip(0), states, shown=shown)
        plain = model(images, states)
    torch.testing.assert_close(logits[shown], plain[shown])
    torch.testing.assert_close(logits[~shown], other[~shown])  # the pixels do not matter
    assert not torch.allclose(logits[~shown], plain[~shown])


def test_ctran_train_with_image_dropout_hides_the_drawn_images_from_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ctran train ... train.image_dropout=P`` end to end: every training forward gets the (seed, epoch,
    index) draw of its batch as ``shown`` and zeroes those images' memory; evaluation shows every image;
    without the option no forward gets a draw."""
    seen: list[tuple[bool, torch.Tensor | None]] = []
    forward = CTran.forward

    def spy(model: CTran, images: torch.Tensor, states: torch.Tensor, *args: object, **kwargs: object):
        seen.append((model.training, kwargs.get("shown")))
        return forward(model, images, states, *args, **kwargs)

    monkeypatch.setattr(CTran, "forward", spy)
    decode = CTran.decode
    memories: list[torch.Tensor] = []

    def spy_decode(model: CTran, memory: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        if model.training:
            memories.append(memory.detach().abs().sum((1, 2)))  # (B,)
        return decode(model, memory, *args, **kwargs)

    monkeypatch.setattr(CTran, "decode", spy_decode)
    overrides = [*SMALL, "data.sizes={train: 32, val: 8, test: 8}", "train.epochs=2"]
    out = str(tmp_path / "dropped")
    assert (
        main(
            [
                "train",
                "--config",
                "digits-tiny",
                "--out",
                out,
                "--quiet",
                *overrides,
                "train.image_dropout=0.5",
            ]
        )
        == 0
    )
    draws = [shown for training, shown in seen if training]
    assert len(draws) == 8 and all(shown is not None for shown in draws)
    expected = torch.cat([shown_images(torch.arange(32), 0, epoch, 0.5) for epoch in (1, 2)])
    assert sorted(torch.cat(draws).tolist()) == sorted(
        expected.tolist()
    )  # the draws of every image, each epoch
    assert 0 < int((~torch.cat(draws)).sum()) < 64
    assert torch.equal(torch.cat(memories) == 0, ~torch.cat(draws))  # exactly the dropped rows are blank
    assert all(shown is None for training, shown in seen if not training)
    seen.clear()
    assert (
        main(["train", "--config", "digits-tiny", "--out", str(tmp_path / "plain"), "--quiet", *overrides])
        == 0
    )
    assert all(shown is None for _, shown in seen)


def test_the_own_cpu_recipe_hides_a_seeded_share_of_its_training_images() -> None:
    """``own-cpu`` (the recipe for your own data) trains with image dropout: its batches carry the draw."""
    overrides = [*SMALL, "model.backbone=small_cnn", "model.pretrained=false", "data.format=digits"]
    config = load_config("own-cpu", overrides)
    assert config.train.image_dropout == 0.3
    trainer = _trainer(config, n_train=64)
    trainer.epoch = 1
    images, truth, indices = _batch(_scenes("train", 64))
    *_, options = trainer._prepare((images, truth[:, :NUM_TARGETS], truth[:, NUM_TARGETS:], indices))
    shown = options["shown"]
    assert torch.equal(shown, shown_images(indices, config.seed, 1, 0.3))
    assert 8 < int((~shown).sum()) < 32
