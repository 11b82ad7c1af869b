"""Caption sidecars and tag matching: what users' files look like, and that their bytes survive."""

from __future__ import annotations

import codecs
from pathlib import Path

import pytest

from ctran.errors import CTranError
from ctran.tagging.captions import caption_path, parse_caption, read_caption, with_tags
from ctran.tagging.matching import TagMatcher, normalise, read_aliases


def _caption(tmp_path: Path, raw: bytes, separator: str = ","):
    path = tmp_path / "photo.txt"
    path.write_bytes(raw)
    return read_caption(path, separator)


def test_caption_path_shares_the_image_stem() -> None:
    assert caption_path(Path("lib/IMG_0001.jpeg")) == Path("lib/IMG_0001.txt")


@pytest.mark.parametrize(
    ("raw", "tags"),
    [
        (b"dog,  cat ,grass\n", ("dog", "cat", "grass")),
        (b"  dog ,, , cat", ("dog", "cat")),
        (codecs.BOM_UTF8 + b"dog, cat\r\n", ("dog", "cat")),
        ("chien, caf\u00e9, \U0001f436 face\n".encode(), ("chien", "caf\u00e9", "\U0001f436 face")),
        (codecs.BOM_UTF16_LE + "dog, -cat".encode("utf-16-le"), ("dog", "-cat")),
        (b"dog\ncat\n", ("dog", "cat")),
        (b"", ()),
    ],
)
def test_captions_read_with_odd_spacing_boms_crlf_and_unicode(tmp_path: Path, raw: bytes, tags) -> None:
    assert _caption(tmp_path, raw).tags == tags


def test_dash_marks_a_tag_known_absent(tmp_path: Path) -> None:
    caption = _caption(tmp_path, b"dog, -cat, - grass, -")
    assert caption.present == ["dog"]
    assert caption.absent == ["cat", "grass"]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"dog, cat\n", b"dog, cat, sky, tree\n"),
        (b"dog,cat", b"dog,cat,sky,tree"),
        (b"dog, cat, \r\n\r\n", b"dog, cat, sky, tree \r\n\r\n"),
        (codecs.BOM_UTF8 + b"dog\r\n", codecs.BOM_UTF8 + b"dog, sky, tree\r\n"),
        (b"   \n", b"sky, tree   \n"),
        ("caf\u00e9".encode(), "caf\u00e9, sky, tree".encode()),
    ],
)
def test_adding_splices_after_the_last_tag_and_keeps_every_other_byte(
    tmp_path: Path, raw: bytes, expected: bytes
) -> None:
    new = with_tags(_caption(tmp_path, raw), ["sky", "tree"])
    assert new == expected


def test_adding_to_utf16_keeps_its_order_mark_and_encoding(tmp_path: Path) -> None:
    raw = codecs.BOM_UTF16_BE + "dog, cat\r\n".encode("utf-16-be")
    new = with_tags(_caption(tmp_path, raw), ["\u00e9t\u00e9"])
    assert new == codecs.BOM_UTF16_BE + "dog, cat, \u00e9t\u00e9\r\n".encode("utf-16-be")


def test_one_tag_per_line_captions_get_one_tag_per_line(tmp_path: Path) -> None:
    caption = _caption(tmp_path, b"dog\r\ncat\r\n", separator="\n")
    assert with_tags(caption, ["sky"], separator="\n") == b"dog\r\ncat\r\nsky\r\n"


def test_nothing_to_add_returns_the_same_bytes_and_a_new_caption_is_plain_utf8(tmp_path: Path) -> None:
    raw = b"dog ,  cat"
    assert with_tags(_caption(tmp_path, raw), []) == raw
    assert with_tags(parse_caption(tmp_path / "new.txt", None), ["sky", "\u00e9t\u00e9"]) == (
        "sky, \u00e9t\u00e9".encode()
    )


def test_replace_rewrites_the_list_in_the_files_own_encoding_and_ending(tmp_path: Path) -> None:
    caption = _caption(tmp_path, codecs.BOM_UTF8 + b"dog ,cat,,\r\n")
    assert with_tags(caption, ["dog", "sky"], replace=True) == codecs.BOM_UTF8 + b"dog,sky\r\n"


@pytest.mark.parametrize("raw", [b"caf\xe9, dog", b"dog\x00cat"])
def test_a_caption_that_is_not_text_is_reported_by_name(tmp_path: Path, raw: bytes) -> None:
    with pytest.raises(CTranError, match="photo.txt"):
        _caption(tmp_path, raw)


def test_tags_match_labels_by_case_spaces_underscores_and_aliases() -> None:
    matcher = TagMatcher(["golden_retriever", "cat", "Sky"], ["indoor"], {"doggo": "golden retriever"})
    assert normalise("  Golden_ Retriever ") == "golden retriever"
    for tag in ("golden_retriever", "Golden Retriever", "GOLDEN  retriever", "doggo", "Doggo"):
        assert matcher.label(tag) == "golden_retriever"
    assert matcher.label("sky") == "Sky"
    assert matcher.label("dog") is None
    matched = matcher.match(["Doggo", "my trip", "indoor", "cat", "my trip"], ["CAT", "sky"])
    assert matched.known == {"golden_retriever": True, "Sky": False}
    assert matched.extra == {"indoor": True}
    assert matched.conflicts == ["cat"]  # said present and absent: left unknown
    assert matched.unmatched == ["my trip"]  # kept as written, counted once per image
    assert matched.matched == 5


def test_labels_that_differ_only_in_case_match_by_exact_name_only() -> None:
    matcher = TagMatcher(["Dog", "dog"])
    assert matcher.label("Dog") == "Dog" and matcher.label("dog") == "dog"
    assert matcher.label("DOG") is None


def test_a_misspelt_label_lists_close_matches() -> None:
    matcher = TagMatcher(["golden_retriever", "cat"])
    with pytest.raises(CTranError, match="closest: golden_retriever"):
        matcher.resolve("golden_retreiver", "--exclude label")
    with pytest.raises(CTranError, match="unknown alias label 'kat'"):
        TagMatcher(["cat"], aliases={"kitty": "kat"})


def test_alias_files_skip_comments_and_name_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "aliases.txt"
    path.write_text("# mine\n\ndoggo -> dog\n  kitty->cat  \n", encoding="utf-8")
    assert read_aliases(path) == {"doggo": "dog", "kitty": "cat"}
    path.write_text("doggo -> dog\nkitty cat\n", encoding="utf-8")
    with pytest.raises(CTranError, match=r"aliases.txt:2: expected 'user tag -> label'"):
        read_aliases(path)
    with pytest.raises(CTranError, match="does not exist"):
        read_aliases(tmp_path / "gone.txt")
