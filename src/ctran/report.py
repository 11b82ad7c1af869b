"""Human-readable results next to the machine-readable ones: Markdown tables and plots."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from ctran.files import atomic_write_bytes
from ctran.metrics import METRIC_KEYS


def write_json(path: str | Path, data: object) -> Path:
    """Pretty JSON, written atomically so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=2) + "\n"  # serialise first: a TypeError leaves no file behind
    atomic_write_bytes(path, text.encode())
    return path


def mark_not_scored(metrics: dict) -> dict:
    """A setting that scored nothing says why (``not_scored``), its metrics None, instead of NaN.

    "no entry left": every annotated label was revealed (or nothing was annotated); "no label with a scored
    positive": entries are left, but no label has a positive among them, so no AP is defined. NaN would
    read as a number in JSON and tables and poison any mean taken over settings.
    """
    if metrics.get("n_labels_scored", 1) > 0:
        return metrics
    reason = "no entry left" if metrics.get("n_entries", 0) == 0 else "no label with a scored positive"
    blanked = {key: None if isinstance(value, float) else value for key, value in metrics.items()}
    return {**blanked, "not_scored": reason}  # the counts and per-label positives stay


def metrics_table(
    rows: dict[str, dict], keys: tuple[str, ...] = ("mAP", *METRIC_KEYS[1:7]), counts: bool = False
) -> str:
    """A Markdown table with one row per named result and one column per metric (percent, 1 decimal).

    ``counts`` adds what each row was averaged over: scored images and labels with a scored positive. A
    setting that scored nothing shows ``not scored: <why>`` in its first metric column.
    """
    extra = ("images", "labels") if counts else ()
    lines = [
        "| setting | " + " | ".join((*extra, *keys)) + " |",
        "|---|" + "---:|" * (len(extra) + len(keys)),
    ]
    for name, metrics in rows.items():
        cells = [str(metrics.get(k, "-")) for k in ("n_images", "n_labels_scored")[: len(extra)]]
        if "not_scored" in metrics:
            cells += [f"not scored: {metrics['not_scored']}"] + ["-"] * (len(keys) - 1)
        else:
            cells += [f"{metrics[k]:.1f}" if metrics.get(k) is not None else "-" for k in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ settings
# Evaluation results are nested by kind, ``{"regular": m, "partial": {"0.5": m}, "extra": m,
# "partial_extra": {"0.5": m}}`` (``ctran.training.evaluation.evaluate``, ``metrics.json``'s ``settings``);
# each setting also has one flat name, ``regular``, ``partial_0.5``, ``extra``, ``partial_0.5+extra``.


def setting_name(known: float, extra: bool) -> str:
    """The one name of a setting: the fraction of target labels known, and whether extras are revealed."""
    if known == 0:
        return "extra" if extra else "regular"
    return f"partial_{known:g}" + ("+extra" if extra else "")


def add_setting(results: dict, known: float, extra: bool, metrics: dict) -> None:
    """Store one setting's metrics in the nested results (the inverse of ``iter_settings``)."""
    if known == 0:
        results["extra" if extra else "regular"] = metrics
    else:
        results.setdefault("partial_extra" if extra else "partial", {})[f"{known:g}"] = metrics


def iter_settings(results: dict) -> Iterator[tuple[float, bool, dict]]:
    """(fraction known, extras revealed, metrics) for every setting in nested results, in stored order."""
    for key, value in results.items():
        if key in ("regular", "extra"):
            yield 0.0, key == "extra", value
        elif key in ("partial", "partial_extra"):
            for fraction, metrics in value.items():
                yield float(fraction), key == "partial_extra", metrics


def settings_by_name(results: dict) -> dict[str, dict]:
    """Nested results -> ``{"regular": m, "partial_0.5": m, "partial_0.5+extra": m, ...}``."""
    return {setting_name(known, extra): m for known, extra, m in iter_settings(results)}


def flatten_settings(results: dict, prefix: str = "") -> dict[str, dict]:
    """Nested results -> rows for people: ``{"regular": m, "partial 50% known": m, "extra": m, ...}``."""
    rows = {}
    for known, extra, metrics in iter_settings(results):
        name = f"partial {known:.0%} known" if known else ""
        name = " + ".join(filter(None, [name, "extra" if extra else ""])) or "regular"
        rows[f"{prefix}{name}"] = metrics
    return rows


def plot_map_vs_known(
    curves: dict[str, dict], path: str | Path, extra: dict[str, float] | None = None
) -> Path:
    """mAP (on unknown labels) against the fraction of labels known, one line per model.

    ``curves`` maps a model name to its evaluation results (``regular`` + ``partial``); ``extra`` maps a model
    name to its extra-label mAP, drawn as a horizontal reference line.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, results in curves.items():
        points = [(0.0, results["regular"]["mAP"])]
        points += sorted((float(f), m["mAP"]) for f, m in results.get("partial", {}).items())
        points = [(x, y) for x, y in points if y is not None]  # a setting that scored nothing has no point
        xs, ys = zip(*points, strict=True)
        ax.plot([100 * x for x in xs], ys, marker="o", label=name)
    for name, value in (extra or {}).items():
        ax.axhline(value, linestyle="--", color="grey", label=f"{name}, extra labels known")
    ax.set_xlabel("target labels known (%)")
    ax.set_ylabel("mAP on unknown labels (%)")
    ax.set_title("Partial-label inference")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
