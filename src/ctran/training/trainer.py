"""The training loop: AdamW, warm-up + cosine (or plateau) schedule, Label Mask Training, best-on-validation.

Works for any model with the ``forward(images, states) -> logits`` interface (C-Tran and the pooled-CNN
baseline). Batches are ``Sample``s; the model sees ``cat[targets ; extras]`` states and the loss covers only
target labels that are annotated and not revealed.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ctran.data.base import LabeledImages
from ctran.metrics import mean_average_precision
from ctran.states import UNKNOWN
from ctran.training.evaluation import Setting, collect_scores
from ctran.training.label_mask import masked_bce, sample_training_states
from ctran.training.precision import autocast, resolve_precision


@dataclass
class TrainConfig:
    """Optimisation settings; stored in checkpoints and reports."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    schedule: str = "cosine"  # "cosine" (with linear warm-up) or "plateau" (the paper's)
    warmup_epochs: float = 1.0
    label_mask: bool = True  # Label Mask Training; False: all labels unknown, loss on all (the ablation)
    max_known_fraction: float = 0.75
    grad_clip: float = 1.0
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    num_workers: int = 0
    seed: int = 0
    device: str = "cpu"


@dataclass
class TrainResult:
    """What a run produced: the per-epoch history and where the best validation mAP was."""

    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_val_map: float = float("nan")
    seconds: float = 0.0


def make_loader(
    dataset: LabeledImages, batch_size: int, shuffle: bool, seed: int, workers: int = 0
) -> DataLoader:
    """A DataLoader whose shuffling depends only on the seed."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        num_workers=workers,
        drop_last=False,
    )


def _lr_lambda(config: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """Linear warm-up then cosine decay to 1% of the peak, per optimisation step."""
    warmup = max(1, int(config.warmup_epochs * steps_per_epoch))
    total = max(warmup + 1, config.epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / (total - warmup)
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def fit(
    model: torch.nn.Module,
    train_set: LabeledImages,
    val_set: LabeledImages,
    config: TrainConfig,
    progress: bool = True,
    desc: str = "train",
) -> TrainResult:
    """Train ``model`` in place and leave it holding the weights of its best validation epoch."""
    torch.manual_seed(config.seed)
    device = torch.device(config.device)
    precision = resolve_precision(config.precision, device)
    model.to(device)
    train_loader = make_loader(train_set, config.batch_size, True, config.seed, config.num_workers)
    val_loader = make_loader(val_set, 2 * config.batch_size, False, config.seed, config.num_workers)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    per_step = config.schedule == "cosine"
    if per_step:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config, len(train_loader)))
    elif config.schedule == "plateau":
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.1, patience=5)
    else:
        raise ValueError(f"schedule must be 'cosine' or 'plateau', got {config.schedule!r}")
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    mask_generator = torch.Generator().manual_seed(config.seed + 1)

    result, best_state, start = TrainResult(), None, time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        model.train()
        total, count, epoch_start = 0.0, 0, time.perf_counter()
        bar = tqdm(train_loader, desc=f"{desc} {epoch}/{config.epochs}", disable=not progress, leave=False)
        for images, targets, extras, _ in bar:
            truth = torch.cat([targets, extras], dim=1).to(device)  # (B, T + E)
            if config.label_mask:
                states = sample_training_states(truth, config.max_known_fraction, mask_generator)
            else:
                states = torch.full_like(truth, UNKNOWN)
            num_targets = targets.shape[1]
            with autocast(device, precision):
                logits = model(images.to(device), states)[:, :num_targets]  # (B, T)
            loss = masked_bce(logits.float(), truth[:, :num_targets], states[:, :num_targets])
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            if per_step:
                scheduler.step()
            total, count = total + loss.item() * len(images), count + len(images)
            bar.set_postfix(loss=f"{total / count:.4f}")
        probs, truth, scored = collect_scores(model, val_loader, [Setting()], config.seed, device, precision)[
            Setting()
        ]
        val_map = mean_average_precision(probs, truth, scored)
        if not per_step:
            scheduler.step(val_map)
        seconds = time.perf_counter() - epoch_start
        result.history.append(
            {
                "epoch": epoch,
                "train_loss": total / max(count, 1),
                "val_mAP": val_map,
                "lr": optimizer.param_groups[0]["lr"],
                "seconds": seconds,
                "images_per_s": count / seconds,
            }
        )
        if progress:
            tqdm.write(f"{desc} epoch {epoch}: loss {total / max(count, 1):.4f}  val mAP {val_map:.2f}")
        if best_state is None or val_map > result.best_val_map:
            result.best_epoch, result.best_val_map = epoch, val_map
            best_state = copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    result.seconds = time.perf_counter() - start
    return result


def config_dict(config: TrainConfig) -> dict:
    """Plain-dict form for JSON and checkpoints."""
    return asdict(config)
