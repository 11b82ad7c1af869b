"""What ``ctran tag`` reads, how it decides and what it writes; light, so ``--help`` imports no torch."""

from __future__ import annotations

from dataclasses import dataclass, field

from ctran.errors import CTranError

READS = ("txt", "xmp", "none")
WRITES = ("txt", "xmp", "none")
MODES = ("add", "replace", "dry-run")


@dataclass
class TagOptions:
    """What ``ctran tag`` reads, how it decides, and what it writes."""

    reads: tuple[str, ...] = ("txt",)
    writes: tuple[str, ...] = ("txt",)
    mode: str = "add"
    separator: str = ","
    aliases: dict[str, str] = field(default_factory=dict)
    exclude: tuple[str, ...] = ()  # labels known absent on every image, never added
    extra: dict[str, bool] = field(default_factory=dict)  # extra labels true of every image
    threshold: float | None = None  # None: the checkpoint's calibrated thresholds (else 0.5)
    max_tags: int | None = None  # at most this many added per image, most probable first
    min_prob: float = 0.0
    backup: bool = False
    force: bool = False  # ignore what the manifest says was done
    workers: int = 1

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise CTranError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        self.reads = tuple(r for r in dict.fromkeys(self.reads) if r != "none")
        self.writes = tuple(w for w in dict.fromkeys(self.writes) if w != "none")
        if not self.separator:
            raise CTranError("the tag separator must not be empty")
        if self.max_tags is not None and self.max_tags < 0:
            raise CTranError(f"max_tags must be 0 or more, got {self.max_tags}")
        if not 0.0 <= self.min_prob <= 1.0:
            raise CTranError(f"min_prob must be in [0, 1], got {self.min_prob}")

    @property
    def writing(self) -> bool:
        return self.mode != "dry-run" and bool(self.writes)
