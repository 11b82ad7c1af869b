"""A real tagged development set: emoji artwork from npm, tagged with the Unicode CLDR keywords.

The bundled digit scenes were designed so that known labels help; this set was not. Its tags are the
keywords people wrote for each emoji in the Unicode Common Locale Data Repository (``emojibase-data``:
"nerd face" -> brainy, clever, expert, face, geek, ...), its images the same emoji drawn by up to three
design teams (Twitter's Twemoji, Google's Noto, Microsoft's Fluent), and its extra label the emoji's Unicode
group (smileys-emotion, animals-nature, ...). Nothing here is downloaded at run time: the packages come
from the npm registry, installed by the user::

    npm install @twemoji/svg @iconify-json/noto @iconify-json/fluent-emoji emojibase-data

and ``rsvg-convert`` (Debian's ``librsvg2-bin``) rasterises the SVGs. Only the builder ships with ctran,
never the artwork (CC-BY 4.0, Apache-2.0 and MIT respectively; ``emoji.json`` records each package's
licence and version). An SVG that rsvg-convert cannot draw is skipped and listed in ``emoji.json``.

Layout written (the CSV layout of your own data, every unlisted tag negative)::

    OUT/images/<artwork>/<hexcode>.png   one icon on white, SIZE x SIZE
    OUT/{train,val,test}.csv             image,labels,extra  (tags and group, ';'-separated)
    OUT/labels.txt, OUT/extras.txt       the vocabulary: the N most frequent keywords; the groups
    OUT/emoji.json                       sources, licences, counts, the split of every emoji

The split is by emoji (seeded), so the variants of one emoji always share a split: a test icon's tags are
never learned from another artist's drawing of the same emoji. Rendering is resumable: an icon already on
disk is kept, each file is written atomically.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import subprocess
import unicodedata
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ctran.errors import CTranError
from ctran.files import atomic_write_bytes

TAGS_PACKAGE = "emojibase-data"
ARTWORK = {"twemoji": "@twemoji/svg", "noto": "@iconify-json/noto", "fluent": "@iconify-json/fluent-emoji"}
INSTALL = "npm install @twemoji/svg @iconify-json/noto @iconify-json/fluent-emoji emojibase-data"
SKIPPED_GROUPS = ("component",)  # skin tones and hair styles: swatches, not pictures
SPLITS = {"train": 0.7, "val": 0.1, "test": 0.2}


@dataclass(frozen=True)
class Emoji:
    """One emoji of the CLDR data: its code points, name, keywords and Unicode group."""

    hexcode: str  # e.g. "1f913"
    label: str  # the CLDR short name, e.g. "nerd face"
    tags: tuple[str, ...]
    group: str


def node_modules(npm: str | Path) -> Path:
    """The ``node_modules`` folder at or under ``npm``, which must hold ``emojibase-data`` and artwork."""
    npm = Path(npm)
    folder = npm if (npm / TAGS_PACKAGE).is_dir() else npm / "node_modules"
    if not (folder / TAGS_PACKAGE).is_dir():
        raise CTranError(
            f"{npm}: no {TAGS_PACKAGE} package (expected {npm}/node_modules/{TAGS_PACKAGE} or "
            f"{npm}/{TAGS_PACKAGE}); install the packages there with: {INSTALL}"
        )
    if not any((folder / package).is_dir() for package in ARTWORK.values()):
        raise CTranError(f"{folder}: no emoji artwork package ({', '.join(ARTWORK.values())}): {INSTALL}")
    return folder


def read_emoji(folder: Path, locale: str = "en") -> list[Emoji]:
    """Every emoji of ``emojibase-data`` with its keywords, skin-tone variants and components left out
    (a variant carries its base's keywords and would only repeat it)."""
    data = _load_json(folder / TAGS_PACKAGE / locale / "data.json")
    groups = _load_json(folder / TAGS_PACKAGE / "meta" / "groups.json")["groups"]
    emoji = []
    for entry in data:
        group = groups.get(str(entry.get("group")))
        if group is None or group in SKIPPED_GROUPS:
            continue  # regional indicator letters have no group
        tags = tuple(dict.fromkeys(tag.strip().lower() for tag in entry.get("tags", []) if tag.strip()))
        emoji.append(Emoji(entry["hexcode"].lower(), entry["label"], tags, group))
    return emoji


def vocabulary(emoji: list[Emoji], num_labels: int) -> list[str]:
    """The ``num_labels`` keywords that tag the most emoji (ties: alphabetical), most frequent first."""
    counts = Counter(tag for item in emoji for tag in item.tags)
    return [tag for tag, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:num_labels]]


