"""XMP keywords: read from darktable- and Lightroom-style sidecars and from images, written byte-exactly."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest
from PIL import Image, ImageFile, PngImagePlugin

from ctran.errors import CTranError
from ctran.tagging.xmp import (
    default_sidecar,
    embedded_keywords,
    read_keywords,
    sidecar_paths,
    with_keywords,
)

# What darktable (exiv2) writes: one rdf:Description with many attributes, the edit history as rdf:li
# attributes, and its own darktable|... tags in lr:hierarchicalSubject.
DARKTABLE = b"""<?xml version="1.0" encoding="UTF-8"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="XMP Core 4.4.0-Exiv2">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:exif="http://ns.adobe.com/exif/1.0/"
    xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:xmpMM="http://ns.adobe.com/xap/1.0/mm/"
    xmlns:dc="http://purl.org/dc/elements/1.1/"
    xmlns:lr="http://ns.adobe.com/lightroom/1.0/"
    xmlns:darktable="http://darktable.sf.net/"
   exif:DateTimeOriginal="2023:05:01 10:20:30.000"
   xmp:Rating="3"
   xmpMM:DerivedFrom="IMG_4242.CR2"
   darktable:import_timestamp="63819381600000000"
   darktable:xmp_version="5"
   darktable:raw_params="0"
   darktable:auto_presets_applied="1"
   darktable:history_end="2"
   darktable:iop_order_version="4">
   <darktable:masks_history>
    <rdf:Seq/>
   </darktable:masks_history>
   <darktable:history>
    <rdf:Seq>
     <rdf:li
      darktable:num="0"
      darktable:operation="rawprepare"
      darktable:enabled="1"
      darktable:modversion="2"
      darktable:params="c0010000c0010000000000000000000000040000ff3f0000"
      darktable:multi_name=""
      darktable:blendop_params="gz08eJxjYGBgYAFiCQYYOOHEgAFYsYhBAAF5SAAA"/>
     <rdf:li
      darktable:num="1"
      darktable:operation="exposure"
      darktable:enabled="1"
      darktable:modversion="6"
      darktable:params="0000000000000000cdcccc3e"
      darktable:multi_name=""
      darktable:blendop_params="gz08eJxjYGBgYAFiCQYYOOHEgAFYsYhBAAF5SAAA"/>
    </rdf:Seq>
   </darktable:history>
   <dc:subject>
    <rdf:Bag>
     <rdf:li>dog</rdf:li>
     <rdf:li>beach</rdf:li>
    </rdf:Bag>
   </dc:subject>
   <lr:hierarchicalSubject>
    <rdf:Bag>
     <rdf:li>darktable|format|cr2</rdf:li>
     <rdf:li>darktable|changed</rdf:li>
     <rdf:li>places|coast|beach</rdf:li>
     <rdf:li>animals|mammal</rdf:li>
    </rdf:Bag>
   </lr:hierarchicalSubject>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
