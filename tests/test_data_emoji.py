"""``ctran data emoji``: the real-tag development set built from npm packages (a fake, tiny node_modules)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ctran.cli import main
from ctran.data import tabular
from ctran.data.emoji import Emoji, IconifySet, node_modules, slug, split_of, vocabulary
from ctran.errors import CTranError

needs_rsvg = pytest.mark.skipif(shutil.which("rsvg-convert") is None, reason="rsvg-convert not installed")
COLOURS = ["#e00", "#0a0", "#00e", "#ea0", "#0ae", "#a0e", "#777", "#e0a"]
EMOJI = [  # hexcode, name, keywords, group number
    ("1f600", "grinning face", ["face", "grin", "happy"], 0),
    ("1f603", "grinning face with big eyes", ["face", "happy", "mouth", "open"], 0),
    ("1f622", "crying face", ["face", "sad", "tear"], 0),
    ("1f436", "dog face", ["animal", "dog", "face", "pet"], 3),
    ("1f431", "cat face", ["animal", "cat", "face", "pet"], 3),
    ("1f34e", "red apple", ["apple", "fruit", "red"], 4),
    ("1f1eb-1f1f7", "flag: France", ["flag"], 9),
    ("1f3fb", "light skin tone", ["skin", "tone"], 2),  # a component: left out
]


def _svg(colour: str, size: int) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {size} {size}"><circle cx="{size / 2}" '
        f'cy="{size / 2}" r="{size / 3}" fill="{colour}"/></svg>'
    )


def fake_npm(root: Path) -> Path:
    """node_modules with emojibase-data, @twemoji/svg (every emoji) and @iconify-json/noto (by name or by
    chars.json; one emoji missing, one through an alias)."""
    modules = root / "node_modules"
    data = [
        {"label": name, "hexcode": code.upper(), "tags": tags, "group": group, "emoji": "?"}
        for code, name, tags, group in EMOJI
    ] + [{"label": "regional indicator A", "hexcode": "1F1E6", "emoji": "?"}]  # no group: left out
    base = modules / "emojibase-data"
    (base / "en").mkdir(parents=True)
    (base / "meta").mkdir()
    (base / "en" / "data.json").write_text(json.dumps(data))
    groups = {
        "0": "smileys-emotion",
        "2": "component",
        "3": "animals-nature",
        "4": "food-drink",
        "9": "flags",
    }
    (base / "meta" / "groups.json").write_text(json.dumps({"groups": groups}))
    (base / "package.json").write_text(json.dumps({"version": "1.0.0", "license": "MIT"}))
    twemoji = modules / "@twemoji" / "svg"
    twemoji.mkdir(parents=True)
    for (code, *_), colour in zip(EMOJI, COLOURS, strict=True):
        (twemoji / f"{code}.svg").write_text(_svg(colour, 36))
    icons = {
        slug(name): {"body": f'<rect width="100" height="100" fill="{COLOURS[i]}"/>'}
        for i, (_, name, _, _) in enumerate(EMOJI[:5])
    }
    icons["apple-red"] = {"body": '<rect width="50" height="50" fill="#f00"/>', "width": 50, "height": 50}
    noto = modules / "@iconify-json" / "noto"
    noto.mkdir(parents=True)
    aliases = {"red-apple-alias": {"parent": "apple-red"}}
    (noto / "icons.json").write_text(
        json.dumps({"icons": icons, "aliases": aliases, "width": 100, "height": 100})
    )
    (noto / "chars.json").write_text(json.dumps({"1f34e": "red-apple-alias"}))
    return root


def test_vocabulary_counts_emoji_and_breaks_ties_alphabetically() -> None:
    emoji = [Emoji("a", "a", ("x", "y"), "g"), Emoji("b", "b", ("y", "z"), "g"), Emoji("c", "c", ("x",), "g")]
    assert vocabulary(emoji, 2) == ["x", "y"]  # x 2, y 2, z 1
    assert vocabulary(emoji, 5) == ["x", "y", "z"]


def test_split_is_seeded_covers_every_emoji_and_is_about_70_10_20() -> None:
    emoji = [Emoji(f"{i:05x}", str(i), (), "g") for i in range(1000)]
    splits = split_of(emoji, 0)
    assert splits == split_of(list(reversed(emoji)), 0)  # by hexcode, not by input order
    assert splits != split_of(emoji, 1)
    counts = {name: list(splits.values()).count(name) for name in ("train", "val", "test")}
    assert counts == {"train": 700, "val": 100, "test": 200}


def test_iconify_finds_icons_by_code_point_alias_and_name(tmp_path: Path) -> None:
    noto = IconifySet(fake_npm(tmp_path) / "node_modules" / "@iconify-json" / "noto")
    apple = noto.svg(Emoji("1f34e", "red apple", (), "food-drink"))
    assert apple is not None and 'viewBox="0 0 50 50"' in apple and "#f00" in apple  # chars -> alias -> icon
    assert 'viewBox="0 0 100 100"' in noto.svg(Emoji("1f600", "grinning face", (), "x"))  # by name
    assert noto.svg(Emoji("1f1eb-1f1f7", "flag: France", (), "flags")) is None


def test_missing_packages_name_the_install_command(tmp_path: Path, capsys) -> None:
    assert main(["data", "emoji", "--npm", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert "no emojibase-data package" in capsys.readouterr().err
    with pytest.raises(CTranError, match="npm install @twemoji/svg"):
        node_modules(tmp_path)


@needs_rsvg
def test_builds_a_csv_set_ctran_reads_with_variants_in_one_split(tmp_path: Path, capsys) -> None:
    root, out = fake_npm(tmp_path), tmp_path / "set"
    code = main(
        ["data", "emoji", "--npm", str(root), "--out", str(out), "--labels", "4", "--size", "32", "--quiet"]
    )
    assert code == 0 and "ctran train --config own-cpu" in capsys.readouterr().out
    summary = json.loads((out / "emoji.json").read_text())
    assert summary["emoji"] == 7  # the component and the group-less letter left out
    assert summary["images_per_artwork"] == {"twemoji": 7, "noto": 6}  # no noto flag
    assert (out / "labels.txt").read_text().split("\n")[:4] == ["face", "animal", "happy", "pet"]
    assert (out / "extras.txt").read_text().split() == [
        "animals-nature",
        "flags",
        "food-drink",
        "smileys-emotion",
    ]
    rows = {}
    for split in ("train", "val", "test"):
        with open(out / f"{split}.csv", newline="") as handle:
            for row in csv.DictReader(handle):
                rows[row["image"]] = (split, row["labels"], row["extra"])
    assert len(rows) == 13
    by_emoji = {}
    for image, (split, *_) in rows.items():
        by_emoji.setdefault(Path(image).stem, set()).add(split)
    assert all(len(splits) == 1 for splits in by_emoji.values())  # an emoji's drawings share its split
    assert rows["images/noto/1f436.png"][1:] == ("animal;face;pet", "animals-nature")  # vocabulary tags only
    assert rows["images/twemoji/1f34e.png"][1:] == ("", "food-drink")
    with Image.open(out / "images" / "twemoji" / "1f622.png") as image:
        assert image.size == (32, 32) and image.mode == "RGB"
        pixels = np.asarray(image)
    assert (pixels[0, 0] == 255).all() and tuple(pixels[16, 16]) == (0, 0, 238)  # white ground, the icon
    split = next(iter({s for s, *_ in rows.values()}))
    dataset = tabular.load(out, split)
    assert list(dataset.target_names)[:2] == ["face", "animal"] and len(dataset.extra_names) == 4


@needs_rsvg
def test_rerun_keeps_rendered_icons_and_skips_an_undrawable_one(tmp_path: Path) -> None:
    root, out = fake_npm(tmp_path), tmp_path / "set"
    args = ["data", "emoji", "--npm", str(root), "--out", str(out), "--size", "16", "--quiet"]
    assert main(args) == 0
    kept = out / "images" / "twemoji" / "1f600.png"
    kept.write_bytes(b"marker")  # an icon on disk is not drawn again
    (root / "node_modules" / "@twemoji" / "svg" / "1f603.svg").write_text("<svg><not closed")
    (out / "images" / "twemoji" / "1f603.png").unlink()
    assert main(args) == 0
    assert kept.read_bytes() == b"marker"
    summary = json.loads((out / "emoji.json").read_text())
    assert list(summary["not_rendered"]) == ["twemoji/1f603"]
    listed = "".join((out / f"{split}.csv").read_text() for split in ("train", "val", "test"))
    assert "twemoji/1f603" not in listed and "noto/1f603" in listed
