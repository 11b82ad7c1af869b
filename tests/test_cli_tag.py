"""``ctran tag`` end to end: a library's own tags in as known labels, new tags out, the user's bytes kept."""

from __future__ import annotations

import codecs
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ctran.cli import main

DARKTABLE = b"""<?xml version="1.0" encoding="UTF-8"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="XMP Core 4.4.0-Exiv2">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:dc="http://purl.org/dc/elements/1.1/"
    xmlns:lr="http://ns.adobe.com/lightroom/1.0/"
    xmlns:darktable="http://darktable.sf.net/"
   xmp:Rating="3"
   darktable:xmp_version="5">
   <dc:subject>
    <rdf:Bag>
     <rdf:li>Digit 3</rdf:li>
    </rdf:Bag>
   </dc:subject>
   <lr:hierarchicalSubject>
    <rdf:Bag>
     <rdf:li>places|context_kitchen</rdf:li>
    </rdf:Bag>
   </lr:hierarchicalSubject>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
"""


@pytest.fixture
def library(tmp_path: Path) -> Path:
    """Six random 48 x 48 images: captions with CRLF + BOM, odd spacing, unicode, '-tag'; two with none."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "library"
    (folder / "trip").mkdir(parents=True)
    names = ["a.png", "b.jpg", "c.png", "d.png", "trip/e.png", "trip/f.jpg"]
    for name in names:
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(folder / name)
    (folder / "a.txt").write_bytes(codecs.BOM_UTF8 + b"digit 3,  my holiday ,-tag_sea\r\n")
    (folder / "b.txt").write_bytes("Digit_5 ,caf\u00e9 \U0001f37d".encode())
    (folder / "c.txt").write_bytes(b"digit_7, tag_food\n")
    (folder / "trip" / "e.txt").write_bytes(b"doggo")
    return folder


def _tag(library: Path, checkpoint: Path, *args: str, capsys=None) -> int:
    code = main(["tag", str(library), "--checkpoint", str(checkpoint), "--workers", "0", "--quiet", *args])
    return code


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _lines(path: Path) -> dict[str, dict]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return {Path(row["image"]).name: row for row in rows}


def test_tags_are_appended_and_the_users_bytes_kept(
    library: Path, digits_checkpoint: Path, tmp_path: Path
) -> None:
    before = _files(library)
    report = tmp_path / "report.json"
    code = main(
        [
            "tag",
            str(library),
            "--checkpoint",
            str(digits_checkpoint),
            "--threshold",
            "0.5",
            "--report",
            str(report),
        ]
    )  # the default path: DataLoader workers
    assert code == 0
    after = _files(library)
    for name, raw in before.items():
        if name.endswith(".txt"):
            new = after[name]
            body = len(raw.rstrip(b"\r\n"))
            assert new[:body] == raw[:body] and new.endswith(raw[body:])  # spliced in, nothing else moved
            assert len(new) > len(raw)
    assert after["a.txt"].startswith(codecs.BOM_UTF8 + b"digit 3,  my holiday ,-tag_sea,")
    assert after["a.txt"].endswith(b"\r\n")
    assert "d.txt" in after and "trip/f.txt" in after  # images without a caption get one
    summary = json.loads(report.read_text())
    assert summary["images"] == 6 and summary["tagged"] == 6
    assert summary["unmatched"] == {"my holiday": 1, "caf\u00e9 \U0001f37d": 1, "doggo": 1}
    assert summary["tags_read"] == 8 and summary["tags_matched"] == 5
    assert summary["tags_added"] == sum(summary["added"].values()) > 0


def test_known_tags_are_told_to_the_model(library: Path, digits_checkpoint: Path, tmp_path: Path) -> None:
    told, untold = tmp_path / "told.jsonl", tmp_path / "untold.jsonl"
    assert _tag(library, digits_checkpoint, "--write", "none", "--jsonl", str(told)) == 0
    assert _tag(library, digits_checkpoint, "--write", "none", "--read", "none", "--jsonl", str(untold)) == 0
    told_rows, untold_rows = _lines(told), _lines(untold)
    assert told_rows["a.png"]["known"] == {"digit_3": 1, "tag_sea": 0}
    assert told_rows["c.png"]["known"] == {"digit_7": 1, "tag_food": 1}
    assert untold_rows["a.png"]["known"] == {}
    assert set(told_rows["a.png"]["probs"]) == set(
        untold_rows["a.png"]["probs"]
    )  # every target, told ones too
    moved = abs(told_rows["a.png"]["probs"]["digit_0"] - untold_rows["a.png"]["probs"]["digit_0"])
    assert moved > 1e-4  # the told labels changed the others' predictions
    assert told_rows["d.png"]["probs"] == untold_rows["d.png"]["probs"]  # nothing to tell: the same
    assert told_rows["a.png"]["unmatched"] == ["my holiday"]


def test_aliases_and_exclude_become_known_states(
    library: Path, digits_checkpoint: Path, tmp_path: Path
) -> None:
    aliases = tmp_path / "aliases.txt"
    aliases.write_text("doggo -> digit_9\n", encoding="utf-8")
    out, plain = tmp_path / "out.jsonl", tmp_path / "plain.jsonl"
    args = ["--write", "none", "--threshold", "0"]
    assert _tag(library, digits_checkpoint, *args, "--jsonl", str(plain)) == 0
    assert (
        _tag(
            library,
            digits_checkpoint,
            *args,
            "--aliases",
            str(aliases),
            "--exclude",
            "tag_sun,Tag Work",
            "--jsonl",
            str(out),
        )
        == 0
    )
    rows, plain_rows = _lines(out), _lines(plain)
    assert rows["e.png"]["known"] == {"digit_9": 1, "tag_sun": 0, "tag_work": 0}
    assert plain_rows["e.png"]["unmatched"] == ["doggo"] and rows["e.png"]["unmatched"] == []
    for name, row in rows.items():
        assert {"tag_sun", "tag_work"}.isdisjoint(row["added"])  # threshold 0: everything else is added
        assert row["probs"]["digit_1"] != plain_rows[name]["probs"]["digit_1"]  # negatives move the others


def test_an_image_that_says_present_wins_over_the_blacklist(
    library: Path, digits_checkpoint: Path, tmp_path
) -> None:
    out = tmp_path / "out.jsonl"
    assert (
        _tag(library, digits_checkpoint, "--write", "none", "--exclude", "tag_food", "--jsonl", str(out)) == 0
    )
    assert _lines(out)["c.png"]["known"]["tag_food"] == 1


def test_xmp_sidecars_and_embedded_keywords_are_read_and_written(
    library: Path, digits_checkpoint: Path, tmp_path: Path
) -> None:
    (library / "d.png.xmp").write_bytes(DARKTABLE)
    image = Image.open(library / "trip" / "f.jpg")
    image.save(library / "trip" / "f.jpg", xmp=DARKTABLE.replace(b"Digit 3", b"tag_sun"))
    out = tmp_path / "out.jsonl"
    code = _tag(
        library,
        digits_checkpoint,
        "--read",
        "xmp",
        "--write",
        "xmp",
        "--max-tags",
        "2",
        "--threshold",
        "0",
        "--jsonl",
        str(out),
    )
    assert code == 0
    rows = _lines(out)
    assert rows["d.png"]["known"] == {"digit_3": 1, "context_kitchen": 1}
    assert rows["f.jpg"]["known"] == {"tag_sun": 1, "context_kitchen": 1}
    new = (library / "d.png.xmp").read_bytes()
    assert new.startswith(DARKTABLE[: DARKTABLE.index(b"    </rdf:Bag>\n   </dc:subject>")])
    assert new.endswith(DARKTABLE[DARKTABLE.index(b"    </rdf:Bag>\n   </dc:subject>") :])  # all else kept
    assert all(f"<rdf:li>{label}</rdf:li>".encode() in new for label in rows["d.png"]["added"])
    assert len(rows["d.png"]["added"]) == 2
    assert (library / "trip" / "f.jpg.xmp").exists()  # a new sidecar; the image file itself is not touched
    assert (library / "a.txt").read_bytes().startswith(codecs.BOM_UTF8)  # --write xmp leaves captions alone


@pytest.mark.parametrize("mode", ["add", "replace", "dry-run"])
def test_a_second_run_changes_nothing(library: Path, digits_checkpoint: Path, mode: str, tmp_path) -> None:
    args = ["--mode", mode, "--threshold", "0.3", "--write", "txt", "--write", "xmp"]
    assert _tag(library, digits_checkpoint, *args) == 0
    first = _files(library)
    report = tmp_path / "again.json"
    assert _tag(library, digits_checkpoint, *args, "--report", str(report)) == 0
    assert _files(library) == first
    summary = json.loads(report.read_text())
    assert summary["files_written"] == 0
    if mode != "dry-run":  # a dry run "would add" the same again: it never adds anything
        assert summary["tags_added"] == 0 and summary["done_before"] == 6


def test_a_dry_run_writes_nothing_and_says_what_would_change(
    library: Path, digits_checkpoint: Path, capsys
) -> None:
    before = _files(library)
    assert _tag(library, digits_checkpoint, "--mode", "dry-run", "--threshold", "0.3") == 0
    assert _files(library) == before and not (library / ".ctran").exists()
    out = capsys.readouterr().out
    assert f"{library / 'a.txt'}: + " in out
    assert _tag(library, digits_checkpoint, "--threshold", "0.3") == 0
    capsys.readouterr()
    assert _tag(library, digits_checkpoint, "--mode", "dry-run", "--threshold", "0.3") == 0
    assert ": + " not in capsys.readouterr().out  # after the real run: nothing would change


def test_replace_keeps_the_users_tags_and_redecides_its_own(library: Path, digits_checkpoint: Path) -> None:
    assert _tag(library, digits_checkpoint, "--threshold", "0.3") == 0
    assert _tag(library, digits_checkpoint, "--mode", "replace", "--threshold", "0.99") == 0
    assert (library / "a.txt").read_bytes() == codecs.BOM_UTF8 + b"digit 3, my holiday, -tag_sea\r\n"
    assert (library / "c.txt").read_bytes() == b"digit_7, tag_food\n"


def test_a_killed_run_resumes_to_the_same_result(
    library: Path, digits_checkpoint: Path, tmp_path: Path, monkeypatch
) -> None:
    clean = tmp_path / "clean"
    shutil.copytree(library, clean)
    args = ["--threshold", "0.3", "--batch-size", "2"]
    assert _tag(clean, digits_checkpoint, *args, "--jsonl", str(tmp_path / "clean.jsonl")) == 0

    import ctran.tagging.tagger as tagger

    real, calls = tagger.atomic_write_bytes, []

    def dies_on_the_fourth_file(path, data):
        calls.append(path)
        if len(calls) == 4:  # the second file of the second batch: the first one of it is written
            raise KeyboardInterrupt
        return real(path, data)

    monkeypatch.setattr(tagger, "atomic_write_bytes", dies_on_the_fourth_file)
    jsonl = tmp_path / "resumed.jsonl"
    assert _tag(library, digits_checkpoint, *args, "--jsonl", str(jsonl)) == 130
    monkeypatch.setattr(tagger, "atomic_write_bytes", real)
    assert _tag(library, digits_checkpoint, *args, "--jsonl", str(jsonl)) == 0
    assert {k: v for k, v in _files(library).items() if not k.startswith(".ctran")} == {
        k: v for k, v in _files(clean).items() if not k.startswith(".ctran")
    }
    lines, clean_rows = jsonl.read_text().splitlines(), _lines(tmp_path / "clean.jsonl")
    assert len(lines) == 6 and _lines(jsonl).keys() == clean_rows.keys()
    for name, row in _lines(jsonl).items():  # the image cut mid-batch was told its own tags, not ours
        assert row["known"] == clean_rows[name]["known"] and row["added"] == clean_rows[name]["added"]


def test_writes_are_atomic(library: Path, digits_checkpoint: Path, monkeypatch) -> None:
    import ctran.files

    def no_rename(*_):
        raise OSError("disk full")

    before = _files(library)
    monkeypatch.setattr(ctran.files.os, "replace", no_rename)
    with pytest.raises(OSError, match="disk full"):
        _tag(library, digits_checkpoint, "--threshold", "0.3")
    after = {k: v for k, v in _files(library).items() if not k.startswith(".ctran")}
    assert after == before  # no half-written caption, no temporary file left


def test_bad_images_and_bad_captions_are_reported_and_skipped(
    library: Path, digits_checkpoint: Path, tmp_path: Path, capsys
) -> None:
    (library / "broken.png").write_bytes(b"\x89PNG not really")
    (library / "c.txt").write_bytes(b"caf\xe9, digit_7")  # Latin-1: not UTF-8
    report = tmp_path / "report.json"
    assert _tag(library, digits_checkpoint, "--threshold", "0.3", "--report", str(report)) == 1
    assert (library / "c.txt").read_bytes() == b"caf\xe9, digit_7"
    assert not (library / "broken.txt").exists()
    summary = json.loads(report.read_text())
    assert summary["tagged"] == 5
    assert summary["skipped"] == {"unreadable image": 1, "unreadable tag file": 1}
    err = capsys.readouterr().err
    assert "broken.png: cannot read image" in err and "c.txt: not UTF-8" in err


def test_an_xmp_sidecar_it_cannot_write_into_is_reported_and_left_alone(
    library: Path, digits_checkpoint: Path, tmp_path: Path, capsys
) -> None:
    odd = DARKTABLE.replace(
        b"<dc:subject>\n    <rdf:Bag>\n     <rdf:li>Digit 3</rdf:li>\n    </rdf:Bag>\n", b"<dc:subject>"
    )
    odd = odd.replace(b"   </dc:subject>", b"Digit 3</dc:subject>")  # plain text, not a list of keywords
    (library / "d.png.xmp").write_bytes(odd)
    report = tmp_path / "report.json"
    assert (
        _tag(library, digits_checkpoint, "--write", "xmp", "--threshold", "0.3", "--report", str(report)) == 1
    )
    assert (library / "d.png.xmp").read_bytes() == odd
    assert json.loads(report.read_text())["skipped"] == {"tag file it cannot write into": 1}
    assert "d.png.xmp" in capsys.readouterr().err
    assert (library / "c.png.xmp").exists()  # the others were tagged


def test_max_tags_min_prob_and_backup(library: Path, digits_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    original = (library / "a.txt").read_bytes()
    assert (
        _tag(
            library, digits_checkpoint, "--threshold", "0", "--max-tags", "2", "--backup", "--jsonl", str(out)
        )
        == 0
    )
    rows = _lines(out)
    for row in rows.values():
        unknown = {n: p for n, p in row["probs"].items() if n not in row["known"]}
        assert row["added"] == sorted(unknown, key=lambda n: -unknown[n])[:2]
    assert (library / "a.txt.bak").read_bytes() == original
    assert (
        _tag(
            library, digits_checkpoint, "--threshold", "0", "--min-prob", "1", "--force", "--jsonl", str(out)
        )
        == 0
    )
    assert all(row["added"] == [] for row in _lines(out).values())


def test_mistakes_end_with_one_line(library: Path, digits_checkpoint: Path, capsys) -> None:
    assert _tag(library, digits_checkpoint, "--exclude", "tag_fod") == 2
    assert "closest: tag_food" in capsys.readouterr().err
    assert _tag(library / "nothing", digits_checkpoint) == 2
