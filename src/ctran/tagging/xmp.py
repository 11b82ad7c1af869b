"""XMP keywords: read them from sidecars and image files, write them into sidecars.

Photo managers keep tags in XMP: ``dc:subject`` holds flat keywords, ``lr:hierarchicalSubject`` paths such
as ``Animals|Dog``. A sidecar also carries the tool's own data (darktable's edit history, Lightroom's develop
settings), so writing never re-serialises it: ``rdf:li`` items are spliced in at byte offsets that expat
reports, and every other byte stays as it was.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from xml.parsers import expat
from xml.sax.saxutils import escape

from PIL import Image, IptcImagePlugin

from ctran.errors import CTranError

XMP_SUFFIX = ".xmp"
RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
DC = "http://purl.org/dc/elements/1.1/"
LR = "http://ns.adobe.com/lightroom/1.0/"
_ARRAYS = ("Bag", "Seq")  # dc:subject is a Bag; some tools write a Seq
_BOMS = {b"\xff\xfe": "utf-16-le", b"\xfe\xff": "utf-16-be"}  # inserted text must match the packet's encoding
_FRESH = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<x:xmpmeta xmlns:x="adobe:ns:meta/">\n'
    f' <rdf:RDF xmlns:rdf="{RDF}">\n  <rdf:Description rdf:about="" xmlns:dc="{DC}"/>\n'
    " </rdf:RDF>\n</x:xmpmeta>\n"
).encode()
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_IPTC_KEYWORDS, _IPTC_CHARSET, _IPTC_UTF8 = (2, 25), (1, 90), b"\x1b%G"


def sidecar_paths(image: Path) -> list[Path]:
    """Existing XMP sidecars of an image: IMAGE.EXT.xmp (darktable, digiKam) then IMAGE.xmp (Lightroom, ...).

    Only those that exist; both count because a library may have been through tools of both kinds.
    """
    candidates = dict.fromkeys([default_sidecar(image), image.with_suffix(XMP_SUFFIX)])
    return [path for path in candidates if path.is_file()]


def default_sidecar(image: Path) -> Path:
    """IMAGE.EXT.xmp: the name to create, as it is unambiguous (photo.jpg and photo.png never share it)."""
    return image.with_name(image.name + XMP_SUFFIX)


def read_keywords(data: bytes, where: str) -> list[str]:
    """Keywords of an XMP packet: dc:subject items, then the leaves of lr:hierarchicalSubject paths.

    Document order, trimmed, first occurrence only. darktable's own ``darktable|format|nef``-style tags are
    bookkeeping, not keywords, and are left out. Malformed input raises CTranError naming ``where``.
    """
    scan = _Scan(data, where)
    leaves = [path.split("|")[-1] for path in scan.hierarchical if not _is_darktable(path)]
    return _unique([keyword for keyword in scan.subject if not _is_darktable(keyword)] + leaves)


def embedded_keywords(path: Path) -> list[str]:
    """Keywords stored in the image file itself: its XMP packet, then its IPTC Keywords (2:25).

    The image is opened lazily: only the header and metadata segments are read, never the pixels.
    """
    try:
        with Image.open(path) as image:
            xmp = image.info.get("xmp")
            iptc = IptcImagePlugin.getiptcinfo(image) or {}
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise CTranError(f"{path}: cannot read the image's metadata ({error})") from None
    from_xmp = read_keywords(xmp.rstrip(b"\x00"), str(path)) if xmp else []  # JPEG packets may be NUL-padded
    values = iptc.get(_IPTC_KEYWORDS) or []
    utf8 = iptc.get(_IPTC_CHARSET) == _IPTC_UTF8
    values = values if isinstance(values, list) else [values]
    return _unique(from_xmp + [_iptc_text(value, utf8) for value in values if value])


def with_keywords(
    data: bytes | None, keywords: Sequence[str], replace: bool = False, *, where: str = "XMP"
) -> bytes:
    """The sidecar bytes after writing ``keywords`` into dc:subject; ``data`` None starts a fresh sidecar.

    Adding appends new ``rdf:li`` items to the dc:subject Bag (creating it in the first rdf:Description when
    missing); ``replace`` makes them its only items. Every byte outside the edited span is kept, so the
    tool that wrote the sidecar finds its own data, formatting and padding as it left them.
    """
    if data is None:
        return with_keywords(_FRESH, keywords, replace=True)
    if not keywords and not replace:
        return data
    scan = _Scan(data, where)
    items = [_escape(keyword) for keyword in keywords]
    if scan.array is not None:
        element = scan.array
        step = f"\n{_line(element.indent)} " if element.last_indent is None else element.last_indent
        li = _q(_prefix_of(element.qname), "li")
        inner = "".join(f"{step}<{li}>{item}</{li}>" for item in items)
    elif scan.has_subject:
        raise CTranError(f"{where}: dc:subject is not an rdf:Bag, so keywords cannot be added to it")
    elif scan.description is not None:
        element = scan.description
        inner = _subject(items, _prefix_of(element.qname), scan.dc_prefix, f"{_line(element.indent)} ")
    else:
        raise CTranError(f"{where}: the XMP has no rdf:Description to hold keywords")
    slash = "/>".encode(scan.codec)
    if data.endswith(slash, 0, element.open_end):  # <rdf:Bag/> or <rdf:Description .../>: open it
        start, end = element.open_end - len(slash), element.open_end
        text = f">{inner}\n{_line(element.indent)}</{element.qname}>"
    elif element is scan.array and replace:
        start, end, text = element.open_end, element.close, inner + element.tail
    else:
        start = end = element.last_end if element is scan.array else element.open_end
        text = inner
    if "\r\n".encode(scan.codec) in data:  # expat reports line ends as "\n"; keep the file's own
        text = text.replace("\n", "\r\n")
    return data[:start] + text.encode(scan.codec, "xmlcharrefreplace") + data[end:]


@dataclass
class _Element:
    """Where an element sits in the packet, as byte offsets, and the whitespace that indents it."""

    qname: str  # as written, e.g. "rdf:Bag"
    start: int  # at its "<"
    depth: int
    indent: str  # whitespace before its start tag
    open_end: int = -1  # just after its start tag
    close: int = -1  # at its end tag
    last_indent: str | None = None  # whitespace before its last child element, None without children
    last_end: int = -1  # where the whitespace before its end tag begins (just after its last child)
    tail: str = ""  # whitespace before its end tag


class _Scan:
    """One expat pass over an XMP packet: its keywords, and the places ``with_keywords`` edits."""

    def __init__(self, data: bytes, where: str) -> None:
        self.subject: list[str] = []  # dc:subject items
        self.hierarchical: list[str] = []  # lr:hierarchicalSubject items
        self.description: _Element | None = None  # the first rdf:Description
        self.array: _Element | None = None  # the Bag (or Seq) of the first dc:subject
        self.has_subject = False
        self.dc_prefix: str | None = None  # bound to dc at the description ("" as default namespace)
        self.codec = _BOMS.get(data[:2])
        self._stack: list[tuple[str, str]] = []  # (namespace, local name) of the open elements
        self._scopes: list[list[tuple[str, str]]] = []  # (prefix, namespace) declared by each open element
        self._declared: list[tuple[str, str]] = []  # declared by the element about to start
        self._text, self._text_at = "", -1  # character data since the last tag, and where it began
        self._item: list[str] | None = None  # text of the rdf:li being read
        self._opening: _Element | None = None  # waiting for the end of its start tag
        parser = self._parser = expat.ParserCreate(namespace_separator=" ")
        parser.namespace_prefixes = True
        parser.StartDoctypeDeclHandler = _refuse_dtd
        parser.XmlDeclHandler = self._xml_declaration
        parser.StartNamespaceDeclHandler = lambda prefix, uri: self._declared.append((prefix or "", uri))
        parser.StartElementHandler = self._start
        parser.EndElementHandler = self._end
        parser.CharacterDataHandler = self._characters
        parser.DefaultHandlerExpand = lambda _: self._at()
        try:
            parser.Parse(data, True)
        except (expat.ExpatError, ValueError) as error:
            raise CTranError(f"{where}: cannot parse XMP ({error})") from None
        self.codec = self.codec or "utf-8"

    def _at(self) -> int:
        """Offset of the current token, which is also where the start tag waiting for its end ends."""
        here = self._parser.CurrentByteIndex
        if self._opening is not None and here != self._opening.start:
            self._opening.open_end, self._opening = here, None
        return here

    def _xml_declaration(self, _version: str, encoding: str | None, _standalone: int) -> None:
        self._at()
        self.codec = self.codec or encoding  # a byte order mark wins over the declaration

    def _bound_prefix(self, uri: str) -> str | None:
        """The prefix bound to ``uri`` here ("" for the default namespace), None when it is unbound."""
        shadowed: set[str] = set()
        for prefix, bound in reversed([binding for scope in self._scopes for binding in scope]):
            if bound == uri and prefix not in shadowed:
                return prefix
            shadowed.add(prefix)
        return None

    def _start(self, name: str, _attributes: dict[str, str]) -> None:
        here = self._at()
        uri, local, qname = _split(name)
        parent = self._stack[-1] if self._stack else None
        self._stack.append((uri, local))
        self._scopes.append(self._declared)
        self._declared = []
        element = _Element(qname, here, len(self._stack), _whitespace(self._text))
        self._text = ""
        array = self.array
        if (uri, local) == (RDF, "Description") and self.description is None:
            self.description = self._opening = element
            self.dc_prefix = self._bound_prefix(DC)
        elif parent == (DC, "subject") and uri == RDF and local in _ARRAYS and array is None:
            self.array = self._opening = element
        elif array is not None and array.close < 0 and element.depth == array.depth + 1:
            array.last_indent = element.indent
        self.has_subject = self.has_subject or (uri, local) == (DC, "subject")
        if (uri, local) == (RDF, "li"):
            self._item = []

    def _end(self, _name: str) -> None:
        here = self._at()
        text_at = self._text_at if self._text else here
        tail, self._text = _whitespace(self._text), ""
        array = self.array
        if array is not None and array.close < 0 and array.depth == len(self._stack):
            array.close, array.last_end, array.tail = here, text_at, tail
        if self._stack.pop() == (RDF, "li") and self._item is not None:
            owner = self._stack[-2] if len(self._stack) >= 2 else None  # the property holding the array
            items = {(DC, "subject"): self.subject, (LR, "hierarchicalSubject"): self.hierarchical}
            items.get(owner, []).append("".join(self._item))
            self._item = None
        self._scopes.pop()

    def _characters(self, data: str) -> None:
        here = self._at()
        if not self._text:
            self._text_at = here
        self._text += data
        if self._item is not None:
            self._item.append(data)


def _refuse_dtd(*_: object) -> None:
    """Refuse any DTD: entity declarations are how XML bombs and external entities get in."""
    raise ValueError("DTD and entity declarations are refused")


def _split(name: str) -> tuple[str, str, str]:
    """Namespace, local name and name as written, from expat's "namespace local prefix" triplet."""
    parts = name.split(" ")
    if len(parts) == 1:
        return "", name, name
    return parts[0], parts[1], f"{parts[2]}:{parts[1]}" if len(parts) == 3 else parts[1]


