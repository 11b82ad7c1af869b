"""Human-readable results next to the machine-readable ones: Markdown tables and plots."""

from __future__ import annotations

import json
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


def metrics_table(rows: dict[str, dict], keys: tuple[str, ...] = ("mAP", *METRIC_KEYS[1:7])) -> str:
    """A Markdown table with one row per named result and one column per metric (percent, 1 decimal)."""
    lines = ["| setting | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    for name, metrics in rows.items():
        cells = [f"{metrics[k]:.1f}" if k in metrics else "-" for k in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def flatten_settings(results: dict, prefix: str = "") -> dict[str, dict]:
    """``{"regular": m, "partial": {"0.5": m}}`` -> ``{"regular": m, "partial 50% known": m}``."""
    rows = {}
    for name, value in results.items():
        if name == "partial":
            for fraction, metrics in value.items():
                rows[f"{prefix}partial {float(fraction):.0%} known"] = metrics
        else:
            rows[f"{prefix}{name}"] = value
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
