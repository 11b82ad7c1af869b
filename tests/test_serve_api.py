"""``ctran serve``'s HTTP API: every endpoint, every error, the upload guards, the cache and the command."""

from __future__ import annotations

import asyncio
import io
import json
import re
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

import ctran
from ctran.checkpoint import save_checkpoint
from ctran.cli import main
from ctran.data.digit_scenes import CONTEXT_NAMES, DIGIT_NAMES, TAG_NAMES, generate_split
from ctran.errors import CTranError
from ctran.serving import create_app
from ctran.serving.app import find_examples
from ctran.serving.cache import FeatureCache
from ctran.serving.errors import ApiError
from ctran.serving.security import LOOPBACK_HOSTS, host_name
from ctran.serving.uploads import FORM_OVERHEAD, display_name, read_upload

TARGETS = DIGIT_NAMES + TAG_NAMES
EXTRAS = CONTEXT_NAMES


def make_digit_checkpoint(folder: Path) -> Path:
    """A 1-layer C-Tran (random weights, seed 0) with the digit scenes' 16 targets and 4 extra labels."""
    torch.manual_seed(0)
    num_labels = len(TARGETS) + len(EXTRAS)
    model = ctran.build_model(num_labels, backbone="small_cnn", dim=32, layers=1, heads=2)
    config = {
        "kind": "ctran",
        "backbone": "small_cnn",
        "dim": 32,
        "layers": 1,
        "heads": 2,
        "num_labels": num_labels,
    }
    return save_checkpoint(folder / "digits.pt", model, config, TARGETS, EXTRAS, image_size=48)


def scene(index: int = 0) -> Image.Image:
    """A 48 x 48 digit scene from the test split."""
    return Image.fromarray(generate_split("test", 0, 4).images[index])


def png_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def noise(size: int = 64, seed: int = 0) -> Image.Image:
    """Random RGB pixels: a PNG that does not compress (a large file from a small image)."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_digit_checkpoint(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def predictor(checkpoint: Path) -> ctran.inference.Predictor:
    return ctran.load(checkpoint)


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("examples")
    for i in range(2):
        scene(i).save(folder / f"scene_{i}.png")
    (folder / "readme.txt").write_text("not an example")
    return folder


@pytest.fixture(scope="module")
def client(predictor, examples: Path) -> TestClient:
    return TestClient(create_app(predictor, examples=examples))


def upload(client: TestClient, data: bytes, name: str = "scene.png", field: str = "file") -> httpx.Response:
    return client.post("/api/images", files={field: (name, data, "image/png")})


def uploaded_id(client: TestClient, image: Image.Image | None = None) -> str:
    response = upload(client, png_bytes(image or scene()))
    assert response.status_code == 200, response.text
    return response.json()["id"]


def assert_error(response: httpx.Response, status: int, *fragments: str) -> None:
    """A JSON ``{"error": message}`` with this status whose message holds every fragment."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert list(body) == ["error"] and body["error"]
    for fragment in fragments:
        assert fragment in body["error"], body["error"]


# ------------------------------------------------------------------------------------------- service
def test_healthz_and_labels(client: TestClient) -> None:
    health = client.get("/healthz")
    assert health.status_code == 200
    assert health.json()["status"] == "ok" and health.json()["targets"] == 16 and health.json()["extras"] == 4
    labels = client.get("/api/labels").json()
    assert labels["targets"] == list(TARGETS) and labels["extras"] == list(EXTRAS)
    assert labels["thresholds"] == {name: 0.5 for name in TARGETS}  # no calibrated thresholds stored


def test_calibrated_thresholds_are_the_default_and_a_threshold_overrides_them(tiny_checkpoint: Path) -> None:
    model = ctran.load(tiny_checkpoint)  # stores thresholds 0.3, 0.5, 0.6, 0.7
    labels = TestClient(create_app(model)).get("/api/labels").json()
    assert list(labels["thresholds"].values()) == pytest.approx([0.3, 0.5, 0.6, 0.7])
    everything = TestClient(create_app(model, threshold=0.0))
    assert set(everything.get("/api/labels").json()["thresholds"].values()) == {0.0}
    result = upload(everything, png_bytes(scene())).json()
    assert sorted(result["predicted"]) == sorted(result["predictions"])  # all at or above 0
    with pytest.raises(CTranError, match="threshold"):
        create_app(model, threshold=1.5)


