"""A full training run from a ``Config``: datasets, model, training, final test evaluation, files.

This is what ``ctran train`` (and ``torchrun ... -m ctran train``) calls. The output folder receives
``config.yaml``, ``last.pt``, ``best.pt``, ``metrics.csv``, ``tensorboard/`` and, at the end,
``metrics.json``: the best checkpoint's test metrics, regular inference at the top level (the keys of
``ctran evaluate --json``) and every evaluated setting under ``settings``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ctran.checkpoint import init_from_checkpoint
from ctran.config import Config, config_from_dict, save_config
from ctran.data.base import LabeledImages
from ctran.data.partial import PartialAnnotations
from ctran.data.registry import build_dataset, load_splits
from ctran.errors import CTranError
from ctran.files import file_sha256
from ctran.model import backbone_normalization, build_from_config, resolve_batchnorm
from ctran.model.backbone import describe_weights, pretrained_weights
from ctran.normalization import Normalization, as_normalization
from ctran.report import write_json
from ctran.training.distributed import (
    DistContext,
    barrier,
    init_distributed,
    main_first,
    shutdown_distributed,
)
from ctran.training.evaluation import evaluate, standard_settings
from ctran.training.loaders import eval_loader
from ctran.training.trainer import Trainer


def input_normalization(config: Config) -> Normalization:
    """``data.mean``/``data.std`` when set, else what the backbone's pretrained weights expect."""
    data = config.data
    if (data.mean is None) != (data.std is None):
        raise CTranError("set both data.mean and data.std, or neither (the backbone's own are used)")
    if data.mean is None:
        return backbone_normalization(config.model.backbone)
    try:
        return as_normalization((data.mean, data.std))
    except ValueError as err:
        raise CTranError(f"data.mean / data.std: {err}") from err


def build_datasets(config: Config) -> dict[str, LabeledImages]:
    """{"train", "val", "test"} for ``config.data``; train and val keep ``data.keep_annotations`` of their
    target annotations (the missing-labels protocol), the test split all of them."""
    splits = _read_splits(config)
    if config.data.keep_annotations < 1.0:
        for role in ("train", "val"):
            splits[role] = PartialAnnotations(splits[role], config.data.keep_annotations, config.seed)
    return splits


def _read_splits(config: Config) -> dict[str, LabeledImages]:
    data = config.data
    norm = input_normalization(config)
    if data.format == "digits":  # generated: each split has its own size, no folder
        sizes = data.sizes or {}
        return {
            split: build_dataset("digits", None, split, seed=config.seed, size=sizes.get(split), norm=norm)
            for split in ("train", "val", "test")
        }
    if data.root is None:
        raise CTranError(f"data.root is not set: where is the {data.format} dataset? (pass --data-root PATH)")
    splits = {"train": data.train_split, "val": data.val_split, "test": data.test_split}
    return load_splits(
        data.format,
        data.root,
        seed=config.seed,
        image_size=data.image_size,
        scale_size=data.scale_size,
        crop_sizes=tuple(data.crop_sizes),
        flip=data.flip,
        val_fraction=data.val_fraction,
        on_bad_image=data.on_bad_image,
        splits={role: name for role, name in splits.items() if name},
        norm=norm,
        **data.options,
    )


def model_labels(config: Config, dataset: LabeledImages) -> list[str]:
    """The labels the model has a row for: targets and extras for C-Tran, targets for the baseline."""
    if config.model.kind == "baseline":
        return list(dataset.target_names)
    return list(dataset.label_names)


def model_config(config: Config, num_labels: int) -> dict:
    """The dict ``build_from_config`` uses to build this run's model (with its initial weights' source)."""
    options = dataclasses.asdict(config.model)
    kind = options.pop("kind")
    options.pop("init_from")
    options["batchnorm"] = resolve_batchnorm(
        options["batchnorm"], options["pretrained"], options["backbone_weights"]
    )
    if kind == "baseline":
        options = {key: options[key] for key in ("backbone", "pretrained", "backbone_weights", "batchnorm")}
    return {"kind": kind, "num_labels": num_labels, **options}


