"""``ctran tag``'s end-of-run counts: ``Summary.to_dict`` for ``--report``, ``summary_text`` for a person."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

SHOWN = 10  # labels and unmatched tags listed by name


@dataclass
class Summary:
    """The counts ``ctran tag`` reports (stderr and ``--report``)."""

    UNMATCHED_KEPT = 10_000  # distinct unmatched tags counted by name; beyond that only in the total

    images: int = 0
    tagged: int = 0
    done_before: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> images
    tags_read: int = 0
    tags_matched: int = 0
    tags_unmatched: int = 0
    conflicts: int = 0
    tags_added: int = 0
    files_written: int = 0
    added: Counter = field(default_factory=Counter)  # label -> images it was added to
    unmatched: Counter = field(default_factory=Counter)  # tag -> images it was on
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["skipped"] = dict(self.skipped)
        data["added"] = dict(self.added.most_common())
        data["unmatched"] = dict(self.unmatched.most_common())
        return data


def summary_text(summary: Summary, dry_run: bool = False) -> str:
    """Images read / tagged / skipped (with reasons), tags read / matched / unmatched, tags added and by
    which labels, as a few Markdown lines."""
    verb = "would add" if dry_run else "added"
    skipped = sum(summary.skipped.values())
    lines = [
        f"images: {summary.images} found, {summary.tagged} tagged, {summary.done_before} done earlier "
        f"(same settings, files unchanged), {skipped} skipped",
    ]
    lines += [f"  skipped, {reason}: {count}" for reason, count in summary.skipped.most_common() if count]
    lines.append(
        f"tags read: {summary.tags_read} ({summary.tags_matched} matched a label, {summary.tags_unmatched} "
        f"did not and were kept as they are, {summary.conflicts} labels said both present and absent)"
    )
    lines.append(f"tags {verb}: {summary.tags_added}; files written: {summary.files_written}")
    lines += _top(f"most {verb}", summary.added)
    lines += _top("most frequent unmatched tags", summary.unmatched)
    return "\n".join(lines) + "\n"


def _top(title: str, counts: Counter) -> list[str]:
    if not counts:
        return []
    shown = ", ".join(f"{name} ({count})" for name, count in counts.most_common(SHOWN))
    more = f", ... ({len(counts)} in all)" if len(counts) > SHOWN else ""
    return [f"{title}: {shown}{more}"]
