"""Compare finished runs: every setting's metrics side by side (``ctran compare runs/a runs/b ...``).

A source is a run folder (``ctran train``: ``metrics.json``, plus ``config.yaml`` for what was trained;
``ctran demo``: ``report.json``, which holds C-Tran and the baseline), or a JSON file written by
``ctran evaluate --json``, ``ctran train --json`` or ``ctran demo --json``. Results are read in the nested
form of ``ctran.training.evaluation.evaluate`` and named as ``ctran.report.setting_name`` names them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ctran.errors import CTranError
from ctran.extras import pyplot
from ctran.report import COLUMN_NAMES, SAME_ENTRIES, settings_by_name

TABLE_KEYS = ("mAP", *SAME_ENTRIES, "CP", "CR", "CF1", "OP", "OR", "OF1")
"""The full table's columns; ``untold_mAP`` and ``gain`` (told settings only) are "-" elsewhere."""
RUN_KEYS = ("model", "backbone", "data", "epochs", "label_mask", "best_epoch", "train_seconds", "checkpoint")
"""What the last table says about each run (train_seconds rounded to whole seconds)."""


@dataclass
class RunResults:
    """One compared model: its name, where it came from, its settings' metrics and what was trained."""

    name: str
    source: str
    settings: dict[str, dict]  # setting name -> metrics
    info: dict = field(default_factory=dict)


def load_results(path: str | Path) -> list[RunResults]:
    """The results in a run folder or JSON file; a demo folder gives two (C-Tran and the baseline)."""
    path = Path(path)
    if path.is_dir():
        return _load_folder(path)
    if path.is_file():
        return _from_json(_read_json(path), path.stem, str(path), {})
    raise CTranError(f"{path}: no such run folder or JSON file")


def _load_folder(folder: Path) -> list[RunResults]:
    info = _run_info(folder)
    if (folder / "metrics.json").is_file():
        return _from_json(_read_json(folder / "metrics.json"), folder.name, str(folder), info)
    if (folder / "report.json").is_file():
        return _from_json(_read_json(folder / "report.json"), folder.name, str(folder), info)
    if (folder / "config.yaml").is_file():
        raise CTranError(
            f"{folder} is a run that has not finished (no metrics.json yet): finish it with "
            f"ctran train --resume {folder}, or score its best.pt with ctran evaluate --json FILE"
        )
    raise CTranError(
        f"{folder} is not a ctran run folder: it has no metrics.json (ctran train), report.json (ctran demo) "
        "or config.yaml"
    )


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CTranError(f"{path}: cannot read JSON ({err})") from err
    if not isinstance(data, dict):
        raise CTranError(f"{path}: expected a JSON object of results")
    return data


def _from_json(data: dict, name: str, source: str, info: dict) -> list[RunResults]:
    """evaluate/train JSON (``settings``) or a demo report (``ctran`` and ``baseline``)."""
    if isinstance(data.get("settings"), dict):
        extra_info = {k: data[k] for k in ("checkpoint", "best_epoch", "train_seconds") if k in data}
        return [RunResults(name, source, settings_by_name(data["settings"]), {**info, **extra_info})]
    if isinstance(data.get("ctran"), dict) and isinstance(data.get("baseline"), dict):
        seconds = data.get("train_seconds", {})
        return [
            RunResults(
                f"{name}/{model}",
                source,
                settings_by_name(data[model]),
                {"train_seconds": seconds.get(model)},
            )
            for model in ("ctran", "baseline")
        ]
    raise CTranError(
        f"{source} holds no ctran results: expected the JSON of ctran evaluate/train (with 'settings') or "
        "of ctran demo (with 'ctran' and 'baseline')"
    )


def _run_info(folder: Path) -> dict:
    """What a ``ctran train`` folder's config says was trained (empty when it has no config.yaml)."""
    path = folder / "config.yaml"
    if not path.is_file():
        return {}
    import yaml

    config = yaml.safe_load(path.read_text()) or {}
    model, data, train = (config.get(k) or {} for k in ("model", "data", "train"))
    return {
        "model": model.get("kind", "ctran"),
        "backbone": model.get("backbone"),
        "data": data.get("format"),
        "epochs": train.get("epochs"),
        "label_mask": train.get("label_mask"),
    }


def unique_names(runs: list[RunResults]) -> list[RunResults]:
    """Runs whose names clash (``a/run`` and ``b/run``) are named by their source instead."""
    names = [run.name for run in runs]
    for run in runs:
        if names.count(run.name) > 1:
            suffix = run.name.partition("/")[2]
            run.name = f"{run.source}/{suffix}" if suffix else run.source
    return runs


