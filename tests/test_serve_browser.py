"""``ctran serve`` in a real browser: Playwright drives Debian's headless Chromium against a live server.

Upload a digit scene, see the probabilities, mark a label present (mouse) and another one by keyboard, see
the other probabilities change and "Because you told it" list the largest changes, open a heat-map,
download the JSON, and keep a screenshot (in ``tmp_path``); and answer "Ask next" twice by its buttons:
the page must ask what ``Predictor.suggest`` ranks first. Playwright never downloads a browser here: it
launches ``/usr/bin/chromium`` (``make venv`` installs it as root); without it the test is skipped.

The README's screenshot comes from the same steps run by hand on the demo checkpoint:
``.venv/bin/python tests/test_serve_browser.py --checkpoint runs/demo/ctran.pt --out docs/serve.png``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import pytest

import ctran
from ctran.serving import BackgroundServer, create_app
from ctran.serving.security import LOOPBACK_HOSTS

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 10_000


def probabilities(page) -> dict[str, str]:
    """label -> what its row shows as probability (the raw value, or "" for a given label)."""
    rows = page.eval_on_selector_all(
        "#targets .row", "rows => rows.map(r => [r.dataset.label, r.querySelector('.prob').dataset.p || ''])"
    )
    return dict(rows)


def drive(page, url: str, image: Path, shot: Path) -> dict:
    """The annotator's steps; returns what the test checks. Every wait is bounded by the page's timeout."""
    page.goto(url)
    page.wait_for_selector("body[data-ready=true]")
    page.set_input_files("#file", str(image))
    page.wait_for_selector("#targets .prob[data-p]")
    page.wait_for_selector("#status:has-text('above threshold')")
    before = probabilities(page)
    top = page.eval_on_selector("#targets .row", "row => row.dataset.label")  # ranked first
    moved_shown_before = page.is_visible("#moved")

    page.click(f'#targets .row[data-label="{top}"] label.yes')
    page.wait_for_selector("#status:has-text('knowing 1 ')")
    after = probabilities(page)
    moved = page.text_content("#moved-overall") if page.is_visible("#moved") else None

    second = next(name for name, p in after.items() if p and name != top)
    page.focus(f'#targets .row[data-label="{second}"] input[value=unknown]')
    page.keyboard.press("ArrowRight")  # radio groups move by arrow keys: unknown -> yes
    page.wait_for_selector("#status:has-text('knowing 2 ')")
    by_keyboard = page.eval_on_selector(f'#targets .row[data-label="{second}"] .prob', "p => p.textContent")
    moved_by = page.eval_on_selector_all("#moved-by li", "items => items.map(li => li.textContent)")

    heat = next(name for name, p in probabilities(page).items() if p)
    page.click(f'#targets .row[data-label="{heat}"] .name')
    page.wait_for_selector("#caption:has-text('Where the model looks')")
    page.wait_for_selector("#picture[src^='blob:']")
    shown = page.eval_on_selector("#picture", "img => img.decode().then(() => img.naturalWidth)")
    pressed = page.get_attribute(f'#targets .row[data-label="{heat}"] .name', "aria-pressed")

    with page.expect_download() as download:
        page.click("#download")
    saved = json.loads(Path(download.value.path()).read_text())
    page.screenshot(path=str(shot))  # the viewport: the status bar sticks to its bottom
    return {
        "top": top,
        "before": before,
        "after": after,
        "second": second,
        "by_keyboard": by_keyboard,
        "moved_shown_before": moved_shown_before,
        "moved": moved,
        "moved_by": moved_by,
        "heat": heat,
        "pressed": pressed,
        "shown": shown,
        "saved": saved,
    }


def open_browser(playwright):
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


def browse(app, steps) -> tuple[object, list[str], list[str]]:
    """Run ``steps(page, url)`` in headless Chromium against a live server for ``app``; returns what the
    steps returned, the page's console errors, and every request that tried to leave this server."""
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')"
    )
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium (make venv does it as root)")
    problems: list[str] = []
    outside: list[str] = []
    with BackgroundServer(app) as server, sync_api.sync_playwright() as playwright:
        browser = open_browser(playwright)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 1100}, accept_downloads=True)
            context.set_default_timeout(TIMEOUT_MS)
            own = urlsplit(server.url).netloc

            def only_this_server(route) -> None:
                if urlsplit(route.request.url).netloc == own or route.request.url.startswith(
                    ("blob:", "data:")
                ):
                    route.continue_()
                else:
                    outside.append(route.request.url)
                    route.abort()

            context.route("**/*", only_this_server)
            page = context.new_page()
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda err: problems.append(str(err)))
            seen = steps(page, server.url)
        finally:
            browser.close()
    return seen, problems, outside