def initial_weights(config: Config) -> dict:
    """Where the run's weights start, exactly: ``model.init_from``'s checkpoint (name and SHA-256), else
    the backbone's pretrained weights (timm's resolved tag, or a local file's name and SHA-256)."""
    model = config.model
    if model.init_from is not None:
        return {
            "source": "init_from",
            "file": Path(model.init_from).name,
            "sha256": file_sha256(model.init_from),
        }
    return pretrained_weights(model.backbone, model.pretrained, model.backbone_weights)


def checkpoint_meta(config: Config, dataset: LabeledImages, num_labels: int) -> dict:
    """Everything a checkpoint needs besides weights: how to rebuild, name labels and prepare images, and
    which pretrained weights the run started from (``pretrained_weights``)."""
    model_options = model_config(config, num_labels)
    model_options.update(pretrained=False, backbone_weights=None)  # the checkpoint carries the weights
    return {
        "pretrained_weights": initial_weights(config),
        "model_config": model_options,
        "target_names": list(dataset.target_names),
        "extra_names": list(dataset.extra_names),
        "image_size": config.data.image_size,
        "scale_size": config.data.scale_size,
        "normalization": input_normalization(config).to_dict(),
        "dataset": config.data.format,
        "config": config.to_dict(),
    }


def final_evaluation(
    model: nn.Module, test_set: LabeledImages, config: Config, ctx: DistContext, precision: str = "fp32"
) -> dict:
    """Test metrics in every configured setting, regular at the top level (no extra setting for a model
    that cannot take states: it would repeat the regular one). Told settings carry ``untold_mAP`` and
    ``gain`` (``ctran.training.evaluation``)."""
    takes_states = getattr(model, "takes_states", True)
    settings = standard_settings(
        config.eval.known_fractions,
        extra=config.eval.extra and bool(test_set.extra_names) and takes_states,
        positives=config.eval.known_positives,
    )
    loader = eval_loader(test_set, config.eval.batch_size, ctx, config.data.num_workers)
    results = evaluate(model, loader, settings, config.seed, ctx.device, precision, ctx=ctx)
    return {**results["regular"], "setting": "regular", "settings": results}


def train_run(
    config: Config,
    out_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    on_epoch: Callable[[dict], None] | None = None,
) -> dict:
    """Train, evaluate the best checkpoint on the test split, write the run folder; returns metrics.
    ``on_epoch`` receives each epoch's metrics (see ``Trainer``)."""
    out_dir = Path(out_dir)
    config = copy.deepcopy(config)
    options = config.model  # the run's config and checkpoints record the mode "auto" resolved to
    options.batchnorm = resolve_batchnorm(options.batchnorm, options.pretrained, options.backbone_weights)
    if resume and "batchnorm" not in _saved_model_keys(out_dir):
        options.batchnorm = "live"  # a run started before model.batchnorm existed trains on as it began
    ctx = init_distributed(config.train.device)
    try:
        if ctx.is_main:
            print_batch(config, ctx)
        with main_first(ctx):  # rank 0 builds the readers' caches, the others then load them
            datasets = build_datasets(config)
        labels = model_labels(config, datasets["train"])
        num_labels = len(labels)
        torch.manual_seed(config.seed)  # the same initial weights on every process and every run
        init_from = config.model.init_from
        model = build_from_config(model_config(config, num_labels), initial_weights=init_from is None)
        if init_from is not None and not resume:
            transfer = init_from_checkpoint(model, init_from, labels)
            if ctx.is_main:
                print(transfer.summary(init_from))
        if ctx.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            save_config(config, out_dir / "config.yaml")
        barrier(ctx)
        skip_log = out_dir / "skipped_images.jsonl"
        for dataset in datasets.values():
            if hasattr(dataset, "bad_image_log"):
                dataset.bad_image_log = skip_log
        if ctx.is_main:
            log_missing(datasets, skip_log)
        meta = checkpoint_meta(config, datasets["train"], num_labels)
        if ctx.is_main:
            print(f"initial weights: {describe_weights(meta['pretrained_weights'])}")
        trainer = Trainer(
            model,
            datasets["train"],
            datasets["val"],
            config,
            ctx,
            out_dir,
            meta,
            progress,
            desc="train",
            on_epoch=on_epoch,
        )
        result = trainer.fit(resume=resume)
        metrics = final_evaluation(trainer.model, datasets["test"], config, ctx)
        metrics.update(
            best_epoch=result.best_epoch, best_val_mAP=result.best_val_map, train_seconds=result.seconds
        )
        if ctx.is_main:
            metrics["skipped_images"] = summarize_skipped(skip_log, out_dir / "skipped_images.json")
            write_json(out_dir / "metrics.json", metrics)
        return metrics
    finally:
        shutdown_distributed()