def _subject(items: list[str], rdf: str, dc: str | None, pad: str) -> str:
    """A dc:subject Bag to insert at indentation ``pad``; it declares dc itself when dc is not in scope."""
    name, declare = (_q("dc", "subject"), f' xmlns:dc="{DC}"') if dc is None else (_q(dc, "subject"), "")
    bag, li = _q(rdf, "Bag"), _q(rdf, "li")
    lines = [f"<{name}{declare}>", f" <{bag}>", *(f"  <{li}>{item}</{li}>" for item in items), f" </{bag}>"]
    return "".join(f"\n{pad}{line}" for line in [*lines, f"</{name}>"])


def _q(prefix: str, local: str) -> str:
    """A name as written in the document: with the document's own prefix, none for a default namespace."""
    return f"{prefix}:{local}" if prefix else local


def _prefix_of(qname: str) -> str:
    return qname.rpartition(":")[0]


def _line(whitespace: str) -> str:
    """The indentation of a line: the whitespace after the last newline."""
    return whitespace[whitespace.rfind("\n") + 1 :]


def _whitespace(text: str) -> str:
    return text if text.isspace() else ""


def _escape(keyword: str) -> str:
    """Keyword as XML text; characters XML 1.0 cannot hold at all are refused rather than written."""
    if _NOT_XML.search(keyword):
        raise CTranError(f"keyword {keyword!r} has characters that XML cannot hold")
    return escape(keyword, {'"': "&quot;", "'": "&apos;"})


def _is_darktable(keyword: str) -> bool:
    return keyword.split("|")[0].strip() == "darktable"


def _iptc_text(value: bytes, utf8: bool) -> str:
    """IPTC text: UTF-8 if it decodes; else bad bytes replaced when the record says UTF-8, or latin-1."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("utf-8", "replace") if utf8 else value.decode("latin-1")


def _unique(keywords: list[str]) -> list[str]:
    """Trimmed, non-empty, first occurrence kept."""
    return list(dict.fromkeys(kept for keyword in keywords if (kept := keyword.strip())))