def test_tagging_in_a_real_browser(tmp_path: Path) -> None:
    from test_serve_api import make_digit_checkpoint, scene

    image = tmp_path / "scene.png"
    scene(0).save(image)
    predictor = ctran.load(make_digit_checkpoint(tmp_path))
    app = create_app(predictor, allowed_hosts=LOOPBACK_HOSTS)
    seen, problems, outside = browse(app, lambda page, url: drive(page, url, image, tmp_path / "serve.png"))

    print(f"screenshot: {tmp_path / 'serve.png'}")
    assert problems == [] and outside == []
    top = seen["top"]
    assert len(seen["before"]) == 16 and all(0.0 <= float(p) <= 1.0 for p in seen["before"].values())
    assert float(seen["before"][top]) == max(float(p) for p in seen["before"].values())
    assert seen["after"][top] == ""  # now given, not predicted
    changed = [n for n, p in seen["after"].items() if p and abs(float(p) - float(seen["before"][n])) > 1e-6]
    assert len(changed) >= 3, changed
    assert seen["by_keyboard"] == "given yes"
    assert seen["pressed"] == "true" and seen["shown"] > 100
    assert seen["saved"]["known"] == {top: True, seen["second"]: True}
    assert set(seen["saved"]["predictions"]) == set(seen["after"]) - {top, seen["second"]}
    assert (tmp_path / "serve.png").stat().st_size > 10_000
    # "Because you told it": the largest changes the API reports, in points, shown only once told something
    [moved] = predictor.influence(predictor.encode(scene(0)), {top: True})
    minus = "\N{MINUS SIGN}"
    points = [f"{'+' if c.delta >= 0 else minus}{100 * abs(c.delta):.1f} {c.label}" for c in moved.overall]
    assert not seen["moved_shown_before"] and seen["moved"] == ", ".join(points)
    assert [item.split(",")[0] for item in seen["moved_by"]] == [top, seen["second"]]
    assert set(seen["saved"]["moved_by_known"]["by_label"]) == {top, seen["second"]}


def main() -> None:
    """Take the README's screenshot with a real checkpoint and a digit scene."""
    from PIL import Image
    from playwright.sync_api import sync_playwright

    from ctran.data.digit_scenes import generate_split

    parser = argparse.ArgumentParser(description="screenshot of ctran serve for the README")
    parser.add_argument("--checkpoint", type=Path, default=Path("runs/demo/ctran.pt"))
    parser.add_argument("--scene", type=int, default=0, help="index of the digit scene (test split)")
    parser.add_argument("--out", type=Path, default=Path("docs/serve.png"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        image = Path(folder) / f"scene_{args.scene}.png"
        Image.fromarray(generate_split("test", 0, args.scene + 1).images[args.scene]).save(image)
        app = create_app(ctran.load(args.checkpoint), allowed_hosts=LOOPBACK_HOSTS)
        with BackgroundServer(app) as server, sync_playwright() as playwright:
            browser = open_browser(playwright)
            page = browser.new_page(viewport={"width": 1280, "height": 1100}, accept_downloads=True)
            page.set_default_timeout(TIMEOUT_MS)
            drive(page, server.url, image, args.out)
            browser.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()


def ask_twice(page, url: str, image: Path) -> dict:
    """Upload, then answer "Ask next" twice (yes, then no) by its buttons; what was asked and shown."""
    page.goto(url)
    page.wait_for_selector("body[data-ready=true]")
    page.set_input_files("#file", str(image))
    page.wait_for_selector("#ask[data-label]:not([data-label='']):not([aria-busy])")
    first = page.get_attribute("#ask", "data-label")
    why = page.text_content("#ask-why")
    page.click("#ask-yes")
    page.wait_for_selector("#status:has-text('knowing 1 ')")
    page.wait_for_selector(
        f"#ask[data-label]:not([data-label='']):not([data-label='{first}']):not([aria-busy])"
    )
    second = page.get_attribute("#ask", "data-label")
    page.click("#ask-no")
    page.wait_for_selector("#status:has-text('knowing 2 ')")
    page.wait_for_selector(f"#ask:not([data-label='']):not([data-label='{second}']):not([aria-busy])")
    rows = {
        name: page.get_attribute(f'#targets .row[data-label="{name}"]', "class") for name in (first, second)
    }
    return {
        "first": first,
        "why": why,
        "second": second,
        "rows": rows,
        "third": page.text_content("#ask-label"),
    }


@pytest.mark.parametrize("method", ["information", "uncertainty"])
def test_ask_next_in_a_real_browser(tmp_path: Path, method: str) -> None:
    """The page asks what the API suggests (by the server's method), and its Yes/No buttons mark that
    label and ask the next one."""
    from test_serve_api import make_digit_checkpoint, scene

    image = tmp_path / "scene.png"
    scene(1).save(image)
    predictor = ctran.load(make_digit_checkpoint(tmp_path))
    app = create_app(predictor, allowed_hosts=LOOPBACK_HOSTS, suggest_method=method)
    seen, problems, outside = browse(app, lambda page, url: ask_twice(page, url, image))

    assert problems == [] and outside == []
    features = predictor.encode(scene(1))
    [[first]] = predictor.suggest(features, k=1, method=method)
    [[second]] = predictor.suggest(features, {first.label: True}, k=1, method=method)
    [[third]] = predictor.suggest(features, {first.label: True, second.label: False}, k=1, method=method)
    assert (seen["first"], seen["second"], seen["third"]) == (first.label, second.label, third.label)
    bits = first.information if method == "information" else first.uncertainty
    assert f"{bits:.2f} bits" in seen["why"]
    assert "given-yes" in seen["rows"][first.label] and "given-no" in seen["rows"][second.label]
