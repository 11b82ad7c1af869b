"""``ctran annotate``: answers survive a killed server, undo, two annotators, new labels, least certain
next, predictions conditioned on the stored answers, and image ids that never leave the library folder."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

import ctran
from ctran.annotation.library import Library
from ctran.cli import main
from ctran.data.digit_scenes import generate_split
from ctran.inference.suggest import binary_entropy
from ctran.serving.library_app import create_library_app
from ctran.serving.library_service import Summary, after_in_folder, by_uncertainty
from ctran.serving.security import LOOPBACK_HOSTS
from ctran.serving.server import BackgroundServer

IMAGES = ["s0.png", "s1.png", "s2.png", "sub/s3.png", "sub/s4.png", "sub/s5.png"]
SECRET = b"secret bytes outside the library"


def make_library(root: Path) -> Path:
    """Six digit scenes (three in ``sub/``), a caption on the first, and a file beside the folder that no id
    may reach."""
    (root / "sub").mkdir(parents=True)
    for name, pixels in zip(IMAGES, generate_split("test", 0, len(IMAGES)).images, strict=True):
        Image.fromarray(pixels).save(root / name)
    (root / "s0.txt").write_text("digit_3, -tag_sun", encoding="utf-8")
    (root.parent / "secret.png").write_bytes(SECRET)
    return root


@pytest.fixture
def library(tmp_path: Path) -> Iterator[Library]:
    library = Library(make_library(tmp_path / "lib"))
    yield library
    library.close()


@pytest.fixture
def predictor(digits_checkpoint: Path) -> ctran.inference.Predictor:
    return ctran.load(digits_checkpoint)


@pytest.fixture
def client(library: Library, predictor) -> Iterator[TestClient]:
    app = create_library_app(library, predictor)
    library.import_tags()
    with TestClient(app) as client:
        yield client


def wait_scored(client: TestClient | httpx.Client) -> None:
    """Until the background pass has predicted every image (bounded)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        health = client.get("/healthz").json()
        if health["scored"] == health["images"]:
            return
        time.sleep(0.02)
    raise AssertionError(f"the background pass did not finish: {health}")


def say(client, image: str, label: str, value: bool | None, annotator: str = "ann") -> dict:
    response = client.post(
        "/api/answers", json={"image": image, "label": label, "value": value, "annotator": annotator}
    )
    assert response.status_code == 200, response.text
    return response.json()


def assert_error(response: httpx.Response, status: int, *fragments: str) -> None:
    assert response.status_code == status, response.text
    for fragment in fragments:
        assert fragment in response.json()["error"], response.json()


# ------------------------------------------------------------------------------------------ answers
def test_predictions_are_conditioned_on_the_stored_answers(client: TestClient, predictor) -> None:
    view = client.get("/api/image", params={"id": "s0.png"}).json()
    assert view["known"] == {"digit_3": True, "tag_sun": False}  # the caption, imported at open
    say(client, "s0.png", "context_beach", True)  # an extra label: given to the model as input
    view = say(client, "s0.png", "digit_5", False)["image"]
    features = predictor.encode(Image.open(client.app.state.service.library.path("s0.png")))
    told = {"digit_3": True, "tag_sun": False, "digit_5": False}
    [expected] = predictor.condition(features, told, {"context_beach": True})
    assert view["known"] == {**told, "context_beach": True}
    assert view["predictions"] == pytest.approx(expected.probs, abs=1e-6)
    assert view["predicted"] == expected.predicted
    [ask] = predictor.suggest(features, told, {"context_beach": True}, k=8)
    assert [s["label"] for s in view["ask"]] == [s.label for s in ask]


def test_undo_walks_back_the_annotators_own_answers(client: TestClient) -> None:
    say(client, "s1.png", "digit_1", True)
    say(client, "s1.png", "digit_1", False)
    say(client, "s2.png", "digit_2", True, annotator="bob")
    say(client, "s2.png", "digit_7", True)
    first = client.post("/api/undo", json={"annotator": "ann"}).json()
    assert first["answer"]["label"] == "digit_7" and first["answer"]["source"] == "undo"
    assert first["image"]["id"] == "s2.png" and first["image"]["known"] == {"digit_2": True}  # bob's stays
    second = client.post("/api/undo", json={"annotator": "ann", "image": "s1.png"}).json()
    assert second["image"]["known"] == {"digit_1": True}  # back to the answer before the undone one
    assert client.post("/api/undo", json={"annotator": "ann"}).json()["image"]["known"] == {}
    assert client.post("/api/undo", json={"annotator": "ann"}).json() == {"answer": None, "image": None}
    sources = [a["source"] for a in client.get("/api/history", params={"id": "s1.png"}).json()["answers"]]
    assert sources == ["undo", "undo", "human", "human"]  # nothing is deleted


