"""``ctran annotate`` in a real browser (headless Chromium, as ``test_serve_browser``): answer by keyboard,
skip a question, go to the next image and back, reload the page and find every answer, undo by keyboard."""

from __future__ import annotations

from pathlib import Path

import ctran
from ctran.annotation.library import Library
from ctran.serving.library_app import create_library_app
from ctran.serving.security import LOOPBACK_HOSTS
from test_annotate import make_library
from test_serve_browser import browse


def row_class(page, label: str) -> str:
    return page.get_attribute(f'#targets .row[data-label="{label}"]', "class")


def asked(page, not_label: str | None = None) -> str:
    """The label "Ask next" shows, once it shows one (other than ``not_label``)."""
    other = f":not([data-label='{not_label}'])" if not_label else ""
    page.wait_for_selector(f"#ask[data-label]:not([data-label='']){other}")
    return page.get_attribute("#ask", "data-label")


def keyboard_session(page, url: str) -> dict:
    page.goto(url)
    page.wait_for_selector("body[data-ready=true][data-image='s0.png']")
    name = page.input_value("#annotator")
    first = asked(page)
    page.keyboard.press("y")
    page.wait_for_selector(f'#targets .row.given-yes[data-label="{first}"]')
    second = asked(page, first)
    page.keyboard.press("s")  # skip: the next question, nothing answered
    third = asked(page, second)
    page.keyboard.press("n")
    page.wait_for_selector(f'#targets .row.given-no[data-label="{third}"]')
    page.keyboard.press("j")
    page.wait_for_selector("body[data-image='s1.png']")
    page.keyboard.press("ArrowLeft")
    page.wait_for_selector("body[data-image='s0.png']")

    page.reload()
    page.wait_for_selector("body[data-ready=true][data-image='s0.png']")
    after_reload = {label: row_class(page, label) for label in (first, second, third)}
    page.keyboard.press("u")
    page.wait_for_selector("#status:has-text('Undone')")
    after_undo = row_class(page, third)
    return {
        "name": name,
        "name_after_reload": page.input_value("#annotator"),
        "first": first,
        "second": second,
        "third": third,
        "after_reload": after_reload,
        "after_undo": after_undo,
    }


def test_keyboard_answers_survive_a_reload(tmp_path: Path, digits_checkpoint: Path) -> None:
    library = Library(make_library(tmp_path / "lib"))
    try:
        app = create_library_app(library, ctran.load(digits_checkpoint), allowed_hosts=LOOPBACK_HOSTS)
        library.import_tags()
        seen, problems, outside = browse(app, keyboard_session)
        history = library.store.history("s0.png")
    finally:
        library.close()

    assert problems == [] and outside == []
    first, second, third = seen["first"], seen["second"], seen["third"]
    assert len({first, second, third}) == 3
    assert "given-yes" in seen["after_reload"][first]
    assert "given-no" in seen["after_reload"][third]
    assert "given" not in seen["after_reload"][second]  # skipped, not answered
    assert "given" not in seen["after_undo"]
    assert seen["name"] and seen["name_after_reload"] == seen["name"]  # kept in localStorage
    mine = [(a.label, a.value, a.source) for a in history if a.annotator == seen["name"]]
    assert mine == [(third, None, "undo"), (third, False, "human"), (first, True, "human")]