def test_page_and_its_assets_are_self_contained(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert client.head("/").status_code == 200
    assets = re.findall(r'(?:href|src)="(/static/[^"]+)"', page.text)
    assert sorted(assets) == ["/static/app.js", "/static/common.js", "/static/style.css"]
    for text in [page.text] + [client.get(asset).text for asset in assets]:
        assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/|@import|fonts\.", text, re.IGNORECASE)


def test_openapi_schema_documents_the_contract(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    for path, method in [
        ("/api/images", "post"),
        ("/api/images/{image_id}/condition", "post"),
        ("/api/images/{image_id}/attention/{label}", "get"),
        ("/api/images/{image_id}/suggest", "get"),
        ("/api/images/{image_id}", "delete"),
        ("/api/labels", "get"),
        ("/api/examples", "get"),
        ("/healthz", "get"),
    ]:
        assert method in paths[path], (path, method)
    form = paths["/api/images"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["required"] == ["file"]
    assert "413" in paths["/api/images"]["post"]["responses"]


# -------------------------------------------------------------------------------------------- images
def test_upload_returns_an_id_and_the_predictors_probabilities(client: TestClient, predictor) -> None:
    response = upload(client, png_bytes(scene()), name="../../etc/scene.png")
    assert response.status_code == 200
    body = response.json()
    assert body["name"] == "scene.png" and (body["width"], body["height"]) == (48, 48)
    assert list(body["predictions"]) == list(TARGETS) and body["known"] == {}
    expected = predictor.predict(scene())[0]
    assert body["predictions"] == pytest.approx(expected.probs, abs=1e-6)
    assert body["predicted"] == expected.predicted


def test_ids_are_random_and_not_guessable(client: TestClient) -> None:
    first, second = uploaded_id(client), uploaded_id(client)  # the same image twice
    assert first != second
    for image_id in (first, second):
        assert re.fullmatch(r"[A-Za-z0-9_-]{22,}", image_id)


def test_condition_matches_the_predictor_and_moves_the_other_labels(client: TestClient, predictor) -> None:
    image_id = uploaded_id(client)
    before = client.post(f"/api/images/{image_id}/condition", json={}).json()
    known, extra = {"digit_3": True, "tag_sun": False}, {"context_beach": True}
    after = client.post(f"/api/images/{image_id}/condition", json={"known": known, "extra": extra})
    assert after.status_code == 200
    body = after.json()
    assert body["known"] == {**known, **extra}
    assert "digit_3" not in body["predictions"] and "tag_sun" not in body["predictions"]
    expected = predictor.condition(predictor.encode(scene()), known, extra)[0]
    assert body["predictions"] == pytest.approx(expected.probs, abs=1e-6)
    moved = [
        name
        for name in body["predictions"]
        if abs(body["predictions"][name] - before["predictions"][name]) > 1e-4
    ]
    assert len(moved) >= 5, moved
    assert before["predictions"] == pytest.approx(upload(client, png_bytes(scene())).json()["predictions"])


def test_condition_says_how_far_the_known_labels_moved_the_others(client: TestClient, predictor) -> None:
    image_id = uploaded_id(client)
    nothing = client.post(f"/api/images/{image_id}/condition", json={}).json()
    assert nothing["moved_by_known"] is None
    assert upload(client, png_bytes(scene())).json()["moved_by_known"] is None
    known, extra = {"digit_3": True, "tag_sun": False}, {"context_beach": True}
    body = client.post(f"/api/images/{image_id}/condition", json={"known": known, "extra": extra}).json()
    moved = body["moved_by_known"]
    assert len(moved["overall"]) == 5
    for change in moved["overall"]:  # the difference of the two explicit predictions above
        label = change["label"]
        assert change["p_without"] == pytest.approx(nothing["predictions"][label], abs=1e-6)
        assert change["p_with"] == pytest.approx(body["predictions"][label], abs=1e-6)
        assert change["delta"] == pytest.approx(change["p_with"] - change["p_without"], abs=1e-6)
    assert abs(moved["overall"][0]["delta"]) > 1e-3  # nonzero: the states reached the model
    [expected] = predictor.influence(predictor.encode(scene()), known, extra)
    assert [c["label"] for c in moved["overall"]] == [c.label for c in expected.overall]
    assert list(moved["by_label"]) == ["digit_3", "tag_sun", "context_beach"]
    all_but_sun = client.post(
        f"/api/images/{image_id}/condition", json={"known": {"digit_3": True}, "extra": extra}
    ).json()
    for change in moved["by_label"]["tag_sun"]:  # leave-one-out: everything told but tag_sun
        assert change["p_without"] == pytest.approx(all_but_sun["predictions"][change["label"]], abs=1e-6)
        assert change["p_with"] == pytest.approx(body["predictions"][change["label"]], abs=1e-6)
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    assert "moved_by_known" in schema["Predictions"]["properties"] and "MovedByKnown" in schema


def test_condition_rejects_unknown_and_misplaced_labels(client: TestClient) -> None:
    image_id = uploaded_id(client)
    url = f"/api/images/{image_id}/condition"
    assert_error(client.post(url, json={"known": {"digit_33": True}}), 400, "digit_33", "closest: digit_3")
    assert_error(client.post(url, json={"extra": {"context_beech": True}}), 400, "closest: context_beach")
    assert_error(client.post(url, json={"known": {"context_beach": True}}), 400, "give it as extra")


def test_condition_validation_errors_use_the_error_shape(client: TestClient) -> None:
    url = f"/api/images/{uploaded_id(client)}/condition"
    headers = {"content-type": "application/json"}
    assert_error(client.post(url, content=b'{"known": ', headers=headers), 400, "malformed JSON")
    assert_error(client.post(url, json={"known": {"digit_3": "maybe"}}), 422, "known.digit_3", "boolean")
    assert_error(client.post(url, json={"known": ["digit_3"]}), 422, "known")
    assert_error(client.post(url, json={"knwon": {"digit_3": True}}), 422, "knwon")


def test_unknown_ids_are_404(client: TestClient) -> None:
    missing = "A" * 22
    assert_error(client.post(f"/api/images/{missing}/condition", json={}), 404, missing)
    assert_error(client.get(f"/api/images/{missing}/attention/digit_3"), 404, missing)
    assert_error(client.delete(f"/api/images/{missing}"), 404, missing)


def test_attention_heatmap_png(client: TestClient) -> None:
    image_id = uploaded_id(client)
    plain = client.get(f"/api/images/{image_id}/attention/digit_3")
    assert plain.status_code == 200 and plain.headers["content-type"] == "image/png"
    picture = Image.open(io.BytesIO(plain.content))
    assert picture.format == "PNG" and min(picture.size) >= 100
    given = client.get(
        f"/api/images/{image_id}/attention/digit_3", params={"known": "digit_5=1", "extra": ""}
    )
    assert given.status_code == 200 and given.content != plain.content
    assert (
        client.get(f"/api/images/{image_id}/attention/context_beach").status_code == 200
    )  # extra labels too
    assert_error(client.get(f"/api/images/{image_id}/attention/digit_33"), 400, "closest: digit_3")
    assert_error(
        client.get(f"/api/images/{image_id}/attention/digit_3", params={"known": "digit_5"}),
        400,
        "NAME=VALUE",
    )


def test_suggest_matches_the_predictor(client: TestClient, predictor) -> None:
    image_id = uploaded_id(client)
    features = predictor.encode(scene())
    known, extra = {"digit_3": True, "tag_sun": False}, {"context_beach": True}
    response = client.get(
        f"/api/images/{image_id}/suggest",
        params={"known": "digit_3=1,tag_sun=0", "extra": "context_beach=1", "k": 4},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    [expected] = predictor.suggest(features, known, extra, k=4)
    assert body["method"] == "information" and len(body["suggestions"]) == 4
    assert [s["label"] for s in body["suggestions"]] == [s.label for s in expected]
    assert [s["information"] for s in body["suggestions"]] == pytest.approx(
        [s.information for s in expected], abs=1e-6
    )
    assert not {"digit_3", "tag_sun"} & {s["label"] for s in body["suggestions"]}  # known: never asked
    cheap = client.get(f"/api/images/{image_id}/suggest", params={"method": "uncertainty", "k": 1}).json()
    [[most_uncertain]] = predictor.suggest(features, k=1, method="uncertainty")
    [shown] = cheap["suggestions"]
    assert shown["label"] == most_uncertain.label and shown["information"] is None
    assert shown["probability"] == pytest.approx(most_uncertain.probability, abs=1e-6)
    everything = ",".join(f"{name}=0" for name in TARGETS)
    done = client.get(f"/api/images/{image_id}/suggest", params={"known": everything}).json()
    assert done["suggestions"] == []


def test_suggest_candidates_bound_the_work(predictor) -> None:
    """The server's default pool (here 3) and a request's own ``candidates`` limit the labels scored."""
    client = TestClient(create_app(predictor, suggest_candidates=3))
    image_id = uploaded_id(client)
    features = predictor.encode(scene())
    default = client.get(f"/api/images/{image_id}/suggest", params={"k": 10}).json()["suggestions"]
    [expected] = predictor.suggest(features, k=10, candidates=3)
    assert [s["label"] for s in default] == [s.label for s in expected] and len(default) == 3
    asked = client.get(f"/api/images/{image_id}/suggest", params={"k": 10, "candidates": 5}).json()
    assert len(asked["suggestions"]) == 5
    assert_error(client.get(f"/api/images/{image_id}/suggest", params={"candidates": 0}), 422, "candidates")


def test_the_server_default_method_is_used_when_a_request_names_none(predictor) -> None:
    """``create_app(suggest_method=...)`` (``serve --suggest-method``) sets what a bare request, and the
    page's "Ask next", gets; a request's own ``method`` still wins."""
    client = TestClient(create_app(predictor, suggest_method="uncertainty"))
    image_id = uploaded_id(client)
    features = predictor.encode(scene())
    bare = client.get(f"/api/images/{image_id}/suggest", params={"k": 2}).json()
    [expected] = predictor.suggest(features, k=2, method="uncertainty")
    assert bare["method"] == "uncertainty"
    assert [s["label"] for s in bare["suggestions"]] == [s.label for s in expected]
    asked = client.get(f"/api/images/{image_id}/suggest", params={"method": "information"}).json()
    assert asked["method"] == "information" and asked["suggestions"][0]["information"] is not None
    with pytest.raises(CTranError, match="suggest_method must be one of"):
        create_app(predictor, suggest_method="random")


def test_suggest_errors(client: TestClient) -> None:
    image_id = uploaded_id(client)
    assert_error(client.get(f"/api/images/{image_id}/suggest", params={"k": 0}), 422, "k")
    assert_error(client.get(f"/api/images/{image_id}/suggest", params={"method": "random"}), 422, "method")
    assert_error(
        client.get(f"/api/images/{image_id}/suggest", params={"known": "digit_33=1"}), 400, "digit_33"
    )
    assert_error(client.get("/api/images/nope/suggest"), 404, "nope")


def test_one_way_checkpoint_reconditions_from_its_cache(tmp_path: Path) -> None:
    """Served one-way: the image is encoded once (per-layer image keys/values) and every condition gives
    the whole model's answer."""
    torch.manual_seed(0)
    num_labels = len(TARGETS) + len(EXTRAS)
    config = {
        "kind": "ctran",
        "backbone": "small_cnn",
        "dim": 32,
        "layers": 2,
        "heads": 2,
        "num_labels": num_labels,
        "attention": "one_way",
    }
    model = ctran.build_model(**{k: v for k, v in config.items() if k != "kind"})
    path = save_checkpoint(tmp_path / "one_way.pt", model, config, TARGETS, EXTRAS, image_size=48)
    predictor = ctran.load(path)
    assert predictor.model.attention == "one_way"
    encodes = []
    predictor.model.backbone.register_forward_hook(lambda *_: encodes.append(1))
    client = TestClient(create_app(predictor))
    image_id = uploaded_id(client)
    pixels = predictor.read(scene())[0][None]
    for known in ({}, {"digit_3": True}, {"digit_3": True, "tag_sun": False}):
        body = client.post(f"/api/images/{image_id}/condition", json={"known": known}).json()
        states = predictor.states(known, None, 1)
        with torch.no_grad():
            whole = predictor.model(pixels, states, return_attention=True).logits.sigmoid()[0]
        expected = {name: float(whole[i]) for i, name in enumerate(TARGETS) if name not in known}
        assert body["predictions"] == pytest.approx(expected, abs=1e-6)
    assert client.get(f"/api/images/{image_id}/suggest").status_code == 200
    assert len(encodes) == 1 + 3  # the upload's encode, then one per uncached whole-model reference above


def test_delete_forgets_the_image(client: TestClient) -> None:
    image_id = uploaded_id(client)
    assert client.delete(f"/api/images/{image_id}").status_code == 204
    assert_error(client.post(f"/api/images/{image_id}/condition", json={}), 404)


def test_least_recently_used_images_are_evicted(predictor) -> None:
    small = TestClient(create_app(predictor, cache_size=2))
    first, second = uploaded_id(small), uploaded_id(small)
    assert small.post(f"/api/images/{first}/condition", json={}).status_code == 200  # first is now recent
    third = uploaded_id(small)
    assert_error(small.post(f"/api/images/{second}/condition", json={}), 404, "evicted")
    for image_id in (first, third):
        assert small.post(f"/api/images/{image_id}/condition", json={}).status_code == 200
    assert small.get("/healthz").json()["cached_images"] == 2


def test_feature_cache_is_a_bounded_lru() -> None:
    cache: FeatureCache[str] = FeatureCache(2)
    a, b = cache.add("a"), cache.add("b")
    assert cache.get(a) == "a"
    c = cache.add("c")
    assert cache.get(b) is None and cache.get(a) == "a" and cache.get(c) == "c" and len(cache) == 2
    assert cache.pop(a) == "a" and cache.pop(a) is None
    with pytest.raises(ValueError, match="at least 1"):
        FeatureCache(0)


def test_concurrent_requests_get_the_same_answers_as_serial_ones(client: TestClient) -> None:
    image_id = uploaded_id(client)
    url = f"/api/images/{image_id}/condition"
    bodies = [{"known": {TARGETS[i % 16]: bool(i % 2)}, "extra": {EXTRAS[i % 4]: True}} for i in range(24)]
    serial = [client.post(url, json=body).json() for body in bodies]
    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(lambda body: client.post(url, json=body), bodies))
    assert [r.status_code for r in responses] == [200] * len(bodies)
    for response, expected in zip(responses, serial, strict=True):
        assert response.json()["predictions"] == pytest.approx(expected["predictions"], abs=1e-6)


# ------------------------------------------------------------------------------------------- uploads
def test_oversized_upload_is_413(predictor) -> None:
    limited = TestClient(create_app(predictor, max_upload_bytes=4000))
    big = png_bytes(noise(64))  # about 12 kB
    assert len(big) > 4000
    assert_error(upload(limited, big), 413, "larger than the limit")
    assert upload(limited, png_bytes(scene())).status_code == 200  # small enough


def test_size_limit_is_enforced_while_reading() -> None:
    """The body is refused once the limit is passed, without reading the rest; a declared size up front."""
    read = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal read
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n\r\n'
        for _ in range(10_000):
            read += 1
            yield b"x" * 1024

    headers = {"content-type": "multipart/form-data; boundary=b"}
    with pytest.raises(ApiError) as refused:
        asyncio.run(read_upload(headers, endless(), limit=10 * 1024))
    assert refused.value.status == 413 and read <= 12

    async def untouched() -> AsyncIterator[bytes]:
        raise AssertionError("the body should not be read")
        yield b""

    declared = {**headers, "content-length": str(10 * 1024 + FORM_OVERHEAD + 1)}
    with pytest.raises(ApiError) as refused:
        asyncio.run(read_upload(declared, untouched(), limit=10 * 1024))
    assert refused.value.status == 413


def test_too_many_pixels_is_413(predictor) -> None:
    limited = TestClient(create_app(predictor, max_pixels=1000))
    assert_error(upload(limited, png_bytes(scene())), 413, "48 x 48", "megapixels")


def test_pillow_decompression_bomb_checks_are_413(client: TestClient, monkeypatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 48 x 48 is over twice this: Pillow raises
    assert_error(upload(client, png_bytes(scene())), 413, "too many pixels")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)  # over this only: Pillow warns
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        assert_error(upload(client, png_bytes(scene())), 413, "too many pixels")


def test_content_decides_what_is_an_image(client: TestClient, tmp_path: Path) -> None:
    assert_error(upload(client, b"just some text, not pixels", name="photo.png"), 415, "not an image")
    assert_error(upload(client, png_bytes(scene().convert("RGB"), "PPM")), 415, "PNG, JPEG")  # not accepted
    jpeg = upload(client, png_bytes(scene().convert("RGB"), "JPEG"), name="no_extension")
    assert jpeg.status_code == 200 and jpeg.json()["name"] == "no_extension"
    whole = png_bytes(noise(64))
    assert_error(upload(client, whole[: len(whole) * 2 // 3]), 400, "cannot decode")


def test_malformed_forms(client: TestClient) -> None:
    assert_error(client.post("/api/images", json={"file": "x"}), 415, "multipart/form-data")
    assert_error(upload(client, png_bytes(scene()), field="image"), 400, "no 'file' field")
    assert_error(upload(client, b""), 400, "empty")
    two = [
        ("file", ("a.png", png_bytes(scene()), "image/png")),
        ("file", ("b.png", png_bytes(scene()), "image/png")),
    ]
    assert_error(client.post("/api/images", files=two), 400, "one image per request")
    cut = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\nabc'
    headers = {"content-type": "multipart/form-data; boundary=b"}
    assert_error(client.post("/api/images", content=cut, headers=headers), 400, "closing boundary")


def test_display_names_are_never_paths() -> None:
    assert display_name("C:\\Users\\me\\cat.jpg") == "cat.jpg"
    assert display_name("../../etc/passwd") == "passwd"
    assert display_name("bad\x00name\n.png") == "badname.png"
    assert display_name("") == "upload"


# ------------------------------------------------------------------------------------------- examples
def test_examples_are_listed_served_and_encoded(client: TestClient, examples: Path, predictor) -> None:
    assert client.get("/api/examples").json() == {"examples": ["scene_0.png", "scene_1.png"]}
    served = client.get("/api/examples/scene_1.png")
    assert served.status_code == 200 and served.content == (examples / "scene_1.png").read_bytes()
    used = client.post("/api/examples/scene_1.png")
    assert used.status_code == 200 and used.json()["name"] == "scene_1.png"
    uploaded = upload(client, (examples / "scene_1.png").read_bytes()).json()
    assert used.json()["predictions"] == pytest.approx(uploaded["predictions"])
    assert_error(client.post("/api/examples/readme.txt"), 404, "no example named")
    assert_error(client.get("/api/examples/..%2F..%2Fetc%2Fpasswd"), 404)
    assert TestClient(create_app(predictor)).get("/api/examples").json() == {"examples": []}


def test_examples_folder_mistakes_are_clear(tmp_path: Path) -> None:
    with pytest.raises(CTranError, match="examples folder not found"):
        find_examples(tmp_path / "missing")
    with pytest.raises(CTranError, match="no image files"):
        find_examples(tmp_path)


# ------------------------------------------------------------------------------------------- http
def test_routing_errors_use_the_error_shape(client: TestClient) -> None:
    assert_error(client.get("/nothing/here"), 404, "/nothing/here")
    assert_error(client.put("/api/labels"), 405)


def test_only_loopback_host_names_are_answered(predictor) -> None:
    app = create_app(predictor, allowed_hosts=LOOPBACK_HOSTS)
    local = TestClient(app, base_url="http://127.0.0.1:8000")
    assert local.get("/healthz").status_code == 200
    assert local.get("/healthz", headers={"host": "localhost:8000"}).status_code == 200
    assert local.get("/healthz", headers={"host": "[::1]:8000"}).status_code == 200
    assert_error(local.get("/healthz", headers={"host": "attacker.example:8000"}), 400, "attacker.example")
    assert host_name("[::1]:80") == "::1" and host_name("localhost") == "localhost"


# ------------------------------------------------------------------------------------------- command
def test_serve_command_mistakes_exit_2(checkpoint: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as shown:
        main(["serve", "--help"])
    assert shown.value.code == 0 and "--examples" in capsys.readouterr().out
    assert main(["serve", "--checkpoint", str(tmp_path / "none.pt")]) == 2
    assert main(["serve", "--checkpoint", str(checkpoint), "--examples", str(tmp_path / "no")]) == 2
    assert "examples folder not found" in capsys.readouterr().err
    assert main(["serve", "--checkpoint", str(checkpoint), "--port", "70000"]) == 2
    assert main(["serve", "--checkpoint", str(checkpoint), "--suggest-candidates", "-1"]) == 2
    assert "--suggest-candidates must be 0 (all) or positive" in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--checkpoint", str(checkpoint), "--port", str(port)]) == 2
    assert "choose another --port" in capsys.readouterr().err


def test_serve_command_listens_on_loopback_and_stops_on_ctrl_c(checkpoint: Path, tmp_path: Path) -> None:
    info_path = tmp_path / "serve.json"
    command = [sys.executable, "-m", "ctran", "serve", "--checkpoint", str(checkpoint), "--port", "0"]
    process = subprocess.Popen(
        [*command, "--json", str(info_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 60
        while not info_path.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        info = json.loads(info_path.read_text())
        assert info["host"] == "127.0.0.1" and info["url"] == f"http://127.0.0.1:{info['port']}/"
        for _ in range(100):  # the file is written just before uvicorn starts accepting
            try:
                health = httpx.get(info["url"] + "healthz", timeout=5)
                break
            except httpx.ConnectError:
                time.sleep(0.05)
        assert health.status_code == 200 and health.json()["targets"] == 16
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err.decode()
    assert b"listening on http://127.0.0.1:" in out


def test_condition_accepts_the_command_lines_spellings_of_yes_and_no(client: TestClient) -> None:
    """The JSON API reads label values as ``--known`` does: "yes", "0", "+", 1 ... (and refuses the rest)."""
    url = f"/api/images/{uploaded_id(client)}/condition"
    canonical = client.post(
        url, json={"known": {"digit_3": True, "tag_sun": False}, "extra": {"context_beach": True}}
    )
    for yes, no in (("yes", "no"), ("1", "0"), (1, 0), ("+", "-"), ("TRUE", "False"), ("pos", "neg")):
        spelled = client.post(
            url, json={"known": {"digit_3": yes, "tag_sun": no}, "extra": {"context_beach": yes}}
        )
        assert spelled.status_code == 200, (yes, no, spelled.text)
        assert spelled.json() == canonical.json()
    for bad in ("maybe", 2, 0.5, None, "on"):
        assert_error(client.post(url, json={"known": {"digit_3": bad}}), 422, "known.digit_3", "boolean")
