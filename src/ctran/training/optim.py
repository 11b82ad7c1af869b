"""Optimiser, learning-rate schedule and backbone freezing, built from ``TrainConfig``."""

from __future__ import annotations

import math
from collections.abc import Callable

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
    total = max(1, config.epochs * steps_per_epoch)
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
    return torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(warmup, total)), True


def _warmup_cosine(warmup: int, total: int) -> Callable[[int], float]:
    """Linear warm-up, then cosine decay to 1% of the peak."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))

    return factor
