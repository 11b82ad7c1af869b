"""A library: a folder of images, the tags they already have, and the answer store beside them.

Image ids are paths relative to the folder (``trip/IMG_1.jpg``); the only paths ever opened are those the
folder scan found, so an id from a client can never name a file outside it. The tags an image already has
(its ``.txt`` caption, its XMP keywords: ``ctran tag``'s readers) are imported once as answers of source
``imported``; a caption edited later is imported again, and a person's later answer always wins.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ctran.annotation.store import AnswerStore
from ctran.errors import CTranError
from ctran.tagging.manifest import digest
from ctran.tagging.matching import TagMatcher
from ctran.tagging.sidecars import tag_files

STATE_FOLDER = ".ctran"
DATABASE = "library.sqlite"
IMPORTER = "import"


class Library:
    """The images under ``root`` and the answers about them (``root/.ctran/library.sqlite`` or ``db``)."""

    def __init__(self, root: str | Path, db: str | Path | None = None) -> None:
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise CTranError(f"{root}: not a folder (a library is a folder of images, searched recursively)")
        self.store = AnswerStore(Path(db) if db else self.root / STATE_FOLDER / DATABASE)
        self._images: list[str] = []
        self.rescan()

    def close(self) -> None:
        self.store.close()

    def rescan(self) -> list[str]:
        """Find the image files again (sorted ids); the state folder and hidden folders are not searched."""
        from PIL import Image

        extensions = set(Image.registered_extensions())
        found = []
        for path in self.root.rglob("*"):
            relative = path.relative_to(self.root)
            if any(part.startswith(".") for part in relative.parts[:-1]) or not path.is_file():
                continue
            if path.suffix.lower() in extensions:
                found.append(relative.as_posix())
        self._images = sorted(found)
        self._known = set(self._images)
        return self._images

    @property
    def images(self) -> list[str]:
        return list(self._images)

    def path(self, image: str) -> Path:
        """The file of an image id the scan found; anything else (``../x``, absolute paths) is refused."""
        if image not in self._known:
            raise CTranError(f"no image {image!r} in the library {self.root}")
        return self.root / image

    def import_tags(self, reads: Sequence[str] = ("txt",), separator: str = ",") -> tuple[int, list[str]]:
        """Record each image's existing tags as ``imported`` answers, once per version of its tag files;
        returns how many answers were recorded and the tag files that could not be read (left alone). Tags
        naming no library label stay in their files and tell the store nothing."""
        labels = self.store.labels()
        matcher = TagMatcher(
            [n for n, k, _ in labels if k == "target"], [n for n, k, _ in labels if k == "extra"]
        )
        recorded, problems = 0, []
        for image in self._images:
            try:
                files = tag_files(self.path(image), reads, (), separator)
            except CTranError as err:
                problems.append(str(err))
                continue
            versions = {
                str(f.path.relative_to(self.root)): digest(f.raw) for f in files if f.kind != "embedded"
            }
            if self.store.imported(image) == versions:
                continue
            matched = matcher.match(
                [t for f in files for t in f.present], [t for f in files for t in f.absent]
            )
            told = {**matched.known, **matched.extra}
            current = self.store.state(image)
            changes = [(image, label, value) for label, value in told.items() if current.get(label) != value]
            self.store.record_import(image, versions, changes, IMPORTER)
            recorded += len(changes)
        return recorded, problems
