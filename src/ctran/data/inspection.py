"""What ``ctran data check`` and ``ctran data stats`` compute: counts, file problems, co-occurrence, plots.

Everything reads the datasets' label tables (``target_table``, ``extra_table``), never decodes an image to
count labels, and works in row chunks so Open Images' sparse tables are never densified whole.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ctran.data.images import DECODE_ERRORS
from ctran.data.transforms import load_image
from ctran.extras import pyplot

CHUNK = 65_536


def verify_images(dataset, workers: int = 4, progress: bool = True) -> dict[str, str]:
    """Decode every image that exists on disk; ``{path: reason}`` for those that cannot be read."""
    if not hasattr(dataset, "path"):
        return {}
    missing = set(dataset.missing_files)
    paths = [str(dataset.path(i)) for i in range(len(dataset))]
    paths = [p for p in paths if p not in missing]
    problems: dict[str, str] = {}
    bar = tqdm(total=len(paths), desc="verify images", unit=" img", disable=not progress)
    with ThreadPoolExecutor(max(1, workers)) as pool:  # PIL releases the GIL while decoding
        for start in range(0, len(paths), 1024):
            chunk = paths[start : start + 1024]
            for path, reason in zip(chunk, pool.map(_decode_problem, chunk), strict=True):
                if reason is not None:
                    problems[path] = reason
            bar.update(len(chunk))
    bar.close()
    return problems


def _decode_problem(path: str) -> str | None:
    try:
        load_image(path)
    except DECODE_ERRORS as err:
        return f"{type(err).__name__}: {err}"
    return None


def label_summary(table, names: tuple[str, ...]) -> dict:
    """Positives per label, labels per image, never-positive labels and not-annotated entries of a table."""
    positives = table.counts(1)
    per_image = table.per_image(1)
    return {
        "labels": len(names),
        "label_counts": {name: int(count) for name, count in zip(names, positives, strict=True)},
        "negative_counts": {name: int(count) for name, count in zip(names, table.counts(0), strict=True)},
        "not_annotated_entries": int(table.counts(-1).sum()),
        "labels_per_image": _distribution(per_image),
        "images_without_positive": int((per_image == 0).sum()),
        "labels_never_positive": [name for name, count in zip(names, positives, strict=True) if count == 0],
    }


def _distribution(values: np.ndarray) -> dict[str, float]:
    if not len(values):
        return {"mean": 0.0, "median": 0.0, "min": 0, "max": 0}
    return {
        "mean": float(values.mean()),
        "median": float(np.median(values)),
        "min": int(values.min()),
        "max": int(values.max()),
    }


def dataset_report(dataset, unreadable: dict[str, str] | None = None) -> dict:
    """The ``ctran data check`` JSON: images, targets' summary, extras' summary, file problems, notes."""
    unreadable = unreadable or {}
    report = {"images": len(dataset), **label_summary(dataset.target_table, tuple(dataset.target_names))}
    if dataset.extra_names:
        extra = label_summary(dataset.extra_table, tuple(dataset.extra_names))
        report["extras"] = {key: extra[key] for key in ("labels", "label_counts", "labels_never_positive")}
        report["extras"]["groups"] = len(getattr(dataset, "extra_groups", []))
    report["missing_files"] = list(dataset.missing_files)
    report["unreadable_files"] = sorted(unreadable)
    report["unreadable_reasons"] = dict(sorted(unreadable.items()))
    report["notes"] = list(dataset.notes)
    return report


def cooccurrence(table, columns: np.ndarray) -> np.ndarray:
    """(K, K) int64: images positive for both labels of each pair among ``columns`` (diagonal: positives)."""
    counts = np.zeros((len(columns), len(columns)), dtype=np.float64)
    for start in range(0, len(table), CHUNK):
        block = (table.rows(start, min(start + CHUNK, len(table)), columns) == 1).astype(np.float32)  # (n, K)
        counts += block.T @ block
    return np.rint(counts).astype(np.int64)


def top_labels(counts: np.ndarray, top: int) -> np.ndarray:
    """Indices of the ``top`` most frequent labels, most frequent first (ties by label order)."""
    return np.argsort(-counts, kind="stable")[:top]


def plot_label_frequency(names: list[str], counts: np.ndarray, path: str | Path, title: str) -> Path:
    """Bar chart of positives per label, most frequent first."""
    plt = pyplot("drawing label statistics")
    fig, ax = plt.subplots(figsize=(max(6.0, 0.18 * len(names) + 2), 4.5))
    ax.bar(range(len(names)), counts, color="tab:blue")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=max(4, min(9, 700 // max(len(names), 1))))
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_ylabel("images with the label")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_cooccurrence(names: list[str], counts: np.ndarray, path: str | Path, title: str) -> Path:
    """Heat map of P(column label | row label) = co-occurrences / row label's positives."""
    plt = pyplot("drawing label statistics")
    conditional = counts / np.maximum(np.diag(counts), 1)[:, None]  # (K, K)
    size = max(5.0, 0.16 * len(names) + 2.5)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(conditional, cmap="viridis", vmin=0, vmax=1)
    fontsize = max(4, min(9, 700 // max(len(names), 1)))
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=fontsize)
    ax.set_yticks(range(len(names)), names, fontsize=fontsize)
    ax.set_xlabel("label B")
    ax.set_ylabel("label A")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="P(B | A)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