def print_batch(config: Config, ctx: DistContext) -> None:
    """Say what one step trains on, and warn when live BatchNorm normalises over fewer than 8 images."""
    per_process, accum = config.train.batch_size, config.train.grad_accum
    line = f"batch: {per_process} images per process x {ctx.world_size} process(es)"
    if accum > 1:
        line += f" x {accum} accumulated"
    mode = config.model.batchnorm
    print(f"{line} = {per_process * ctx.world_size * accum} per step; backbone BatchNorm: {mode}")
    normalised = {"live": per_process, "sync": per_process * ctx.world_size}.get(mode)
    if normalised is not None and normalised < 8 and config.train.freeze_backbone != "all":
        print(
            f"ctran: warning: {mode} BatchNorm normalises over {normalised} images (fewer than 8 makes its "
            "statistics noisy); use model.batchnorm=frozen for a pretrained backbone, sync on several GPUs, "
            "or a larger train.batch_size",
            file=sys.stderr,
        )


def log_missing(datasets: dict[str, LabeledImages], log: Path) -> None:
    """Add the listed files each dataset left out as missing to the run's skipped-images log, said once."""
    missing = sorted({path for data in datasets.values() for path in getattr(data, "missing_files", [])})
    if not missing:
        return
    with open(log, "a") as file:
        file.writelines(json.dumps({"path": path, "reason": "missing on disk"}) + "\n" for path in missing)
    print(
        f"ctran: {len(missing)} listed images are missing on disk and were left out (e.g. {missing[0]}); "
        f"{log.with_suffix('.json')} lists them with the unreadable ones",
        file=sys.stderr,
    )


def summarize_skipped(log: Path, summary: Path) -> int:
    """Unique unreadable images of the run (each was logged every time it was met) -> JSON; their count."""
    if not log.exists():
        return 0
    unique: dict[str, str] = {}
    for line in log.read_text().splitlines():
        if line.strip():
            entry = json.loads(line)
            unique.setdefault(entry["path"], entry["reason"])
    entries = [{"path": path, "reason": reason} for path, reason in sorted(unique.items())]
    write_json(summary, {"count": len(entries), "images": entries})
    return len(entries)


def _saved_model_keys(out_dir: Path) -> set[str]:
    """The ``model`` keys a run folder's config.yaml names (none when there is no file to read)."""
    import yaml

    path = out_dir / "config.yaml"
    return set((yaml.safe_load(path.read_text()) or {}).get("model", {})) if path.is_file() else set()


def load_run_config(out_dir: str | Path) -> Config:
    """The config a run folder was started with (for ``--resume``)."""
    import yaml

    path = Path(out_dir) / "config.yaml"
    if not path.is_file():
        raise CTranError(f"cannot resume: {path} not found (is {out_dir} a ctran train output folder?)")
    return config_from_dict(yaml.safe_load(path.read_text()))