def split_of(emoji: list[Emoji], seed: int) -> dict[str, str]:
    """hexcode -> split: a seeded permutation of the emoji cut 70 / 10 / 20."""
    order = np.random.default_rng(seed).permutation(sorted(item.hexcode for item in emoji))
    cuts = np.cumsum([round(share * len(order)) for share in SPLITS.values()])
    names = np.searchsorted(cuts, np.arange(len(order)), side="right")
    return {
        str(code): list(SPLITS)[min(int(name), len(SPLITS) - 1)]
        for code, name in zip(order, names, strict=True)
    }


def slug(text: str) -> str:
    """The Iconify icon name of a CLDR short name: "face with tears of joy" -> "face-with-tears-of-joy"."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")


class IconifySet:
    """An ``@iconify-json`` package: SVG bodies by icon name, and by code point where ``chars.json`` says."""

    def __init__(self, folder: Path) -> None:
        data = _load_json(folder / "icons.json")
        self.icons, self.aliases = data["icons"], data.get("aliases", {})
        self.size = (data.get("width", 16), data.get("height", 16))
        chars = folder / "chars.json"
        self.chars = _load_json(chars) if chars.is_file() else {}

    def svg(self, item: Emoji) -> str | None:
        """The emoji's SVG document, found by code point or by its name; None if the set lacks it."""
        name = (
            self.chars.get(item.hexcode)
            or self.chars.get(item.hexcode.replace("-fe0f", ""))
            or slug(item.label)
        )
        name = self.aliases.get(name, {}).get("parent", name)
        icon = self.icons.get(name)
        if icon is None:
            return None
        width, height = icon.get("width", self.size[0]), icon.get("height", self.size[1])
        return (
            f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
            f'viewBox="0 0 {width} {height}">{icon["body"]}</svg>'
        )


