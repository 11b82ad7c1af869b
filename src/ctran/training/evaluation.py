"""Evaluate a model in the three inference settings, running the backbone once per image.

A ``Setting`` says which labels the model is told: ``regular`` (none), ``partial_P`` (a fraction P of the
target labels, chosen per image from the seed), ``extra`` (all extra labels) and ``partial_P+extra`` (both).
Each batch is encoded once and only the label tokens + transformer + readout run again per setting, so
scoring several settings in one call gives exactly the numbers of one call per setting.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ctran.errors import CTranError
from ctran.metrics import multilabel_metrics
from ctran.report import add_setting, setting_name
from ctran.states import UNKNOWN
from ctran.training.distributed import DistContext, gather_objects
from ctran.training.label_mask import evaluation_states, scored_mask
from ctran.training.precision import autocast


@dataclass(frozen=True)
class Setting:
    """What is revealed at inference: a fraction of the targets, and/or every extra label."""

    known_fraction: float = 0.0
    reveal_extras: bool = False

    @property
    def name(self) -> str:
        """``regular``, ``partial_0.5``, ``extra`` or ``partial_0.5+extra``."""
        return setting_name(self.known_fraction, self.reveal_extras)


def standard_settings(fractions: Iterable[float] = (0.25, 0.5, 0.75), extra: bool = True) -> list[Setting]:
    """Regular, each partial fraction, and (when the dataset has extra labels) extra."""
    settings = [Setting()] + [Setting(known_fraction=f) for f in fractions if f > 0]
    return [*settings, Setting(reveal_extras=True)] if extra else settings


def input_states(
    setting: Setting, targets: torch.Tensor, extras: torch.Tensor, indices: torch.Tensor, seed: int
) -> torch.Tensor:
    """The (B, T + E) states fed to the model for one setting."""
    known_targets = evaluation_states(targets, indices, setting.known_fraction, seed)
    known_extras = extras if setting.reveal_extras else torch.full_like(extras, UNKNOWN)
    return torch.cat([known_targets, known_extras], dim=1)


@torch.inference_mode()
def collect_scores(
    model: torch.nn.Module,
    loader: DataLoader,
    settings: list[Setting],
    seed: int = 0,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    progress: bool = False,
) -> dict[Setting, tuple[torch.Tensor, ...]]:
    """Per setting: target probabilities (N, T), truth (N, T), the scored mask (N, T), image indices (N,)."""
    model.eval()
    parts: dict[Setting, list[tuple[torch.Tensor, ...]]] = {s: [] for s in settings}
    for batch in tqdm(loader, desc="evaluate", disable=not progress, leave=False):
        if batch is None:  # every image of the batch was unreadable and skipped
            continue
        images, targets, extras, indices = batch
        num_targets = targets.shape[1]
        images, targets, extras = images.to(device), targets.to(device), extras.to(device)
        with autocast(device, precision):
            tokens = model.encode(images)
            for setting in settings:
                states = input_states(setting, targets, extras, indices, seed)
                logits = model.decode(tokens, states)[:, :num_targets]  # (B, T)
                scored = scored_mask(targets, states[:, :num_targets])
                parts[setting].append(
                    (logits.float().sigmoid().cpu(), targets.cpu(), scored.cpu(), torch.as_tensor(indices))
                )
    if not any(parts.values()):
        raise CTranError("no images to evaluate: the dataset is empty or every image was unreadable")
    return {s: tuple(torch.cat(col) for col in zip(*chunks, strict=True)) for s, chunks in parts.items()}


def merge_shards(parts: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
    """Concatenate (probs, truth, scored, indices) from every process, in image-index order."""
    probs, truth, scored, indices = (torch.cat(column) for column in zip(*parts, strict=True))
    order = indices.argsort()
    return probs[order], truth[order], scored[order], indices[order]


def evaluate(
    model: torch.nn.Module,
    loader: DataLoader,
    settings: list[Setting] | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    progress: bool = False,
    ctx: DistContext | None = None,
    label_names: Sequence[str] | None = None,
) -> dict:
    """Metrics (percent) per setting, nested by kind (``ctran.report.iter_settings`` reads them back):
    ``{"regular": {...}, "partial": {"0.5": {...}}, "extra": {...}, "partial_extra": {"0.5": {...}}}``.

    Each setting's metrics hold ``per_label`` AP and positives, named by ``label_names`` (default: the
    loader's dataset's ``target_names``). Under torchrun each process scores its shard; rows from every
    process are gathered before metrics.
    """
    settings = settings or standard_settings()
    names = label_names if label_names is not None else getattr(loader.dataset, "target_names", None)
    scores = collect_scores(model, loader, settings, seed, device, precision, progress)
    if ctx is not None and ctx.enabled:
        scores = {setting: merge_shards(gather_objects(scores[setting], ctx)) for setting in settings}
    results: dict = {}
    for setting, (probs, truth, scored, _) in scores.items():
        metrics = multilabel_metrics(probs, truth, mask=scored, label_names=names)
        add_setting(results, setting.known_fraction, setting.reveal_extras, metrics)
    return results