def compare_runs(runs: Sequence[RunResults]) -> dict:
    """Every setting any run has, in first-seen order, with each run's metrics (None where it lacks one)."""
    settings = list(dict.fromkeys(name for run in runs for name in run.settings))
    table = {s: {run.name: _summary(run.settings.get(s)) for run in runs} for s in settings}
    return {
        "runs": [{"name": run.name, "source": run.source, **run.info} for run in runs],
        "settings": table,
        "notes": _notes(table),
    }


def _summary(metrics: dict | None) -> dict | None:
    """The compared numbers of one setting (per-label AP stays in the run's own JSON)."""
    if metrics is None:
        return None
    return {k: v for k, v in metrics.items() if k != "per_label" and isinstance(v, int | float)}


def _notes(table: dict[str, dict]) -> list[str]:
    """What a reader needs before trusting a difference: a setting scored on different numbers of images
    (another split, dataset or size) is not a like-for-like comparison."""
    notes = []
    for setting, row in table.items():
        counts = {name: m.get("n_images") for name, m in row.items() if m is not None}
        if len(set(counts.values())) > 1:
            shown = ", ".join(f"{name} {count}" for name, count in counts.items())
            notes.append(f"{setting}: the runs scored different numbers of images ({shown})")
    return notes


def _cell(value: float | None, bold: bool = False, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    text = f"{value:+.1f}" if signed else f"{value:.1f}"
    return f"**{text}**" if bold else text


def _info_cell(value: object) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if isinstance(value, float) else str(value)


def markdown(comparison: dict, metric: str = "mAP") -> str:
    """A ``metric`` table (settings x runs, best in bold; - where a run lacks the setting), the full table,
    what each run trained, and the notes."""
    names = [run["name"] for run in comparison["runs"]]
    lines = [f"| setting | {' | '.join(names)} |", "|---|" + "---:|" * len(names)]
    for setting, row in comparison["settings"].items():
        values = [None if row[n] is None else row[n].get(metric) for n in names]
        finite = [v for v in values if v is not None and not math.isnan(v)]
        best = max(finite) if len(finite) > 1 else None
        cells = (_cell(v, v == best, metric == "gain") for v in values)
        lines.append(f"| {setting} | " + " | ".join(cells) + " |")
    headers = " | ".join(COLUMN_NAMES.get(k, k) for k in TABLE_KEYS)
    lines += ["", f"| setting | run | images | labels | {headers} |"]
    lines.append("|---|---|---:|---:|" + "---:|" * len(TABLE_KEYS))
    for setting, row in comparison["settings"].items():
        for name in names:
            m = row[name]
            if m is not None:
                cells = [str(m.get("n_images", "-")), str(m.get("n_labels_scored", "-"))]
                cells += [_cell(m.get(k), signed=k == "gain") for k in TABLE_KEYS]
                lines.append(f"| {setting} | {name} | " + " | ".join(cells) + " |")
    runs = comparison["runs"]
    keys = [k for k in RUN_KEYS if any(run.get(k) is not None for run in runs)]
    if keys:
        lines += ["", f"| run | source | {' | '.join(keys)} |", "|---|---|" + "---|" * len(keys)]
        for run in runs:
            cells = [_info_cell(run.get(k)) for k in keys]
            lines.append(f"| {run['name']} | {run['source']} | " + " | ".join(cells) + " |")
    if comparison["notes"]:
        lines += ["", *(f"note: {note}" for note in comparison["notes"])]
    return "\n".join(lines) + "\n"


def plot(comparison: dict, path: str | Path, metric: str = "mAP") -> Path:
    """Grouped bars: one group per setting, one bar per run, the value on each bar."""
    plt = pyplot("the comparison plot")

    names = [run["name"] for run in comparison["runs"]]
    settings = list(comparison["settings"])
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(settings) * max(1, len(names) / 2) + 1.5), 4))
    for i, name in enumerate(names):
        values = [(comparison["settings"][s][name] or {}).get(metric, math.nan) for s in settings]
        xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(settings))]
        bars = ax.bar(xs, values, width, label=name)
        labels = ["" if math.isnan(v) else f"{v:.1f}" for v in values]
        ax.bar_label(bars, labels=labels, fontsize=7, padding=1)
    ax.set_xticks(range(len(settings)), settings, rotation=20, ha="right")
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title(f"{metric} per setting")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
