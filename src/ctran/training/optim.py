"""Optimiser, learning-rate schedule and backbone freezing, built from ``TrainConfig``."""

from __future__ import annotations

import math

import torch
from torch import nn

from ctran.config import TrainConfig


def freeze_backbone(model: nn.Module, mode: str) -> list[nn.Module]:
    """Stop gradients into the backbone (``all``) or all of it but its last stage (``all_but_last``).

    Returns the frozen modules; the trainer keeps them in eval mode so their BatchNorm statistics stay
    fixed too (as DETR's frozen BatchNorm does).
    """
    if mode == "none":
        return []
    backbone = model.backbone
    modules = [backbone] if mode == "all" else _all_but_last_stage(backbone)
    for module in modules:
        module.requires_grad_(False)
    return modules


def _all_but_last_stage(backbone: nn.Module) -> list[nn.Module]:
    """The backbone's top-level blocks before its last stage (timm's ``feature_info`` names that stage)."""
    body = getattr(backbone, "body", backbone)
    info = getattr(body, "feature_info", None)
    children = [
        (name, child) for name, child in body.named_children() if any(True for _ in child.parameters())
    ]
    last = info[-1]["module"].split(".")[0] if info is not None else children[-1][0]
    names = [name for name, _ in children]
    return [child for name, child in children[: names.index(last)]] if last in names else []


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Adam (the paper) or AdamW, with the backbone's learning rate scaled by ``backbone_lr_mult``."""
    backbone_ids = {id(p) for p in model.backbone.parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in trainable if id(p) not in backbone_ids], "lr": config.lr},
        {
            "params": [p for p in trainable if id(p) in backbone_ids],
            "lr": config.lr * config.backbone_lr_mult,
        },
    ]
    groups = [g for g in groups if g["params"]]
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int
) -> tuple[torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau, bool]:
    """The schedule, and whether it steps per optimisation step (cosine, one-cycle) or per epoch (plateau).

    Plateau follows the paper (factor 0.1, patience 5) but watches validation mAP, the selection metric.
    """
    total = total_steps(config, steps_per_epoch)
    if config.schedule == "plateau":
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=0.1, patience=config.plateau_patience
        )
        return plateau, False
    if config.schedule == "onecycle":
        max_lrs = [group["lr"] for group in optimizer.param_groups]
        pct = (
            min(0.9, max(0.01, config.warmup_epochs / max(config.epochs, 1))) if config.warmup_epochs else 0.2
        )
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lrs, total_steps=total, pct_start=pct), True
    warmup = int(config.warmup_epochs * steps_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup, total)), True


def total_steps(config: TrainConfig, steps_per_epoch: int) -> int:
    """Optimisation steps in the whole run (what a per-step schedule is planned over)."""
    return max(1, config.epochs * steps_per_epoch)


class WarmupCosine:
    """Linear warm-up, then cosine decay of the lr factor to ``FLOOR`` (1% of the peak) at ``total``.

    A callable object (not a closure) so ``LambdaLR.state_dict`` saves its attributes in ``last.pt``: a
    resumed run gets back the schedule it was on. ``extend`` moves the end: the decay then starts again
    from the factor at that step, ``start_factor`` at ``start_step`` (1.0 at the end of warm-up until then).
    """

    FLOOR = 0.01

    def __init__(self, warmup: int, total: int) -> None:
        self.warmup, self.total = warmup, total
        self.start_step, self.start_factor = warmup, 1.0

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = min(1.0, (step - self.start_step) / max(1, self.total - self.start_step))
        return self.FLOOR + (self.start_factor - self.FLOOR) * 0.5 * (1 + math.cos(math.pi * progress))

    def extend(self, step: int, total: int) -> None:
        """From ``step`` on, decay from the current factor to the floor at the new ``total`` (no jump).

        During warm-up only the end moves: the decay has not started, so it starts from the peak as planned.
        """
        if step >= self.warmup:
            self.start_step, self.start_factor = step, self(step)
        self.total = total


def continue_schedule(
    scheduler: torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau,
    config: TrainConfig,
    steps_per_epoch: int,
) -> None:
    """After a resumed run loaded its schedule: a cosine planned over another number of steps than
    ``config`` now gives (``--resume DIR train.epochs=N``, or another process count) continues from its
    current lr down to the floor at the new end, instead of being rebuilt (which sent a finished run's lr
    from 1% back up to 41% of the peak when its epochs were doubled)."""
    lambdas = getattr(scheduler, "lr_lambdas", [])
    total = total_steps(config, steps_per_epoch)
    for schedule in dict.fromkeys(lambdas):  # one object shared by every parameter group
        if isinstance(schedule, WarmupCosine) and schedule.total != total:
            schedule.extend(scheduler.last_epoch, total)
