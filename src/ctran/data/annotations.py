"""Finding and reading publisher files, with errors that name the file, the line and the expected layout.

Every reader goes through these helpers so that a missing folder, a malformed row or an unknown label name
always produces one ``CTranError`` line a user can act on, never a traceback from deep inside a parser.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from ctran.errors import CTranError


def find_root(root: str | Path | None, marker: str, subfolders: Sequence[str], layout: str) -> Path:
    """The first of ``root``, ``root/subfolder`` ... that contains ``marker`` (a file or folder name).

    Users point ``--root`` at different levels of the same tree (``VOCdevkit`` or ``VOCdevkit/VOC2007``);
    accepting the common ones saves a round trip, and the error shows the layout that was expected.
    """
    if root is None:
        raise CTranError(f"this format needs a dataset root folder; expected layout: {layout}")
    root = Path(root).expanduser()
    if not root.exists():
        raise CTranError(f"dataset root {root} does not exist; expected layout: {layout}")
    for candidate in (root, *(root / sub for sub in subfolders)):
        if (candidate / marker).exists():
            return candidate
    raise CTranError(f"no {marker} found under {root}; expected layout: {layout}")


def require(path: Path, layout: str, hint: str = "") -> Path:
    """``path`` itself, or an error naming it and the expected layout."""
    if not path.exists():
        raise CTranError(f"missing {path}; expected layout: {layout}{hint}")
    return path


def read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, stripped line) for every non-blank line; decoding errors name the file."""
    try:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                text = line.strip()
                if text:
                    yield number, text
    except UnicodeDecodeError as err:
        raise CTranError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from err


def read_json(path: Path) -> object:
    """Parsed JSON, or an error naming the file and the line of the syntax error."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as err:
        raise CTranError(f"{path} line {err.lineno}: malformed JSON ({err.msg})") from err
    except UnicodeDecodeError as err:
        raise CTranError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    except (ValueError, RecursionError) as err:  # a number too long to convert, or nesting too deep
        raise CTranError(f"{path}: unreadable JSON ({err})") from err


def read_names(path: Path) -> list[str]:
    """Label names from a text file (one per line) or a JSON list of strings."""
    if path.suffix == ".json":
        names = read_json(path)
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise CTranError(f"{path}: expected a JSON list of label names")
        return [name.strip() for name in names]
    return [text for _, text in read_lines(path)]


def unknown_name(name: str, vocabulary: Iterable[str], where: str, what: str = "label") -> CTranError:
    """The error for a name outside the vocabulary, with the closest known names as suggestions."""
    close = difflib.get_close_matches(name, list(vocabulary), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else "; no similar name is known"
    return CTranError(f"{where}: unknown {what} {name!r}{hint}")


def check_unique(names: Sequence[str], where: str) -> None:
    """Label names index model tokens and known-label dicts, so they must be unique."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise CTranError(f"{where}: label {name!r} is listed twice")
        seen.add(name)
