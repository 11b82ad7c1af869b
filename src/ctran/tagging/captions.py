"""``IMAGE.txt`` caption sidecars, the booru/kohya convention: ``tag, tag, -absent tag``.

A caption is the user's own file, so it is edited, never re-written: new tags are spliced in after the last
tag, and every byte before and after stays as it was (byte order mark, encoding, spacing, line ending,
trailing newline). A file that is not text in a known encoding is reported and left alone.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ctran.errors import CTranError

CAPTION_SUFFIX = ".txt"
BOMS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))
NEGATION = "-"


@dataclass
class Caption:
    """One caption file as read: its bytes, how it is encoded, and its tags in order."""

    path: Path
    raw: bytes | None  # None: the image has no caption yet
    bom: bytes = b""
    encoding: str = "utf-8"
    tags: tuple[str, ...] = ()  # as written, trimmed, ``-tag`` included

    @property
    def present(self) -> list[str]:
        return [tag for tag in self.tags if not tag.startswith(NEGATION)]

    @property
    def absent(self) -> list[str]:
        """``-tag`` entries, without the dash: tags the user says the image does not have."""
        return [tag[1:].strip() for tag in self.tags if tag.startswith(NEGATION) and tag[1:].strip()]


def caption_path(image: Path) -> Path:
    """``photo.jpg`` -> ``photo.txt`` (the same stem, as the captioning tools write them)."""
    return image.with_suffix(CAPTION_SUFFIX)


def read_caption(path: Path, separator: str = ",") -> Caption:
    """The caption at ``path`` (an empty one when there is none); ``CTranError`` naming it if unreadable."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return Caption(path, None)
    except OSError as err:
        raise CTranError(f"{path}: cannot read the caption ({err}); left untouched") from err
    return parse_caption(path, raw, separator)


def parse_caption(path: Path, raw: bytes | None, separator: str = ",") -> Caption:
    """The caption held in ``raw`` (None: no file), named ``path`` in errors."""
    if raw is None:
        return Caption(path, None)
    bom, encoding = _encoding(raw)
    try:
        text = raw[len(bom) :].decode(encoding)
    except UnicodeDecodeError as err:
        raise CTranError(f"{path}: not UTF-8 or UTF-16 text ({err.reason}); left untouched") from err
    if "\x00" in text:
        raise CTranError(f"{path}: holds NUL characters, not a caption; left untouched")
    tags = tuple(t for t in (part.strip() for part in _split(text, separator)) if t)
    return Caption(path, raw, bom, encoding, tags)


def with_tags(caption: Caption, tags: Sequence[str], separator: str = ",", replace: bool = False) -> bytes:
    """The caption's new bytes: ``tags`` appended after the existing ones (which keep every byte), or with
    ``replace`` the tag list rewritten as ``tags`` (the file's encoding, order mark and ending kept)."""
    if caption.raw is None:
        return _joiner(separator, "").join(tags).encode("utf-8")
    text = caption.raw[len(caption.bom) :].decode(caption.encoding)
    body = text.rstrip()
    joiner = _joiner(separator, body)
    if replace:
        return caption.bom + (joiner.join(tags) + text[len(body) :]).encode(caption.encoding)
    if not tags:
        return caption.raw
    if not body:
        lead = ""
    elif body.endswith(separator.strip() or separator):
        lead = joiner[len(separator.strip()) :] if separator.strip() else ""
    else:
        lead = joiner
    cut = len(caption.bom) + len(body.encode(caption.encoding))
    addition = (lead + joiner.join(tags)).encode(caption.encoding)
    return caption.raw[:cut] + addition + caption.raw[cut:]


def _encoding(raw: bytes) -> tuple[bytes, str]:
    """(byte order mark, codec): UTF-8 and UTF-16 are told apart by their mark; no mark means UTF-8."""
    for bom, encoding in BOMS:
        if raw.startswith(bom):
            return bom, encoding
    return b"", "utf-8"


def _split(text: str, separator: str) -> list[str]:
    """Tags split on ``separator``; line breaks separate too, so a caption written one tag per line reads
    the same."""
    return [part for line in text.splitlines() for part in line.split(separator)]


def _joiner(separator: str, body: str) -> str:
    """What goes between two tags: the separator, with a space after it when the file already writes one
    (``a, b``) or has none yet; a line break is written as the file writes it (``\\n`` or ``\\r\\n``)."""
    if separator in ("\n", "\r\n"):
        return "\r\n" if "\r\n" in body else "\n"
    if separator.isspace():
        return separator
    if separator in body and f"{separator} " not in body:
        return separator
    return f"{separator} "
