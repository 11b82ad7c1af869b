"""The answer store: every answer kept, the last one wins, undo walks back, a killed writer loses nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ctran.annotation.store import AnswerStore
from ctran.errors import CTranError


@pytest.fixture
def store(tmp_path: Path) -> AnswerStore:
    store = AnswerStore(tmp_path / ".ctran" / "library.sqlite")
    store.add_labels(["cat", "dog", "sky"])
    store.add_labels(["indoor"], kind="extra")
    yield store
    store.close()


def test_the_last_answer_wins_and_the_history_keeps_both(store: AnswerStore) -> None:
    store.answer("a.jpg", "cat", True, "ann")
    store.answer("a.jpg", "cat", False, "bob")
    store.answer("a.jpg", "dog", True, "ann")
    store.answer("a.jpg", "dog", None, "ann")  # cleared: unknown again
    assert store.state("a.jpg") == {"cat": False}
    assert [(a.label, a.value, a.annotator) for a in store.history("a.jpg")] == [
        ("dog", None, "ann"),
        ("dog", True, "ann"),
        ("cat", False, "bob"),
        ("cat", True, "ann"),
    ]
    assert store.states() == {"a.jpg": {"cat": False}}


def test_undo_restores_what_was_there_before_and_walks_back(store: AnswerStore) -> None:
    store.answer("a.jpg", "cat", True, "ann")
    store.answer("a.jpg", "cat", False, "ann")
    store.answer("b.jpg", "sky", True, "ann")
    store.answer("a.jpg", "dog", True, "bob")
    assert store.undo("ann").label == "sky" and store.state("b.jpg") == {}
    assert store.undo("ann", image="a.jpg").value is True and store.state("a.jpg") == {
        "cat": True,
        "dog": True,
    }
    assert store.undo("ann").value is None and store.state("a.jpg") == {"dog": True}
    assert store.undo("ann") is None  # nothing of ann's left; bob's answer untouched
    assert len(store.history()) == 7  # undos are answers too: nothing is deleted


def test_undo_never_overwrites_another_annotators_later_answer(store: AnswerStore) -> None:
    store.answer("a.jpg", "cat", True, "ann")
    store.answer("a.jpg", "cat", False, "bob")
    assert store.undo("ann").value is False and store.state("a.jpg") == {"cat": False}  # bob's stands
    store.answer("a.jpg", "dog", True, "bob")
    store.answer("a.jpg", "dog", False, "ann")
    assert store.undo("ann").value is True and store.state("a.jpg")["dog"] is True  # back to bob's


def test_mistakes_are_refused(store: AnswerStore) -> None:
    with pytest.raises(CTranError, match="unknown label 'cow'"):
        store.answer("a.jpg", "cow", True, "ann")
    with pytest.raises(CTranError, match="annotator"):
        store.answer("a.jpg", "cat", True, " ")
    with pytest.raises(CTranError, match="source"):
        store.answer("a.jpg", "cat", True, "ann", source="guess")
    assert store.history() == []


def test_labels_keep_their_kind_and_whether_the_model_knows_them(store: AnswerStore) -> None:
    store.add_labels(["bird"], trained=False)
    store.add_labels(["cat"], trained=False)  # already there: unchanged
    assert store.labels() == [
        ("cat", "target", True),
        ("dog", "target", True),
        ("sky", "target", True),
        ("indoor", "extra", True),
        ("bird", "target", False),
    ]


def test_two_annotators_writing_at_once_lose_nothing(tmp_path: Path, store: AnswerStore) -> None:
    other = AnswerStore(store.path)  # a second connection, as a second server process would have

    def write(target: AnswerStore, name: str) -> None:
        for i in range(50):
            target.answer(f"img{i}.jpg", "cat", name == "ann", name)

    threads = [threading.Thread(target=write, args=(s, n)) for s, n in ((store, "ann"), (other, "bob"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    other.close()
    assert len(store.history()) == 100
    assert {a.annotator for a in store.history("img7.jpg")} == {"ann", "bob"}


WRITER = """
import sys, time
from ctran.annotation.store import AnswerStore
store = AnswerStore(sys.argv[1])
store.add_labels(["cat"])
i = 0
while True:
    store.answer(f"img{i}.jpg", "cat", True, "ann")
    print(i, flush=True)
    i += 1
"""


def test_a_killed_writer_loses_at_most_the_answer_in_flight(tmp_path: Path) -> None:
    path = tmp_path / "library.sqlite"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, env=env, text=True
    )
    confirmed = -1
    deadline = time.monotonic() + 60
    while confirmed < 30 and time.monotonic() < deadline:
        confirmed = int(writer.stdout.readline())
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    store = AnswerStore(path)
    kept = {a.image for a in store.history()}
    store.close()
    assert {f"img{i}.jpg" for i in range(confirmed + 1)} <= kept  # every answer that returned is there


def test_a_library_imports_existing_captions_once_and_refuses_paths_outside(tmp_path: Path) -> None:
    from PIL import Image

    from ctran.annotation.library import Library

    root = tmp_path / "lib"
    (root / "trip").mkdir(parents=True)
    (root / ".ctran").mkdir()
    for name in ("a.png", "trip/b.png", ".ctran/c.png"):
        Image.new("RGB", (8, 8)).save(root / name)
    (root / "a.txt").write_text("Cat, -dog, my trip", encoding="utf-8")
    (root / "trip" / "b.txt").write_bytes(b"\xff\xfe\x00")  # unreadable: reported, left alone
    library = Library(root)
    library.store.add_labels(["cat", "dog", "sky"])
    assert library.images == ["a.png", "trip/b.png"]
    recorded, problems = library.import_tags()
    assert recorded == 2 and len(problems) == 1 and "b.txt" in problems[0]
    assert library.store.state("a.png") == {"cat": True, "dog": False}
    assert library.import_tags()[0] == 0  # unchanged captions are not imported twice
    library.store.answer("a.png", "cat", False, "ann")
    assert library.import_tags()[0] == 0 and library.store.state("a.png")["cat"] is False
    (root / "a.txt").write_text("cat, sky", encoding="utf-8")  # edited since: imported again
    assert library.import_tags()[0] == 2 and library.store.state("a.png") == {
        "cat": True,
        "dog": False,
        "sky": True,
    }
    for outside in ("../secret.png", str(root / "a.png"), ".ctran/c.png"):
        with pytest.raises(CTranError, match="no image"):
            library.path(outside)
    library.close()
