"""What ``ctran tag`` has done, in SQLite: a killed run resumes, and a second run adds nothing.

A row per image says which settings tagged it (a fingerprint of the checkpoint and the options), the hash
of every tag file it read or wrote as it was left, and which tags ctran itself added. An image whose row
has the same fingerprint and whose files still hash the same is done: it is skipped, so re-running changes
nothing even though the tags added last time would now be known labels. Editing a caption (or changing an
option) makes the image due again.

A batch is recorded in two steps around its file writes: ``pending`` rows keep each file's original bytes,
then ``done`` rows once every file is written. A run killed in between resumes from the originals, so the
tags it had just added are not mistaken for the user's.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ctran.files import file_sha256
from ctran.sqlite import connect, transaction

SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    image TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'done')),
    files TEXT NOT NULL,      -- {path: sha256 as left, or null when absent}
    originals TEXT NOT NULL,  -- pending only: {path: original bytes as hex, or null when absent}
    ours TEXT NOT NULL,       -- tags ctran added that are in the files
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS outputs (path TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, size INTEGER NOT NULL);
"""


def digest(data: bytes | None) -> str | None:
    return None if data is None else hashlib.sha256(data).hexdigest()


def file_digest(path: Path) -> str | None:
    """sha256 of a file's bytes, None when it does not exist."""
    try:
        return file_sha256(path)
    except FileNotFoundError:
        return None


@dataclass
class Entry:
    """One image's record: done (skip it), or pending (resume it from its files' original bytes)."""

    status: str
    fingerprint: str
    files: dict[str, str | None]
    originals: dict[str, bytes | None] = field(default_factory=dict)
    ours: list[str] = field(default_factory=list)


@dataclass
class Record:
    """What a batch tells the manifest about one image."""

    image: str
    files: dict[str, str | None]  # the image's ``watched_files``: what each is as left (None: absent)
    originals: dict[str, bytes | None]  # the same files before this run wrote them
    ours: list[str]


class Manifest:
    """The SQLite file of one library; WAL, one transaction per batch step."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = connect(path, SCHEMA)

    def close(self) -> None:
        self._db.close()

    def entry(self, image: str) -> Entry | None:
        row = self._db.execute(
            "SELECT status, fingerprint, files, originals, ours FROM images WHERE image = ?", (image,)
        ).fetchone()
        if row is None:
            return None
        originals = {p: None if h is None else bytes.fromhex(h) for p, h in json.loads(row[3]).items()}
        return Entry(row[0], row[1], json.loads(row[2]), originals, json.loads(row[4]))

    def pending(self, fingerprint: str, records: Iterable[Record]) -> None:
        """Before a batch's files are written: their original bytes, to resume from if the run dies."""
        with transaction(self._db):
            self._upsert(fingerprint, "pending", records)

    def done(self, fingerprint: str, records: Iterable[Record], output: Path | None = None) -> None:
        """After a batch's files (and its ``--jsonl`` lines, up to ``output``'s size now) are written."""
        with transaction(self._db):
            self._upsert(fingerprint, "done", records)
            if output is not None:
                self._db.execute(
                    "INSERT OR REPLACE INTO outputs VALUES (?, ?, ?)",
                    (str(output.resolve()), fingerprint, output.stat().st_size),
                )

    def output_size(self, output: Path, fingerprint: str) -> int | None:
        """How much of ``output`` earlier runs with these settings completed (None: start it anew)."""
        row = self._db.execute(
            "SELECT size FROM outputs WHERE path = ? AND fingerprint = ?",
            (str(output.resolve()), fingerprint),
        ).fetchone()
        return None if row is None else row[0]

    def _upsert(self, fingerprint: str, status: str, records: Iterable[Record]) -> None:
        now = time.time()
        rows = [
            (
                r.image,
                fingerprint,
                status,
                json.dumps(r.files),
                json.dumps({p: None if b is None else b.hex() for p, b in r.originals.items()})
                if status == "pending"
                else "{}",
                json.dumps(r.ours),
                now,
            )
            for r in records
        ]
        self._db.executemany("INSERT OR REPLACE INTO images VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