class TwemojiFiles:
    """``@twemoji/svg``: one SVG file per emoji, named by its code points without the fe0f selector."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def svg(self, item: Emoji) -> str | None:
        for name in (item.hexcode, item.hexcode.replace("-fe0f", "")):
            path = self.folder / f"{name}.svg"
            if path.is_file():
                return path.read_text(encoding="utf-8")
        return None


def artwork_sets(folder: Path) -> dict[str, IconifySet | TwemojiFiles]:
    """The artwork packages installed in ``folder``, by short name."""
    sets = {}
    for name, package in ARTWORK.items():
        if (folder / package).is_dir():
            sets[name] = TwemojiFiles(folder / package) if name == "twemoji" else IconifySet(folder / package)
    return sets


def render_svg(svg: str, size: int) -> bytes:
    """PNG bytes of an SVG drawn ``size`` x ``size`` on white (RGB: the icons' transparency removed)."""
    command = ["rsvg-convert", "--width", str(size), "--height", str(size), "--keep-aspect-ratio"]
    command += ["--background-color", "white", "--format", "png"]
    done = subprocess.run(command, input=svg.encode(), capture_output=True, check=False)
    if done.returncode != 0:
        raise CTranError(f"rsvg-convert failed: {done.stderr.decode(errors='replace').strip()}")
    with Image.open(io.BytesIO(done.stdout)) as image:
        canvas = Image.new("RGB", (size, size), "white")
        canvas.paste(image.convert("RGB"), ((size - image.width) // 2, (size - image.height) // 2))
    out = io.BytesIO()
    canvas.save(out, format="PNG", optimize=True)
    return out.getvalue()


def build_emoji_dataset(
    npm: str | Path,
    out: str | Path,
    num_labels: int = 60,
    size: int = 144,
    seed: int = 0,
    workers: int = 2,
    locale: str = "en",
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Render every emoji's artwork and write the CSV layout (module docstring); returns the summary that
    ``emoji.json`` holds. ``progress`` is called with (icons done, icons in all) after each one."""
    if shutil.which("rsvg-convert") is None:
        raise CTranError("rsvg-convert is not installed (Debian/Ubuntu: apt-get install librsvg2-bin)")
    folder, out = node_modules(npm), Path(out)
    emoji = read_emoji(folder, locale)
    vocab = vocabulary(emoji, num_labels)
    splits = split_of(emoji, seed)
    sets = artwork_sets(folder)
    jobs = [(name, item) for item in emoji for name in sets]
    rows: dict[str, list[tuple[str, str, str]]] = {split: [] for split in SPLITS}
    kept = set(vocab)

    def draw(job: tuple[str, Emoji]) -> tuple[str, Emoji, str | None]:
        name, item = job
        path = out / "images" / name / f"{item.hexcode}.png"
        if not path.is_file():
            svg = sets[name].svg(item)
            if svg is None:
                return name, item, None
            try:
                atomic_write_bytes(path, render_svg(svg, size))
            except CTranError as err:
                failed[f"{name}/{item.hexcode}"] = str(err)
                return name, item, None
        return name, item, path.relative_to(out).as_posix()

    drawn, failed = Counter(), {}
    with ThreadPoolExecutor(max(1, workers)) as pool:  # each job waits on an rsvg-convert process
        for count, (name, item, image) in enumerate(pool.map(draw, jobs), start=1):
            if image is not None:
                tags = ";".join(tag for tag in item.tags if tag in kept)
                rows[splits[item.hexcode]].append((image, tags, item.group))
                drawn[name] += 1
            if progress:
                progress(count, len(jobs))
    for split, split_rows in rows.items():
        _write_csv(out / f"{split}.csv", split_rows)
    atomic_write_bytes(out / "labels.txt", ("\n".join(vocab) + "\n").encode())
    groups = sorted({item.group for item in emoji})
    atomic_write_bytes(out / "extras.txt", ("\n".join(groups) + "\n").encode())
    summary = _summary(folder, emoji, vocab, rows, drawn, size, seed, locale)
    summary["not_rendered"] = failed  # reported, skipped; the icon is absent from every split
    atomic_write_bytes(out / "emoji.json", (json.dumps(summary, indent=1) + "\n").encode())
    return summary


def _write_csv(path: Path, rows: list[tuple[str, str, str]]) -> None:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["image", "labels", "extra"])
    writer.writerows(sorted(rows))
    atomic_write_bytes(path, text.getvalue().encode())


def _summary(
    folder: Path,
    emoji: list[Emoji],
    vocab: list[str],
    rows: dict[str, list[tuple[str, str, str]]],
    drawn: Counter,
    size: int,
    seed: int,
    locale: str,
) -> dict:
    """What ``emoji.json`` records: where everything came from, and what was written."""
    packages = {}
    for package in (TAGS_PACKAGE, *ARTWORK.values()):
        meta = folder / package / "package.json"
        if meta.is_file():
            info = _load_json(meta)
            packages[package] = {"version": info.get("version"), "license": info.get("license")}
    return {
        "packages": packages,
        "locale": locale,
        "size": size,
        "seed": seed,
        "emoji": len(emoji),
        "images": {split: len(split_rows) for split, split_rows in rows.items()},
        "images_per_artwork": dict(drawn),
        "labels": vocab,
        "images_without_label": sum(1 for split_rows in rows.values() for row in split_rows if not row[1]),
    }


def _load_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise CTranError(f"{path}: missing (is the package complete? {INSTALL})") from err
    except json.JSONDecodeError as err:
        raise CTranError(f"{path}: not valid JSON ({err})") from err
