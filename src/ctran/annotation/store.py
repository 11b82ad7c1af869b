"""Every answer given about a library's images, in SQLite: nothing is lost, nothing is overwritten.

An answer is a row: (image, label, value, source, annotator, time), value 1 (yes), 0 (no) or NULL (cleared:
back to unknown). Rows are only ever added, so the history keeps every answer of every annotator; an
image's current state is the last row per label (the last answer wins). Undo adds a row too: it points at
the undone answer and sets the label to the latest answer still standing without it.

WAL mode, ``synchronous=FULL`` and one transaction per answer: a crash or ``kill -9`` at any moment loses at
most the answer in flight, and several processes (two browsers on one server, a script beside it) can
write at once; SQLite serialises the writers.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ctran.errors import CTranError
from ctran.sqlite import connect, transaction

SOURCES = ("human", "imported", "accepted", "undo")
SCHEMA = """
CREATE TABLE IF NOT EXISTS labels (
    name TEXT PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('target', 'extra')),
    trained INTEGER NOT NULL,  -- 0: added in the library, the checkpoint knows nothing of it yet
    added REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS answers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    image TEXT NOT NULL,       -- the path relative to the library folder, with '/'
    label TEXT NOT NULL REFERENCES labels(name),
    value INTEGER CHECK (value IN (0, 1)),  -- NULL: cleared (unknown again)
    source TEXT NOT NULL CHECK (source IN ('human', 'imported', 'accepted', 'undo')),
    annotator TEXT NOT NULL,
    time REAL NOT NULL,
    undoes INTEGER REFERENCES answers(id)
);
CREATE INDEX IF NOT EXISTS answers_by_image ON answers (image, label, id);
CREATE TABLE IF NOT EXISTS imports (
    image TEXT PRIMARY KEY,
    versions TEXT NOT NULL  -- {tag file: sha256 or null} as last imported
);
CREATE INDEX IF NOT EXISTS answers_by_annotator ON answers (annotator, id);
CREATE TABLE IF NOT EXISTS checkpoints (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- the last row is the library's current model
    path TEXT NOT NULL,
    time REAL NOT NULL,
    info TEXT NOT NULL  -- JSON: what it was trained from (parent checkpoint, answers, labels, metrics)
);
"""


@dataclass(frozen=True)
class Answer:
    """One row of the history."""

    id: int
    image: str
    label: str
    value: bool | None
    source: str
    annotator: str
    time: float
    undoes: int | None = None

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "image": self.image,
            "label": self.label,
            "value": self.value,
            "source": self.source,
            "annotator": self.annotator,
            "time": self.time,
            "undoes": self.undoes,
        }


class AnswerStore:
    """The answers of one library (``DIR/.ctran/library.sqlite``); safe to share between threads."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._db = connect(self.path, SCHEMA, threads=True)
        self._lock = threading.Lock()  # one connection, many server threads

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------------------------------------ labels
    def add_labels(self, names: Iterable[str], kind: str = "target", trained: bool = True) -> None:
        """Labels the answers may name; one already there keeps what it was."""
        now = time.time()
        rows = [(name, kind, int(trained), now) for name in names]
        with self._lock, transaction(self._db):
            self._db.executemany("INSERT OR IGNORE INTO labels VALUES (?, ?, ?, ?)", rows)

    def labels(self, kind: str | None = None) -> list[tuple[str, str, bool]]:
        """(name, kind, trained) in the order they were added."""
        query = "SELECT name, kind, trained FROM labels"
        args: tuple = ()
        if kind is not None:
            query, args = query + " WHERE kind = ?", (kind,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY rowid", args).fetchall()
        return [(name, k, bool(trained)) for name, k, trained in rows]

    # ------------------------------------------------------------------------------------- checkpoints
    def record_checkpoint(
        self, path: str | Path, trained: Iterable[str] = (), info: dict | None = None
    ) -> None:
        """Make ``path`` the library's current model, and mark the labels it was trained on as trained (a
        label added in the library stops showing "not trained yet"), in one transaction."""
        with self._lock, transaction(self._db):
            self._db.execute(
                "INSERT INTO checkpoints (path, time, info) VALUES (?, ?, ?)",
                (str(path), time.time(), json.dumps(info or {})),
            )
            self._db.executemany("UPDATE labels SET trained = 1 WHERE name = ?", [(n,) for n in trained])

    def current_checkpoint(self) -> str | None:
        """The checkpoint the last retrain wrote (None: the library was never retrained)."""
        with self._lock:
            row = self._db.execute("SELECT path FROM checkpoints ORDER BY id DESC LIMIT 1").fetchone()
        return None if row is None else row[0]

    def checkpoints(self) -> list[tuple[str, float, dict]]:
        """(path, time, info) of every checkpoint the library was retrained into, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT path, time, info FROM checkpoints ORDER BY id").fetchall()
        return [(path, when, json.loads(info)) for path, when, info in rows]

    # ----------------------------------------------------------------------------------------- answers
    def answer(
        self, image: str, label: str, value: bool | None, annotator: str, source: str = "human"
    ) -> Answer:
        """Record one answer (its own transaction: once this returns, it survives a crash)."""
        return self.answers([(image, label, value)], annotator, source)[0]

    def answers(
        self, items: Sequence[tuple[str, str, bool | None]], annotator: str, source: str = "human"
    ) -> list[Answer]:
        """Record several answers at once, all or none (an import, accepting every prediction)."""
        if source not in SOURCES:
            raise CTranError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
        if not annotator.strip():
            raise CTranError("an answer needs an annotator name")
        known = {name for name, _, _ in self.labels()}
        for _, label, _ in items:
            if label not in known:
                raise CTranError(f"unknown label {label!r}; add it to the library first")
        now = time.time()
        with self._lock, transaction(self._db):
            return [
                self._insert(image, label, value, source, annotator, now, None)
                for image, label, value in items
            ]

    def undo(self, annotator: str, image: str | None = None) -> Answer | None:
        """Undo ``annotator``'s last answer not yet undone (on ``image`` if given): a new row sets the label
        to what it would be without it, the latest answer still standing, whoever gave it: the one before
        it, or a later one of another annotator's, which an undo must not overwrite. Repeated calls walk
        back further. None when nothing is left."""
        with self._lock, transaction(self._db):
            query = (
                "SELECT id, image, label FROM answers a WHERE annotator = ? AND source != 'undo'"
                " AND NOT EXISTS (SELECT 1 FROM answers u WHERE u.undoes = a.id)"
            )
            args: tuple = (annotator,)
            if image is not None:
                query, args = query + " AND image = ?", (*args, image)
            row = self._db.execute(query + " ORDER BY id DESC LIMIT 1", args).fetchone()
            if row is None:
                return None
            target, image_id, label = row
            standing = self._db.execute(
                "SELECT value FROM answers a WHERE image = ? AND label = ? AND id != ? AND source != 'undo'"
                " AND NOT EXISTS (SELECT 1 FROM answers u WHERE u.undoes = a.id) ORDER BY id DESC LIMIT 1",
                (image_id, label, target),
            ).fetchone()
            value = None if standing is None or standing[0] is None else bool(standing[0])
            return self._insert(image_id, label, value, "undo", annotator, time.time(), target)

    def imported(self, image: str) -> dict[str, str | None] | None:
        """The versions of the image's tag files last imported (None: never)."""
        with self._lock:
            row = self._db.execute("SELECT versions FROM imports WHERE image = ?", (image,)).fetchone()
        return None if row is None else json.loads(row[0])

    def record_import(
        self,
        image: str,
        versions: dict[str, str | None],
        items: Sequence[tuple[str, str, bool | None]],
        annotator: str,
    ) -> None:
        """An image's tags imported from its files, and which versions they were, in one transaction."""
        now = time.time()
        with self._lock, transaction(self._db):
            for item_image, label, value in items:
                self._insert(item_image, label, value, "imported", annotator, now, None)
            self._db.execute("INSERT OR REPLACE INTO imports VALUES (?, ?)", (image, json.dumps(versions)))

    def state(self, image: str) -> dict[str, bool]:
        """The image's current answers: label -> yes/no (cleared and never-answered labels are absent)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT label, value FROM answers WHERE id IN "
                "(SELECT MAX(id) FROM answers WHERE image = ? GROUP BY label)",
                (image,),
            ).fetchall()
        return {label: bool(value) for label, value in rows if value is not None}

    def states(self) -> dict[str, dict[str, bool]]:
        """Every image's current answers (images with none are absent), for export and training."""
        with self._lock:
            rows = self._db.execute(
                "SELECT image, label, value FROM answers WHERE id IN "
                "(SELECT MAX(id) FROM answers GROUP BY image, label) ORDER BY image"
            ).fetchall()
        result: dict[str, dict[str, bool]] = {}
        for image, label, value in rows:
            if value is not None:
                result.setdefault(image, {})[label] = bool(value)
        return result

    def history(self, image: str | None = None, limit: int | None = None) -> list[Answer]:
        """Answers newest first (of one image, or all)."""
        query, args = "SELECT * FROM answers", ()
        if image is not None:
            query, args = query + " WHERE image = ?", (image,)
        query += " ORDER BY id DESC"
        if limit is not None:
            query, args = query + " LIMIT ?", (*args, limit)
        with self._lock:
            return [_row(row) for row in self._db.execute(query, args).fetchall()]

    def _insert(
        self,
        image: str,
        label: str,
        value: bool | None,
        source: str,
        annotator: str,
        now: float,
        undoes: int | None,
    ) -> Answer:
        stored = None if value is None else int(bool(value))
        cursor = self._db.execute(
            "INSERT INTO answers (image, label, value, source, annotator, time, undoes)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (image, label, stored, source, annotator, now, undoes),
        )
        return Answer(
            cursor.lastrowid,
            image,
            label,
            None if value is None else bool(value),
            source,
            annotator,
            now,
            undoes,
        )


def _row(row: tuple) -> Answer:
    id_, image, label, value, source, annotator, when, undoes = row
    return Answer(id_, image, label, None if value is None else bool(value), source, annotator, when, undoes)