def test_two_annotators_never_lose_each_others_answers(library: Library, predictor) -> None:
    app = create_library_app(library, predictor, allowed_hosts=LOOPBACK_HOSTS)
    pairs = [(image, label) for image in IMAGES for label in ("digit_1", "digit_2", "tag_sun")]
    with BackgroundServer(app) as server:
        clients = {name: httpx.Client(base_url=server.url, timeout=30) for name in ("ann", "bob")}

        def annotate(name: str) -> None:
            for image, label in pairs:
                say(clients[name], image, label, name == "ann", annotator=name)

        threads = [threading.Thread(target=annotate, args=(name,)) for name in clients]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for image, label in pairs:
            rows = [
                a
                for a in clients["ann"].get("/api/history", params={"id": image}).json()["answers"]
                if a["label"] == label
            ]
            assert sorted(a["annotator"] for a in rows) == ["ann", "bob"]  # both kept
            last = rows[0]  # newest first: the last answer wins
            view = clients["bob"].get("/api/image", params={"id": image}).json()
            assert view["known"][label] is (last["annotator"] == "ann")
        say(clients["ann"], "s1.png", "digit_9", True, annotator="ann")
        say(clients["bob"], "s1.png", "digit_9", False, annotator="bob")  # bob's, later: wins
        undone = clients["ann"].post("/api/undo", json={"annotator": "ann"}).json()
        assert undone["answer"]["label"] == "digit_9"  # ann's own last answer
        assert undone["image"]["known"]["digit_9"] is False  # bob's later answer stands
        for c in clients.values():
            c.close()


def test_a_new_label_is_unknown_everywhere_and_never_reaches_the_model(client: TestClient) -> None:
    before = client.get("/api/image", params={"id": "s1.png"}).json()
    response = client.post("/api/labels", json={"name": "zebra"})
    assert response.status_code == 201
    [zebra] = [label for label in response.json()["labels"] if label["name"] == "zebra"]
    assert zebra == {"name": "zebra", "kind": "target", "trained": False, "threshold": None}
    for image in IMAGES:
        view = client.get("/api/image", params={"id": image}).json()
        assert "zebra" not in view["known"] and "zebra" not in view["predictions"]
        assert view["untrained"] == ["zebra"]
    after = say(client, "s1.png", "zebra", True)["image"]
    assert after["known"] == {"zebra": True}
    assert after["predictions"] == pytest.approx(before["predictions"], abs=1e-6)  # not given to the model
    assert "zebra" not in [s["label"] for s in after["ask"]]
    listed = client.get("/api/images", params={"label": "zebra"}).json()
    assert [entry["id"] for entry in listed["images"]] == ["s1.png"]
    assert_error(client.post("/api/labels", json={"name": "Zebra"}), 409, "zebra")
    assert_error(client.post("/api/labels", json={"name": "digit_3"}), 409)
    for bad in ("", "  ", "a,b", "-cat", "x" * 101, "tab\there"):
        assert client.post("/api/labels", json={"name": bad}).status_code == 422, bad


def test_accepting_the_predictions_answers_every_unknown_trained_label(client: TestClient) -> None:
    before = client.get("/api/image", params={"id": "s0.png"}).json()
    result = client.post("/api/accept", json={"image": "s0.png", "annotator": "ann"}).json()
    assert {a["label"]: a["value"] for a in result["answers"]} == {
        label: label in before["predicted"] for label in before["predictions"]
    }
    assert {a["source"] for a in result["answers"]} == {"accepted"}
    assert result["image"]["predictions"] == {} and result["image"]["ask"] == []


# -------------------------------------------------------------------------------------------- images
def test_next_image_goes_to_the_least_certain_one(client: TestClient, predictor) -> None:
    wait_scored(client)
    library = client.app.state.service.library
    uncertainty = {}
    for image in IMAGES:
        [prediction] = predictor.condition(predictor.encode(library.path(image)), library.store.state(image))
        uncertainty[image] = float(binary_entropy(torch.tensor(list(prediction.probs.values()))).mean())
    expected = sorted(IMAGES, key=lambda image: -uncertainty[image])
    assert expected != IMAGES  # the test would pass by folder order otherwise
    listed = client.get("/api/images", params={"order": "uncertain"}).json()
    assert [entry["id"] for entry in listed["images"]] == expected
    assert [e["uncertainty"] for e in listed["images"]] == pytest.approx([uncertainty[i] for i in expected])
    nxt = client.get("/api/next", params={"order": "uncertain", "after": expected[0]}).json()
    assert nxt["id"] == expected[1]
    skipped = client.get(
        "/api/next", params=[("order", "uncertain"), ("skip", expected[0]), ("skip", expected[1])]
    )
    assert skipped.json()["id"] == expected[2]
    client.post("/api/accept", json={"image": expected[0], "annotator": "ann"})  # nothing unknown left
    assert client.get("/api/next", params={"order": "uncertain"}).json()["id"] == expected[1]
    folder = [client.get("/api/next", params={"after": image}).json()["id"] for image in IMAGES]
    assert folder == [*IMAGES[1:], IMAGES[0]]  # folder order wraps round


