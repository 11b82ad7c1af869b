"""The files an image's tags live in, read once each: its caption, its XMP sidecars, its embedded keywords.

``--read`` says which of them tell the model something; ``--write`` which get the new tags. A file that is
written but not read (``--read none --write txt``) is still read, so a tag already in it is never added
twice; an XMP sidecar is created only when the image has none (``IMAGE.EXT.xmp``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ctran.files import read_if_exists
from ctran.tagging.captions import Caption, caption_path, parse_caption, with_tags
from ctran.tagging.xmp import default_sidecar, embedded_keywords, read_keywords, sidecar_paths, with_keywords

MISSING = object()  # no original given for a file: read it from disk


@dataclass
class TagFile:
    """One file of an image's tags, as read."""

    kind: str  # "txt", "xmp" (a sidecar) or "embedded" (the image's own XMP/IPTC keywords)
    path: Path
    raw: bytes | None  # None: it does not exist yet
    present: list[str]
    absent: list[str]
    told: bool  # its tags are known labels for the model (--read)
    written: bool  # it gets the new tags (--write)
    caption: Caption | None = None  # txt files: how to splice into it

    def updated(self, tags: Sequence[str], separator: str, replace: bool) -> bytes:
        """The file's bytes with ``tags`` appended (or, with ``replace``, as its whole tag list)."""
        if self.caption is not None:
            return with_tags(self.caption, tags, separator, replace)
        return with_keywords(self.raw, tags, replace, where=str(self.path))


def tag_files(
    image: Path,
    reads: Sequence[str],
    writes: Sequence[str],
    separator: str = ",",
    originals: Mapping[str, bytes | None] = {},
) -> list[TagFile]:
    """Every tag file of ``image`` that ``reads`` or ``writes`` involve; ``CTranError`` naming a file that
    cannot be parsed. ``originals`` replaces the bytes on disk of the files a killed run had written."""

    def raw(path: Path) -> bytes | None:
        given = originals.get(str(path), MISSING)
        return read_if_exists(path) if given is MISSING else given

    files = []
    if "txt" in reads or "txt" in writes:
        path = caption_path(image)
        caption = parse_caption(path, raw(path), separator)
        told, written = "txt" in reads, "txt" in writes
        files.append(
            TagFile("txt", path, caption.raw, caption.present, caption.absent, told, written, caption)
        )
    if "xmp" in reads or "xmp" in writes:
        paths = sidecar_paths(image) or [default_sidecar(image)]
        for path in paths:
            data = raw(path)
            keywords = [] if data is None else read_keywords(data, str(path))
            files.append(TagFile("xmp", path, data, keywords, [], "xmp" in reads, "xmp" in writes))
    if "xmp" in reads:
        files.append(TagFile("embedded", image, None, embedded_keywords(image), [], True, False))
    return files
