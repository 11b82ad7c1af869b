"""The training loop: Label Mask Training with AMP, accumulation, clipping, EMA, schedules, DDP and resume.

Works for any model with the ``forward(images, states) -> logits`` interface (C-Tran and the pooled-CNN
baseline). The model sees ``cat[targets ; extras]`` states; LMT reveals labels among all of them
(``train.lmt_labels=all``) or among the extras only (``extras``: CUB-312, whose classes stay unknown). The
loss covers target labels (and, with ``train.extra_loss``, extra labels) that are annotated and not
revealed, averaged over all such entries of the global batch (every process and micro-batch). With
``train.missing=negative``, target labels that are not annotated count as negatives (the "assume negative"
baseline for missing labels); a model that cannot take states (the baseline) is never told any.

``train.batch_size`` is per process (as in timm and DETR): N processes with batch B take the same steps as
one process with batch N*B, whose batches are the union of theirs (``StepBatches``). They train exactly
alike when the backbone's BatchNorm is frozen (``model.batchnorm=frozen``, the default for pretrained
backbones) or the whole backbone is (``train.freeze_backbone=all``); live BatchNorm normalises over each
process's B images instead, ``sync`` (SyncBatchNorm, CUDA) over all N*B. Every process takes part in every
collective of every step: a micro-batch with no readable image (or a process's empty share of the last
step) runs forward and backward on an empty batch, which contributes zero gradient, so the others never
wait on it; and all processes decide to step from the same all-reduced image count.

With an output folder, each epoch ends by writing ``last.pt`` (weights + optimiser, scheduler, EMA, scaler,
RNG states, history) and, on a better validation mAP, ``best.pt``, both atomically; ``metrics.csv`` and
TensorBoard logs grow by one row. ``resume=True`` continues from ``last.pt`` as if never stopped: data
order and label masks depend only on (seed, epoch, image index), and RNG states are restored.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from ctran.checkpoint import read_checkpoint, save_checkpoint
from ctran.config import Config
from ctran.data.base import LabeledImages, Sample
from ctran.devices import resolve_device
from ctran.errors import CTranError
from ctran.extras import install_hint
from ctran.files import atomic_write_bytes
from ctran.states import NEGATIVE, UNKNOWN
from ctran.training.distributed import (
    DistContext,
    all_reduce_sum,
    barrier,
    broadcast_from_main,
    gather_objects,
)
from ctran.training.evaluation import EvalScores, Setting, collect_scores
from ctran.training.label_mask import kept_labels, sample_training_states, scored_mask, shown_images
from ctran.training.loaders import eval_loader, set_epoch, train_loader
from ctran.training.losses import asl_terms, bce_terms
from ctran.training.optim import build_optimizer, build_scheduler, continue_schedule, freeze_backbone
from ctran.training.precision import autocast, resolve_precision


@dataclass
class TrainResult:
    """What a run produced: the per-epoch history and where the best validation mAP was."""

    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_val_map: float = -math.inf
    seconds: float = 0.0
    stopped_early: bool = False
    thresholds: list[float] | None = None  # per target label, F1-best on validation for the best weights


def gathered_scores(
    model: nn.Module, loader: DataLoader, settings: list[Setting], seed: int, ctx: DistContext, precision: str
) -> EvalScores | None:
    """``collect_scores`` on this shard, then every shard's rows in image-index order on rank 0 (None on
    the other ranks: they only need what rank 0 computes from them)."""
    return collect_scores(model, loader, settings, seed, ctx.device, precision).gathered(ctx)


class Trainer:
    """One training run; ``fit`` trains in place and leaves the model with its best validation weights."""

    def __init__(
        self,
        model: nn.Module,
        train_set: LabeledImages,
        val_set: LabeledImages,
        config: Config,
        ctx: DistContext | None = None,
        out_dir: str | Path | None = None,
        checkpoint_meta: dict | None = None,
        progress: bool = True,
        desc: str = "train",
        epoch_lines: bool = True,
        on_epoch: Callable[[dict], None] | None = None,
    ) -> None:
        """``progress``: tqdm bars; ``epoch_lines``: one printed line per epoch; ``on_epoch``: called with
        each epoch's row of ``metrics.csv`` plus ``epochs`` and ``best_epoch`` (a server's progress bar).
        All three on rank 0 only."""
        self.config, self.cfg = config, config.train
        self.ctx = ctx or DistContext(device=resolve_device(config.train.device))
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.meta = checkpoint_meta or {}
        self.progress, self.desc = progress and self.ctx.is_main, desc
        self.epoch_lines = epoch_lines and self.ctx.is_main
        self.on_epoch = on_epoch if self.ctx.is_main else None
        self._tensorboard: type | None = None
        if self.out_dir is not None and self.ctx.is_main:
            self._tensorboard = _tensorboard_writer()
        if self.cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        torch.manual_seed(config.seed + self.ctx.rank)
        self.model = _sync_batchnorm(model, self.ctx) if config.model.batchnorm == "sync" else model
        self.model = self.model.to(self.ctx.device)
        self.frozen = freeze_backbone(self.model, self.cfg.freeze_backbone)
        self.precision = resolve_precision(self.cfg.precision, self.ctx.device)
        workers = config.data.num_workers
        self.train_loader = train_loader(train_set, self.cfg.batch_size, config.seed, self.ctx, workers)
        self._empty_batch = _empty_batch(train_set, config.data.image_size)
        self.val_loader = eval_loader(val_set, config.eval.batch_size, self.ctx, workers)
        self.steps_per_epoch = math.ceil(len(self.train_loader) / self.cfg.grad_accum)
        self.optimizer = build_optimizer(self.model, self.cfg)
        self.scheduler, self.per_step = build_scheduler(self.optimizer, self.cfg, self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler(self.ctx.device.type, enabled=self.precision == "fp16")
        self.ema = self._build_ema()
        self.net = self._wrap_ddp()
        self.result, self.epoch, self.step, self.bad_epochs = TrainResult(), 0, 0, 0
        self.bad_steps = self.skipped_steps = 0
        self._best_state: dict | None = None

    def _build_ema(self) -> nn.Module | None:
        if self.cfg.ema_decay <= 0:
            return None
        from timm.utils import ModelEmaV3

        return ModelEmaV3(self.model, decay=self.cfg.ema_decay)

    def _wrap_ddp(self) -> nn.Module:
        """The model under DistributedDataParallel when there are several processes (itself otherwise)."""
        if not self.ctx.enabled:
            return self.model
        device_ids = [self.ctx.device.index] if self.ctx.device.type == "cuda" else None
        return DistributedDataParallel(self.model, device_ids=device_ids)

    # ---------------------------------------------------------------- training

    def fit(self, resume: bool = False) -> TrainResult:
        """Train for the configured epochs (from ``last.pt`` when resuming), with early stopping."""
        if resume:
            self._restore()
        start = time.perf_counter() - self.result.seconds
        while self.epoch < self.cfg.epochs and not self.result.stopped_early:
            self.epoch += 1
            row = self._train_epoch()
            row.update(self._validate())
            self.result.history.append(row)
            self.result.seconds = time.perf_counter() - start
            self._end_epoch(row)
        barrier(self.ctx)
        self._load_best()
        return self.result

    def _train_epoch(self) -> dict:
        self.net.train()
        for module in self.frozen:
            module.eval()
        set_epoch(self.train_loader, self.epoch)
        self.skipped_steps = 0
        total, images_seen, tick = torch.zeros(2), 0, time.perf_counter()
        bar = tqdm(
            self.train_loader,
            desc=f"{self.desc} {self.epoch}/{self.cfg.epochs}",
            disable=not self.progress,
            leave=False,
        )
        window: list[tuple | None] = []  # one optimisation step's micro-batches (None: no readable image)
        for micro, batch in enumerate(bar):
            window.append(None if batch is None else self._prepare(batch))
            if batch is not None:
                images_seen += len(batch.index)
                self._empty_batch = _empty_batch_like(batch)
            if (micro + 1) % self.cfg.grad_accum and micro + 1 < len(self.train_loader):
                continue
            step_total, any_images = self._accumulate(window)
            total += step_total
            if any_images:
                self._optimizer_step()
            window = []
            bar.set_postfix(
                loss=f"{float(total[0] / total[1].clamp(min=1)):.4f}",
                img_s=f"{images_seen * self.ctx.world_size / (time.perf_counter() - tick):.0f}",
            )
        total = all_reduce_sum(total.to(self.ctx.device), self.ctx).cpu()
        seconds = time.perf_counter() - tick
        return {
            "epoch": self.epoch,
            "train_loss": float(total[0] / total[1].clamp(min=1)),
            "lr": self.optimizer.param_groups[0]["lr"],
            "seconds": round(seconds, 2),
            "skipped_steps": self.skipped_steps,
            "images_per_s": round(images_seen * self.ctx.world_size / max(seconds, 1e-9), 1),
        }

    def _prepare(self, batch: tuple) -> tuple:
        """(images, truth (B, K), input states (B, K), scored outputs S, model options) of a micro-batch.

        K = T + E labels, or the kept label tokens with ``train.label_tokens`` (``kept_labels``; the model
        options then carry their ``label_index``, and the first S of them are the scored outputs). With
        ``train.image_dropout`` the options carry ``shown`` (B,), the images whose tokens the model sees.
        States, token set and image draw are made on the host before the batch moves to the device: no
        device sync.
        """
        images, targets, extras, indices = batch
        if self.cfg.missing == "negative":
            targets = torch.where(targets == UNKNOWN, NEGATIVE, targets)
        truth = torch.cat([targets, extras], dim=1)  # (B, T + E), on the host
        states = self._training_states(truth, targets.shape[1], indices)  # (B, T + E)
        scored = targets.shape[1] + (extras.shape[1] if self.cfg.extra_loss else 0)
        scored = min(scored, getattr(self.model, "num_labels", scored))  # the baseline: target outputs only
        options = {}
        if self.cfg.label_tokens and getattr(self.model, "takes_states", True):
            keep = kept_labels(
                truth, states, scored, self.cfg.label_tokens, self.config.seed, self.epoch, indices
            )  # (K,) ascending: the scored labels come first
            truth, states, scored = truth[:, keep], states[:, keep], int((keep < scored).sum())
            options["label_index"] = keep.to(self.ctx.device)
        if self.cfg.image_dropout and getattr(self.model, "takes_states", True):
            shown = shown_images(indices, self.config.seed, self.epoch, self.cfg.image_dropout)  # (B,)
            options["shown"] = shown.to(self.ctx.device)
        device = self.ctx.device
        return images, truth.to(device), states.to(device), scored, options

    def _accumulate(self, window: list[tuple | None]) -> tuple[torch.Tensor, bool]:
        """Backward over one step's micro-batches, the loss normalised by the scored count of all of them
        on every process, so N micro-batches of B train exactly like one batch of N*B whatever LMT revealed
        in each. Returns this process's finite (loss sum, scored count) for the epoch's mean, and whether
        any process read an image (then every process steps; otherwise none does, and none runs backward).

        Every process runs the same forwards and backwards through DDP, in the same order: an unreadable
        micro-batch is replaced by an empty one, whose zero gradient takes its place in the all-reduce.
        """
        local = torch.zeros(2, device=self.ctx.device)  # (scored entries, images) of this process
        for images, truth, states, scored, _ in filter(None, window):
            count = scored_mask(truth[:, :scored], states[:, :scored]).sum()
            local += torch.stack([count.float(), torch.tensor(float(len(images)), device=local.device)])
        global_count, global_images = all_reduce_sum(local, self.ctx).tolist()
        total = torch.zeros(2)
        if not global_images:
            return total, False
        global_count = torch.tensor(max(global_count, 1.0), device=self.ctx.device)
        for i, prepared in enumerate(window):
            prepared = prepared if prepared is not None else self._prepare(self._empty_batch)
            loss_sum, n_scored = self._forward_backward(prepared, global_count, sync=i == len(window) - 1)
            if torch.isfinite(loss_sum):  # a bad batch is counted by _optimizer_step, not averaged in
                total += torch.stack([loss_sum, n_scored]).cpu()
        return total, True

    def _forward_backward(
        self, prepared: tuple, global_count: torch.Tensor, sync: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One micro-batch's forward and backward; returns its loss sum and scored count."""
        images, truth, states, scored, options = prepared
        device = self.ctx.device
        context = self.net.no_sync() if self.ctx.enabled and not sync else contextlib.nullcontext()
        with context:
            with autocast(device, self.precision):
                pixels = images.to(device, non_blocking=True)
                logits = self.net(pixels, states, **options)[:, :scored]  # (B, S)
            loss_sum, n_scored = self._loss_terms(logits.float(), truth[:, :scored], states[:, :scored])
            loss = loss_sum * self.ctx.world_size / global_count  # DDP averages gradients over processes
            self.scaler.scale(loss).backward()
        return loss_sum.detach(), n_scored.detach()

    def _training_states(self, truth: torch.Tensor, num_targets: int, indices: torch.Tensor) -> torch.Tensor:
        """The (B, T + E) input states of one batch: LMT's draw, or all unknown for the no-LMT ablation."""
        if not self.cfg.label_mask or not getattr(self.model, "takes_states", True):
            return torch.full_like(truth, UNKNOWN)
        revealable = None
        if self.cfg.lmt_labels == "extras":
            revealable = torch.arange(truth.shape[1]) >= num_targets  # (T + E,)
        return sample_training_states(
            truth, indices, self.config.seed, self.epoch, self.cfg.max_known_fraction, revealable
        )

    def _loss_terms(self, logits: torch.Tensor, truth: torch.Tensor, inputs: torch.Tensor) -> tuple:
        if self.cfg.loss == "asl":
            cfg = self.cfg
            return asl_terms(logits, truth, inputs, cfg.asl_gamma_neg, cfg.asl_gamma_pos, cfg.asl_clip)
        return bce_terms(logits, truth, inputs)

    def _optimizer_step(self) -> None:
        """Clip, step, schedule, EMA; a step whose gradient is not finite is skipped and counted.

        Gradients are already averaged over processes here, so every process takes the same decision.
        """
        self.scaler.unscale_(self.optimizer)
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        if not torch.isfinite(grad_norm):
            self._skip_bad_step()
            return
        self.bad_steps = 0
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        if self.per_step:
            self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model, step=self.step)

    def _skip_bad_step(self) -> None:
        """Drop this step's gradients; after ``max_bad_steps`` in a row, stop with the likely causes."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.update()  # fp16: lowers the loss scale, the usual cure for an overflow
        self.bad_steps += 1
        self.skipped_steps += 1
        if self.bad_steps >= self.cfg.max_bad_steps:
            raise CTranError(
                f"training stopped at epoch {self.epoch}: {self.bad_steps} consecutive steps had a "
                "non-finite loss or gradient. Likely causes: a learning rate too high (train.lr), fp16 "
                "overflow (train.precision=bf16 or fp32), or corrupt inputs. The last good checkpoint is "
                "untouched" + (f" ({self.out_dir / 'last.pt'})" if self.out_dir is not None else "")
            )

    # ---------------------------------------------------------------- validation and checkpoints

    def _val_scores(self, model: nn.Module) -> tuple[float, list[float]]:
        """Validation mAP (regular inference) and the per-label F1-best thresholds (``--calibrated``)."""
        scores = gathered_scores(
            model, self.val_loader, [Setting()], self.config.seed, self.ctx, self.precision
        )
        summary = scores.map_and_thresholds(Setting()) if scores is not None else None
        return broadcast_from_main(summary, self.ctx)  # every rank takes the same early-stop decisions

    def _validate(self) -> dict:
        row, self._thresholds = {}, {}
        row["val_mAP"], self._thresholds["model"] = self._val_scores(self.model)
        if self.ema is not None:
            row["val_mAP_ema"], self._thresholds["ema"] = self._val_scores(self.ema.module)
        return row

    def _end_epoch(self, row: dict) -> None:
        candidate = max(row["val_mAP"], row.get("val_mAP_ema", -math.inf))
        use_ema = row.get("val_mAP_ema", -math.inf) > row["val_mAP"]
        if not self.per_step:
            self.scheduler.step(candidate)
        improved = candidate > self.result.best_val_map or self.result.best_epoch == 0  # NaN: no positives
        if improved:
            self.result.best_epoch, self.result.best_val_map, self.bad_epochs = self.epoch, candidate, 0
            best_model = self.ema.module if use_ema else self.model
            self.result.thresholds = self._thresholds["ema" if use_ema else "model"]
            if self.out_dir is None:
                self._best_state = copy.deepcopy(best_model.state_dict())
        else:
            self.bad_epochs += 1
        if self.cfg.early_stop and self.bad_epochs >= self.cfg.early_stop:
            self.result.stopped_early = True
        rng = gather_objects(_rng_state(), self.ctx)
        if self.out_dir is not None and self.ctx.is_main:
            self._write_logs(row)
            if improved:
                save_checkpoint(
                    self.out_dir / "best.pt",
                    best_model,
                    **self.meta,
                    epoch=self.epoch,
                    ema=use_ema,
                    thresholds=self.result.thresholds,
                )
            save_checkpoint(
                self.out_dir / "last.pt", self.model, **self.meta, training_state=self._state(rng)
            )
        if self.epoch_lines:
            ema = f"  (EMA {row['val_mAP_ema']:.2f})" if "val_mAP_ema" in row else ""
            loss, val = row["train_loss"], row["val_mAP"]
            tqdm.write(f"{self.desc} epoch {self.epoch}: loss {loss:.4f}  val mAP {val:.2f}{ema}")
        if self.on_epoch is not None:
            self.on_epoch({**row, "epochs": self.cfg.epochs, "best_epoch": self.result.best_epoch})

    def _state(self, rng: list) -> dict:
        return {
            "epoch": self.epoch,
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "rng": rng,
            "history": self.result.history,
            "best_epoch": self.result.best_epoch,
            "best_val_map": self.result.best_val_map,
            "thresholds": self.result.thresholds,
            "bad_epochs": self.bad_epochs,
            "stopped_early": self.result.stopped_early,
            "seconds": self.result.seconds,
            "world_size": self.ctx.world_size,
        }

    def _restore(self) -> None:
        """Load everything ``last.pt`` holds; RNG states per rank when the world size is unchanged."""
        payload = read_checkpoint(self.out_dir / "last.pt")
        state = payload.get("training_state")
        if state is None:
            raise CTranError(f"{self.out_dir / 'last.pt'} holds no training state to resume from")
        self.model.load_state_dict(payload["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        continue_schedule(self.scheduler, self.cfg, self.steps_per_epoch)
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.module.load_state_dict(state["ema"])
        self.epoch, self.step, self.bad_epochs = state["epoch"], state["step"], state["bad_epochs"]
        self.result = TrainResult(
            state["history"],
            state["best_epoch"],
            state["best_val_map"],
            state["seconds"],
            state["stopped_early"],
            state["thresholds"],
        )
        if state["world_size"] == self.ctx.world_size:
            _set_rng_state(state["rng"][self.ctx.rank])

    def _write_logs(self, row: dict) -> None:
        """metrics.csv rewritten from the history (so a resumed run never repeats a row), TensorBoard."""
        columns = list(dict.fromkeys(key for entry in self.result.history for key in entry))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
        writer.writerows(self.result.history)
        atomic_write_bytes(self.out_dir / "metrics.csv", buffer.getvalue().encode())
        if self._tensorboard is None:
            return
        with self._tensorboard(str(self.out_dir / "tensorboard")) as writer:
            for key, value in row.items():
                if key != "epoch":
                    writer.add_scalar(key, value, self.epoch)

    def _load_best(self) -> None:
        if self._best_state is not None:
            self.model.load_state_dict(self._best_state)
        elif self.out_dir is not None and (self.out_dir / "best.pt").exists():
            self.model.load_state_dict(read_checkpoint(self.out_dir / "best.pt")["state_dict"])


def fit(
    model: nn.Module, train_set: LabeledImages, val_set: LabeledImages, config: Config, **options
) -> TrainResult:
    """Train ``model`` in place (see ``Trainer``); it ends holding its best validation weights."""
    return Trainer(model, train_set, val_set, config, **options).fit()


def _sync_batchnorm(model: nn.Module, ctx: DistContext) -> nn.Module:
    """``model.batchnorm=sync``: BatchNorm statistics over all processes' batches (SyncBatchNorm, CUDA)."""
    if ctx.device.type != "cuda":
        raise CTranError(
            f"model.batchnorm=sync needs CUDA GPUs (NCCL) but this run is on {ctx.device.type}; use "
            "model.batchnorm=frozen (pretrained backbones) or live"
        )
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def _empty_batch(dataset: LabeledImages, image_size: int) -> Sample:
    """A batch of no image shaped like the dataset's: what a process runs when it has nothing to read."""
    return Sample(
        torch.zeros(0, 3, image_size, image_size),
        torch.zeros(0, len(dataset.target_names), dtype=torch.long),
        torch.zeros(0, len(dataset.extra_names), dtype=torch.long),
        torch.zeros(0, dtype=torch.long),
    )


def _empty_batch_like(batch: Sample) -> Sample:
    """An empty batch with ``batch``'s image and label shapes (the size the training transform makes)."""
    return Sample(*(field.new_empty((0, *field.shape[1:])) for field in batch))


def _tensorboard_writer() -> type | None:
    """TensorBoard's ``SummaryWriter``, or None (said once) when the optional package is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        hint = install_hint("tensorboard", "writing them", ["tensorboard"])
        print(f"ctran: TensorBoard logs are off ({hint}); metrics.csv has every epoch", file=sys.stderr)
        return None
    return SummaryWriter


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():  # pragma: no mutate (CUDA only)
        state["cuda"] = torch.cuda.get_rng_state_all()  # pragma: no mutate (CUDA only)
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():  # pragma: no mutate (CUDA only)
        torch.cuda.set_rng_state_all(state["cuda"])  # pragma: no mutate (CUDA only)