def test_the_next_image_is_encoded_before_it_is_asked_for(library: Library, predictor) -> None:
    """The background pass caches features only while there is room (it never evicts what the page shows);
    the image ``next`` names is encoded at once, so opening it costs no backbone pass."""
    app = create_library_app(library, predictor, cache_size=2)
    cache = app.state.service.cache
    with TestClient(app) as client:
        wait_scored(client)
        assert [image for image in IMAGES if cache.get(image) is not None] == IMAGES[:2]
        assert client.get("/api/next", params={"after": "s2.png"}).json()["id"] == "sub/s3.png"
        deadline = time.monotonic() + 30
        while cache.get("sub/s3.png") is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert cache.get("sub/s3.png") is not None


def test_images_not_predicted_yet_come_after_in_folder_order() -> None:
    images = ["a", "b", "c", "d"]
    summaries = {"c": Summary(0.9), "b": Summary(0.1), "d": Summary(error="broken")}
    assert by_uncertainty(images, summaries) == ["c", "b", "a", "d"]
    assert after_in_folder(["a", "c"], images, "b") == "c" and after_in_folder(["a"], images, "a") is None


def test_the_list_filters_and_counts_progress(client: TestClient) -> None:
    wait_scored(client)
    say(client, "sub/s4.png", "digit_1", True)
    say(client, "s2.png", "digit_1", False)
    everything = client.get("/api/images").json()
    assert (everything["total"], everything["answered"], everything["untouched"]) == (6, 3, 3)
    assert [e["id"] for e in everything["images"]] == IMAGES
    untouched = client.get("/api/images", params={"show": "untouched"}).json()
    assert [e["id"] for e in untouched["images"]] == ["s1.png", "sub/s3.png", "sub/s5.png"]
    answered = client.get("/api/images", params={"show": "answered", "limit": 1, "offset": 1}).json()
    assert answered["matched"] == 3 and [e["id"] for e in answered["images"]] == ["s2.png"]
    service = client.app.state.service
    predicted = [i for i in IMAGES if "digit_1" in service.summaries()[i].predicted and i != "s2.png"]
    with_label = client.get("/api/images", params={"label": "digit_1"}).json()
    assert [e["id"] for e in with_label["images"]] == sorted({*predicted, "sub/s4.png"}, key=IMAGES.index)
    assert_error(client.get("/api/images", params={"label": "nope"}), 404, "nope")


def test_image_ids_never_reach_outside_the_library(client: TestClient, library: Library) -> None:
    outside = [
        "../secret.png",
        "sub/../../secret.png",
        "sub/../s0.png",  # inside, but not an id the scan found
        str(library.root.parent / "secret.png"),
        str(library.root / "s0.png"),
        "/etc/passwd",
        "..\\secret.png",
        ".ctran/library.sqlite",
        "s0.txt",
        "s0.png\x00",
        "%2e%2e/secret.png",
        "..%2Fsecret.png",
        "",
    ]
    for image in outside:
        for response in (
            client.get("/api/file", params={"id": image}),
            client.get("/api/image", params={"id": image}),
            client.get("/api/history", params={"id": image}),
            client.post(
                "/api/answers", json={"image": image, "label": "digit_1", "value": True, "annotator": "a"}
            ),
            client.post("/api/accept", json={"image": image, "annotator": "a"}),
            client.post("/api/undo", json={"image": image, "annotator": "a"}),
        ):
            assert response.status_code == 404, (image, response.request.url, response.text)
            assert SECRET not in response.content
    for raw in ("..%2Fsecret.png", "%2E%2E%2Fsecret.png", "%252e%252e%252fsecret.png", "%2Fetc%2Fpasswd"):
        response = client.get(f"/api/file?id={raw}")  # URL-encoded as a client might send it
        assert response.status_code == 404 and SECRET not in response.content, raw
    assert client.get("/api/file", params={"id": "sub/s3.png"}).headers["content-type"] == "image/png"
    assert library.store.history() == [a for a in library.store.history() if a.image in IMAGES]


def test_an_unreadable_image_is_reported_never_a_server_error(client: TestClient, library: Library) -> None:
    (library.root / "broken.png").write_bytes(b"\x89PNG not really")
    library.rescan()
    for response in (
        client.get("/api/image", params={"id": "broken.png"}),
        client.get("/api/file", params={"id": "broken.png"}),
    ):
        assert_error(response, 422, "broken.png")
    (library.root / "s1.png").unlink()
    assert_error(client.get("/api/file", params={"id": "s1.png"}), 404, "no longer")