"""

# What Lightroom writes: an xpacket wrapper with padding, camera raw settings, and other rdf:li arrays
# (a tone curve) that are not keywords.
LIGHTROOM = (
    '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
    '<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="Adobe XMP Core 7.0-c000 1.000000">\n'
    ' <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
    '  <rdf:Description rdf:about=""\n'
    '    xmlns:xmp="http://ns.adobe.com/xap/1.0/"\n'
    '    xmlns:photoshop="http://ns.adobe.com/photoshop/1.0/"\n'
    '    xmlns:crs="http://ns.adobe.com/camera-raw-settings/1.0/"\n'
    '    xmlns:dc="http://purl.org/dc/elements/1.1/"\n'
    '    xmlns:lr="http://ns.adobe.com/lightroom/1.0/"\n'
    '   xmp:CreatorTool="Adobe Photoshop Lightroom Classic 12.0 (Windows)"\n'
    '   xmp:Rating="4"\n'
    '   photoshop:DateCreated="2022-07-14T16:02:11.45"\n'
    '   crs:ProcessVersion="11.0"\n'
    '   crs:Exposure2012="+0.35">\n'
    "   <dc:subject>\n"
    "    <rdf:Bag>\n"
    "     <rdf:li>Dog</rdf:li>\n"
    "     <rdf:li>Animals</rdf:li>\n"
    "    </rdf:Bag>\n"
    "   </dc:subject>\n"
    "   <lr:hierarchicalSubject>\n"
    "    <rdf:Bag>\n"
    "     <rdf:li>Animals|Dog</rdf:li>\n"
    "     <rdf:li>Places|Park</rdf:li>\n"
    "    </rdf:Bag>\n"
    "   </lr:hierarchicalSubject>\n"
    "   <crs:ToneCurvePV2012>\n"
    "    <rdf:Seq>\n"
    "     <rdf:li>0, 0</rdf:li>\n"
    "     <rdf:li>255, 255</rdf:li>\n"
    "    </rdf:Seq>\n"
    "   </crs:ToneCurvePV2012>\n"
    "  </rdf:Description>\n"
    " </rdf:RDF>\n"
    "</x:xmpmeta>\n" + (" " * 99 + "\n") * 20 + '<?xpacket end="w"?>'
).encode()

SIDECARS = {
    "darktable": (DARKTABLE, ["dog", "beach", "mammal"]),
    "lightroom": (LIGHTROOM, ["Dog", "Animals", "Park"]),
}


def _end_of_subject_items(data: bytes) -> int:
    """Offset just after the last rdf:li of dc:subject, where added items go."""
    return data.rindex(b"</rdf:li>", 0, data.index(b"</dc:subject>")) + len(b"</rdf:li>")


@pytest.mark.parametrize("tool", SIDECARS)
def test_reads_dc_subject_then_hierarchical_leaves(tool: str) -> None:
    data, keywords = SIDECARS[tool]
    assert read_keywords(data, "x.xmp") == keywords


@pytest.mark.parametrize("tool", SIDECARS)
def test_add_inserts_items_and_keeps_every_other_byte(tool: str) -> None:
    data, keywords = SIDECARS[tool]
    out = with_keywords(data, ["cat", "sea & sky"])
    at = _end_of_subject_items(data)
    inserted = b"\n     <rdf:li>cat</rdf:li>\n     <rdf:li>sea &amp; sky</rdf:li>"
    assert out[:at] == data[:at]
    assert out[at + len(inserted) :] == data[at:]
    assert out == data[:at] + inserted + data[at:]
    assert read_keywords(out, "x.xmp") == keywords[:2] + ["cat", "sea & sky"] + keywords[2:]


@pytest.mark.parametrize("tool", SIDECARS)
def test_replace_sets_exactly_the_subject_items(tool: str) -> None:
    data, _ = SIDECARS[tool]
    out = with_keywords(data, ["cat"], replace=True)
    bag = data.index(b"<rdf:Bag>", data.index(b"<dc:subject>")) + len(b"<rdf:Bag>")
    close = data.index(b"\n    </rdf:Bag>", bag)
    assert out == data[:bag] + b"\n     <rdf:li>cat</rdf:li>" + data[close:]
    hierarchical = data[data.index(b"<lr:hierarchicalSubject>") :]
    assert out.endswith(hierarchical)  # lr:hierarchicalSubject and the rest untouched
    assert read_keywords(out, "x.xmp")[0] == "cat"
    assert b"<rdf:li>dog</rdf:li>" not in out and b"<rdf:li>Dog</rdf:li>" not in out


def test_adding_nothing_returns_the_same_bytes() -> None:
    assert with_keywords(DARKTABLE, []) == DARKTABLE
    assert with_keywords(LIGHTROOM, ()) == LIGHTROOM
    bare = b'<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description/></rdf:RDF>'
    assert with_keywords(bare, []) == bare  # no empty dc:subject added


def test_missing_subject_is_inserted_declaring_dc_when_needed() -> None:
    data = (
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/">\n'
        b' <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
        b'  <rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmp:Rating="2">\n'
        b"   <xmp:Label>Red</xmp:Label>\n"
        b"  </rdf:Description>\n"
        b" </rdf:RDF>\n"
        b"</x:xmpmeta>\n"
    )
    out = with_keywords(data, ["cat"])
    at = data.index(b'"2">') + len(b'"2">')
    inserted = (
        b'\n   <dc:subject xmlns:dc="http://purl.org/dc/elements/1.1/">\n    <rdf:Bag>\n'
        b"     <rdf:li>cat</rdf:li>\n    </rdf:Bag>\n   </dc:subject>"
    )
    assert out == data[:at] + inserted + data[at:]
    assert read_keywords(out, "x.xmp") == ["cat"]
    # dc already in scope (under its own prefix): no new declaration, the document's prefixes used
    scoped = data.replace(b"xmlns:xmp=", b'xmlns:purl="http://purl.org/dc/elements/1.1/" xmlns:xmp=')
    scoped = scoped.replace(b"rdf:", b"RDF:").replace(b"xmlns:rdf", b"xmlns:RDF")
    out = with_keywords(scoped, ["cat"])
    assert b"<purl:subject>\n    <RDF:Bag>\n     <RDF:li>cat</RDF:li>" in out
    assert b"xmlns:dc" not in out
    assert read_keywords(out, "x.xmp") == ["cat"]


def test_self_closing_description_and_bag_are_opened() -> None:
    head = (
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/">\n <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
        b'  <rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmp:Rating="1"'
    )
    tail = b"\n </rdf:RDF>\n</x:xmpmeta>\n"
    out = with_keywords(head + b"/>" + tail, ["cat", "dog"])
    assert out.startswith(head + b">\n   <dc:subject")
    assert out.endswith(b"   </dc:subject>\n  </rdf:Description>" + tail)
    assert read_keywords(out, "x.xmp") == ["cat", "dog"]

    bag = head + b' xmlns:dc="http://purl.org/dc/elements/1.1/">\n   <dc:subject>\n    <rdf:Bag/>'
    rest = b"\n   </dc:subject>\n  </rdf:Description>" + tail
    out = with_keywords(bag + rest, ["cat"])
    assert out == bag[:-2] + b">\n     <rdf:li>cat</rdf:li>\n    </rdf:Bag>" + rest
    assert read_keywords(out, "x.xmp") == ["cat"]


def test_subject_as_seq_is_used_like_a_bag() -> None:
    data = LIGHTROOM.replace(b"<rdf:Bag>\n     <rdf:li>Dog", b"<rdf:Seq>\n     <rdf:li>Dog", 1)
    data = data.replace(b"</rdf:Bag>\n   </dc:subject>", b"</rdf:Seq>\n   </dc:subject>")
    out = with_keywords(data, ["cat"])
    at = _end_of_subject_items(data)
    assert out == data[:at] + b"\n     <rdf:li>cat</rdf:li>" + data[at:]


def test_fresh_sidecar_is_valid_xmp_with_a_subject_bag() -> None:
    out = with_keywords(None, ["cat", "dog"])
    assert out.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n<x:xmpmeta') and out.endswith(b"\n")
    assert b"<dc:subject>\n    <rdf:Bag>\n     <rdf:li>cat</rdf:li>" in out
    assert read_keywords(out, "new.xmp") == ["cat", "dog"]
    empty = with_keywords(None, [])
    assert b"<dc:subject>\n    <rdf:Bag>\n    </rdf:Bag>" in empty
    assert read_keywords(empty, "new.xmp") == []


def test_unicode_and_markup_round_trip() -> None:
    keywords = ['Tom & "Jerry"', "<b>", "it's", "café", "猫 🐱"]
    out = with_keywords(DARKTABLE, keywords)
    assert "café".encode() in out and "猫 🐱".encode() in out  # kept as UTF-8, not character references
    assert b"&amp;" in out and b"&lt;b&gt;" in out and b"&quot;" in out
    assert read_keywords(out, "x.xmp")[2:7] == keywords
    assert read_keywords(with_keywords(None, keywords), "x.xmp") == keywords


def test_byte_order_marks_and_utf16_are_written_in_kind() -> None:
    bom = b"\xef\xbb\xbf" + DARKTABLE.replace(b' encoding="UTF-8"', b"")
    assert read_keywords(bom, "x.xmp") == ["dog", "beach", "mammal"]
    out = with_keywords(bom, ["café"])
    at = _end_of_subject_items(bom)
    assert out == bom[:at] + "\n     <rdf:li>café</rdf:li>".encode() + bom[at:]
    utf16 = DARKTABLE.decode().split("\n", 1)[1].encode("utf-16")  # no declaration: the BOM tells
    assert utf16[:2] == b"\xff\xfe"
    out = with_keywords(utf16, ["猫"])
    at = _end_of_subject_items(DARKTABLE.split(b"\n", 1)[1]) * 2 + 2
    assert out == utf16[:at] + "\n     <rdf:li>猫</rdf:li>".encode("utf-16-le") + utf16[at:]
    assert read_keywords(out, "x.xmp") == ["dog", "beach", "猫", "mammal"]


def test_windows_line_ends_are_kept() -> None:
    data = LIGHTROOM.replace(b"\n", b"\r\n")
    out = with_keywords(data, ["cat"])
    at = _end_of_subject_items(data)
    assert out == data[:at] + b"\r\n     <rdf:li>cat</rdf:li>" + data[at:]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not xml at all",
        DARKTABLE[:-40],  # cut short
        DARKTABLE.replace(b"</dc:subject>", b"</dc:subjects>"),
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;">]><x>&b;</x>',
        b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>',
    ],
)
def test_malformed_or_entity_declaring_input_is_refused(data: bytes) -> None:
    with pytest.raises(CTranError, match=r"^photos/a\.jpg\.xmp: cannot parse XMP \("):
        read_keywords(data, "photos/a.jpg.xmp")
    with pytest.raises(CTranError, match=r"^photos/a\.jpg\.xmp: cannot parse XMP"):
        with_keywords(data, ["cat"], where="photos/a.jpg.xmp")


def test_unwritable_sidecars_and_keywords_are_refused() -> None:
    no_description = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"/>'
    with pytest.raises(CTranError, match="no rdf:Description"):
        with_keywords(no_description, ["cat"])
    text_subject = DARKTABLE.replace(b"<dc:subject>\n    <rdf:Bag>", b"<dc:subject>x<rdf:Description>")
    text_subject = text_subject.replace(b"</rdf:Bag>\n   </dc:subject>", b"</rdf:Description></dc:subject>")
    with pytest.raises(CTranError, match="dc:subject is not an rdf:Bag"):
        with_keywords(text_subject, ["cat"])
    with pytest.raises(CTranError, match="XML cannot hold"):
        with_keywords(DARKTABLE, ["bell\x07"])


def test_sidecar_names(tmp_path: Path) -> None:
    image = tmp_path / "photo.jpg"
    assert default_sidecar(image) == tmp_path / "photo.jpg.xmp"
    assert sidecar_paths(image) == []
    (tmp_path / "photo.xmp").write_bytes(LIGHTROOM)
    assert sidecar_paths(image) == [tmp_path / "photo.xmp"]
    (tmp_path / "photo.jpg.xmp").write_bytes(DARKTABLE)
    assert sidecar_paths(image) == [tmp_path / "photo.jpg.xmp", tmp_path / "photo.xmp"]
    assert sidecar_paths(tmp_path / "photo") == [tmp_path / "photo.xmp"]  # no extension: one name, once


def _jpeg(**options: object) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (30, 120, 200)).save(buffer, "JPEG", **options)
    return buffer.getvalue()


def _with_iptc(jpeg: bytes, records: list[tuple[int, int, bytes]]) -> bytes:
    """Splice an APP13 "Photoshop 3.0" segment holding IPTC records (8BIM resource 0x0404) after SOI."""
    iptc = b"".join(b"\x1c" + bytes(tag[:2]) + struct.pack(">H", len(tag[2])) + tag[2] for tag in records)
    iptc += b"\x00" * (len(iptc) % 2)
    resource = b"8BIM" + struct.pack(">H", 0x0404) + b"\x00\x00" + struct.pack(">I", len(iptc)) + iptc
    payload = b"Photoshop 3.0\x00" + resource
    return jpeg[:2] + b"\xff\xed" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".tif", ".webp"])
def test_embedded_xmp_keywords(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"a{suffix}"
    png = PngImagePlugin.PngInfo()
    png.add_itxt("XML:com.adobe.xmp", LIGHTROOM.decode())
    options = {".png": {"pnginfo": png}, ".tif": {"tiffinfo": {700: LIGHTROOM}}}.get(
        suffix, {"xmp": LIGHTROOM}
    )
    Image.new("RGB", (16, 16)).save(path, **options)
    assert embedded_keywords(path) == ["Dog", "Animals", "Park"]


def test_embedded_iptc_keywords_follow_xmp_ones(tmp_path: Path) -> None:
    path = tmp_path / "a.jpg"
    path.write_bytes(_jpeg(xmp=DARKTABLE + b"\x00" * 32))  # some writers pad the packet with NULs
    assert embedded_keywords(path) == ["dog", "beach", "mammal"]
    utf8 = [
        (1, 90, b"\x1b%G"),
        (2, 25, b"Hund"),
        (2, 25, "Straße".encode()),
        (2, 25, b"Dog"),
        (2, 25, b"Caf\xe9"),
    ]
    path.write_bytes(_with_iptc(_jpeg(xmp=LIGHTROOM), utf8))
    assert embedded_keywords(path) == ["Dog", "Animals", "Park", "Hund", "Straße", "Caf\ufffd"]
    path.write_bytes(_with_iptc(_jpeg(), [(2, 25, b"Caf\xe9"), (2, 25, "Straße".encode()), (2, 25, b" ")]))
    assert embedded_keywords(path) == ["Café", "Straße"]  # no character set named: UTF-8, else latin-1
    path.write_bytes(_jpeg())
    assert embedded_keywords(path) == []


def test_embedded_keywords_never_decode_pixels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    jpeg = _with_iptc(_jpeg(xmp=DARKTABLE), [(2, 25, b"tree")])
    path = tmp_path / "truncated.jpg"
    path.write_bytes(jpeg[: jpeg.index(b"\xff\xda") + 20])  # the scan data cut short
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("pixels decoded"))
    assert embedded_keywords(path) == ["dog", "beach", "mammal", "tree"]


def test_unreadable_image_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"not an image")
    with pytest.raises(CTranError, match=r"broken\.jpg: cannot read"):
        embedded_keywords(path)
    path.write_bytes(_jpeg(xmp=b"<x:xmpmeta"))
    with pytest.raises(CTranError, match=r"broken\.jpg: cannot parse XMP"):
        embedded_keywords(path)
