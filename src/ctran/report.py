"""Human-readable results next to the machine-readable ones: Markdown tables and plots."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from ctran.extras import pyplot
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


SAME_ENTRIES = ("untold_mAP", "gain")
"""What a told setting's metrics add (``ctran.training.evaluation``): the mAP of the same scored entries with
nothing told, and the setting's mAP minus it, in percent points."""

COLUMN_NAMES = {"untold_mAP": "untold"}


def metrics_table(
    rows: dict[str, dict], keys: tuple[str, ...] = ("mAP", *METRIC_KEYS[1:7]), counts: bool = False
) -> str:
    """A Markdown table with one row per named result and one column per metric (percent, 1 decimal).

    ``counts`` adds what each row was averaged over: scored images and labels with a scored positive. When a
    row has ``untold_mAP``, ``untold`` and ``gain`` (signed) columns follow mAP; a row without them
    (regular) shows "-". A setting that scored nothing shows ``not scored: <why>`` in its first metric
    column.
    """
    if "mAP" in keys and any(SAME_ENTRIES[0] in metrics for metrics in rows.values()):
        after = keys.index("mAP") + 1
        keys = (*keys[:after], *SAME_ENTRIES, *keys[after:])
    extra = ("images", "labels") if counts else ()
    lines = [
        "| setting | " + " | ".join((*extra, *(COLUMN_NAMES.get(k, k) for k in keys))) + " |",
        "|---|" + "---:|" * (len(extra) + len(keys)),
    ]
    for name, metrics in rows.items():
        cells = [str(metrics.get(k, "-")) for k in ("n_images", "n_labels_scored")[: len(extra)]]
        if "not_scored" in metrics:
            cells += [f"not scored: {metrics['not_scored']}"] + ["-"] * (len(keys) - 1)
        else:
            cells += [_percent(metrics.get(k), signed=k == "gain") for k in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _percent(value: float | None, signed: bool = False) -> str:
    """One decimal (with its sign for a difference); "-" for a missing value."""
    if value is None:
        return "-"
    return f"{value:+.1f}" if signed else f"{value:.1f}"


# ------------------------------------------------------------------------------------ settings
# Evaluation results are nested by kind, ``{"regular": m, "partial": {"0.5": m}, "positives": {"0.5": m},
# "extra": m, "partial_extra": {"0.5": m}, "positives_extra": {"0.5": m}}``
# (``ctran.training.evaluation.evaluate``, ``metrics.json``'s ``settings``); each setting also has one flat
# name, ``regular``, ``partial_0.5``, ``positives_0.5``, ``extra``, ``partial_0.5+extra``,
# ``positives_0.5+extra``. A setting is (fraction of all annotated labels known, extras revealed, fraction of
# the present labels known), the fields of ``ctran.training.evaluation.Setting``; at most one fraction is set.

_FRACTION_KEYS = {  # nested key -> (fraction of the present labels, extras revealed)
    "partial": (False, False),
    "partial_extra": (False, True),
    "positives": (True, False),
    "positives_extra": (True, True),
}


def _nested_key(known: float, extra: bool, positives: float) -> tuple[str, float]:
    """Where a setting sits in nested results, and its fraction known (0: regular or extra, no fraction)."""
    if known and positives:
        raise ValueError("a setting knows a fraction of all labels or of the present ones, not both")
    if not (known or positives):
        return "extra" if extra else "regular", 0.0
    kind = "positives" if positives else "partial"
    return f"{kind}_extra" if extra else kind, known or positives


def setting_name(known: float, extra: bool, positives: float = 0.0) -> str:
    """The one name of a setting: the fraction of target labels known (of all annotated ones, or of the
    present ones), and whether extras are revealed."""
    key, fraction = _nested_key(known, extra, positives)
    if not fraction:
        return key
    return f"{key.removesuffix('_extra')}_{fraction:g}" + ("+extra" if extra else "")


def add_setting(results: dict, known: float, extra: bool, metrics: dict, positives: float = 0.0) -> None:
    """Store one setting's metrics in the nested results (the inverse of ``iter_settings``)."""
    key, fraction = _nested_key(known, extra, positives)
    if fraction:
        results.setdefault(key, {})[f"{fraction:g}"] = metrics
    else:
        results[key] = metrics


def iter_settings(results: dict) -> Iterator[tuple[float, bool, float, dict]]:
    """(fraction of all labels known, extras revealed, fraction of present labels known, metrics) for every
    setting in nested results, in stored order."""
    for key, value in results.items():
        if key in ("regular", "extra"):
            yield 0.0, key == "extra", 0.0, value
        elif key in _FRACTION_KEYS:
            of_present, extra = _FRACTION_KEYS[key]
            for text, metrics in value.items():
                fraction = float(text)
                yield (0.0, extra, fraction, metrics) if of_present else (fraction, extra, 0.0, metrics)


def settings_by_name(results: dict) -> dict[str, dict]:
    """Nested results -> ``{"regular": m, "partial_0.5": m, "positives_0.5+extra": m, ...}``."""
    return {setting_name(known, extra, positives): m for known, extra, positives, m in iter_settings(results)}


def flatten_settings(results: dict, prefix: str = "") -> dict[str, dict]:
    """Nested results -> rows for people: ``{"regular": m, "partial 50% known": m, "50% of present labels
    known": m, "extra": m, ...}``."""
    rows = {}
    for known, extra, positives, metrics in iter_settings(results):
        name = f"partial {known:.0%} known" if known else ""
        name = f"{positives:.0%} of present labels known" if positives else name
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
    plt = pyplot("the mAP-against-known plot")

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