def test_mistakes_are_4xx_with_a_message(client: TestClient) -> None:
    assert_error(say_raw(client, label="cow"), 404, "cow", "add it first")
    assert_error(say_raw(client, value="maybe"), 422, "value")
    assert_error(say_raw(client, annotator=" "), 422, "annotator")
    assert_error(say_raw(client, annotator="x" * 101), 422, "annotator")
    assert_error(client.post("/api/undo", json={"annotator": ""}), 422, "annotator")
    assert_error(client.get("/api/images", params={"order": "random"}), 422, "order")
    assert_error(client.get("/api/image"), 422, "id")
    assert say_raw(client, value=None).status_code == 200  # null clears


def say_raw(client: TestClient, **fields) -> httpx.Response:
    body = {"image": "s1.png", "label": "digit_1", "value": True, "annotator": "ann", **fields}
    return client.post("/api/answers", json=body)


def test_the_page_is_self_contained_and_loopback_only(library: Library, predictor) -> None:
    app = create_library_app(library, predictor, allowed_hosts=LOOPBACK_HOSTS)
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        page = client.get("/")
        assert page.status_code == 200 and "default-src 'self'" in page.headers["content-security-policy"]
        assets = re.findall(r'(?:href|src)="(/static/[^"]+)"', page.text)
        assert sorted(assets) == ["/static/common.js", "/static/library.js", "/static/style.css"]
        for text in [page.text] + [client.get(asset).text for asset in assets]:
            assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/|@import", text, re.IGNORECASE)
        assert "skip the question" in page.text and "<kbd>u</kbd> undo" in page.text
        assert client.get("/healthz", headers={"host": "attacker.example"}).status_code == 400


# ------------------------------------------------------------------------------------------- command
def start(command: list[str], info: Path) -> tuple[subprocess.Popen, str]:
    """Start ``ctran annotate`` and wait until it answers; (process, url)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 60
    while not info.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert info.exists(), process.communicate(timeout=10)
    url = json.loads(info.read_text())["url"]
    while time.monotonic() < deadline:
        try:
            httpx.get(url + "healthz", timeout=5)
            return process, url
        except httpx.ConnectError:
            time.sleep(0.05)
    raise AssertionError("ctran annotate did not answer")


def test_answers_survive_a_killed_server_process(tmp_path: Path, digits_checkpoint: Path) -> None:
    root = make_library(tmp_path / "lib")
    (root / "sub" / "s3.txt").write_bytes(b"\xff\xfe\x00")  # an unreadable caption: reported, left alone
    info = tmp_path / "annotate.json"
    command = [
        sys.executable, "-m", "ctran", "annotate", str(root), "--checkpoint", str(digits_checkpoint),
        "--port", "0", "--json", str(info),
    ]  # fmt: skip
    process, url = start(command, info)
    try:
        assert json.loads(info.read_text())["host"] == "127.0.0.1"
        given = [("s1.png", "digit_1", True), ("s1.png", "tag_sun", False), ("sub/s4.png", "digit_4", True)]
        with httpx.Client(base_url=url, timeout=30) as http:
            for image, label, value in given:
                say(http, image, label, value)  # 200: stored
    finally:
        process.send_signal(signal.SIGKILL)  # no shutdown, no flush: what was stored must be on disk
        _, err = process.communicate(timeout=30)
    assert b"s3.txt" in err  # the unreadable caption was reported at open
    info.unlink()
    process, url = start(command, info)
    try:
        for image, label, value in given:
            assert httpx.get(url + "api/image", params={"id": image}).json()["known"][label] is value
        assert httpx.get(url + "api/image", params={"id": "s0.png"}).json()["known"] == {
            "digit_3": True,
            "tag_sun": False,
        }  # imported from its caption once, not twice
        history = httpx.get(url + "api/history", params={"id": "s0.png"}).json()["answers"]
        assert len(history) == 2
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err.decode()
    assert b"ctran annotate: listening on http://127.0.0.1:" in out


def test_annotate_command_mistakes_exit_2(tmp_path: Path, digits_checkpoint: Path, capsys) -> None:
    with pytest.raises(SystemExit) as shown:
        main(["annotate", "--help"])
    assert shown.value.code == 0 and "[ACTION] DIR" in capsys.readouterr().out
    folder = make_library(tmp_path / "lib")
    assert main(["annotate", str(folder)]) == 2
    assert "--checkpoint" in capsys.readouterr().err
    assert main(["annotate", "serve", str(tmp_path / "none"), "--checkpoint", str(digits_checkpoint)]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert main(["annotate", str(folder), "--checkpoint", str(digits_checkpoint), "--port", "-1"]) == 2
    with pytest.raises(SystemExit):
        main(["annotate", "publish", str(folder)])  # not an action
    assert "invalid choice: 'publish'" in capsys.readouterr().err
