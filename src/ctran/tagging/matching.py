"""A user's tags -> the model's labels: by normalised name, then through the user's alias file.

People write ``Golden Retriever``, ``golden_retriever`` or ``golden retriever`` for one label, and keep their
own words for others (``doggo -> dog``). A tag that matches no label is not an error and is never dropped:
it stays in the user's file as written and is counted in the report, it just tells the model nothing.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ctran.errors import CTranError
from ctran.inference.known import unknown_label

ALIAS_ARROW = "->"


def normalise(tag: str) -> str:
    """The key two spellings of one tag share: NFKC, case folded, underscores as spaces, spaces collapsed."""
    text = unicodedata.normalize("NFKC", tag).casefold().replace("_", " ")
    return re.sub(r"\s+", " ", text).strip()


@dataclass
class Matched:
    """One image's tags as label states (the ``known``/``extra`` dicts of ``Predictor.states``)."""

    known: dict[str, bool] = field(default_factory=dict)  # target label -> present
    extra: dict[str, bool] = field(default_factory=dict)  # extra (input-only) label -> present
    unmatched: list[str] = field(default_factory=list)  # tags as written that name no label
    conflicts: list[str] = field(default_factory=list)  # labels tagged both present and absent: left unknown
    matched: int = 0  # tags that named a label


class TagMatcher:
    """Finds the label a tag names: its exact name first, then its normalised name, then an alias."""

    def __init__(
        self, target_names: Sequence[str], extra_names: Sequence[str] = (), aliases: Mapping[str, str] = {}
    ) -> None:
        self.target_names, self.extra_names = list(target_names), list(extra_names)
        self._targets = set(self.target_names)
        labels = self.target_names + self.extra_names
        self._exact = set(labels)
        self._by_key: dict[str, str | None] = {}
        for name in labels:  # two labels sharing a key (``Dog``, ``dog``) match only by exact name
            key = normalise(name)
            self._by_key[key] = None if key in self._by_key else name
        for tag, label in aliases.items():
            self._by_key[normalise(tag)] = self.resolve(label, "alias")

    def label(self, tag: str) -> str | None:
        """The label ``tag`` names, or None."""
        if tag in self._exact:
            return tag
        return self._by_key.get(normalise(tag))

    def resolve(self, name: str, what: str) -> str:
        """A label named on the command line or in the alias file: it must exist (closest names listed)."""
        label = self.label(name)
        if label is None:
            raise unknown_label(name, self.target_names + self.extra_names, what)
        return label

    def match(self, present: Iterable[str], absent: Iterable[str] = ()) -> Matched:
        """Tags said present and absent -> label states; a label said both is a conflict, left unknown."""
        result = Matched()
        said: dict[str, set[bool]] = {}
        for value, tags in ((True, present), (False, absent)):
            for tag in tags:
                label = self.label(tag)
                if label is None:
                    result.unmatched.append(tag)
                    continue
                result.matched += 1
                said.setdefault(label, set()).add(value)
        for label, values in said.items():
            if len(values) > 1:
                result.conflicts.append(label)
                continue
            (result.known if label in self._targets else result.extra)[label] = values.pop()
        result.unmatched = list(dict.fromkeys(result.unmatched))
        return result


def read_aliases(path: Path) -> dict[str, str]:
    """``user tag -> label`` per line (``#`` comments and blank lines skipped) -> ``{user tag: label}``.

    Labels are checked when a ``TagMatcher`` is built, against the checkpoint's names.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise CTranError(f"alias file {path} does not exist (expected lines 'user tag -> label')") from None
    except (OSError, UnicodeDecodeError) as err:
        raise CTranError(f"alias file {path}: cannot read it ({err})") from err
    aliases: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        tag, arrow, label = (part.strip() for part in line.partition(ALIAS_ARROW))
        if not arrow or not tag or not label:
            raise CTranError(f"{path}:{number}: expected 'user tag -> label', got {line!r}")
        if aliases.get(tag, label) != label:
            raise CTranError(f"{path}:{number}: {tag!r} is already an alias of {aliases[tag]!r}")
        aliases[tag] = label
    return aliases
