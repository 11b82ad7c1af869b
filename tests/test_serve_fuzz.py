"""Fuzz the live server from its own OpenAPI schema (schemathesis): no input may cause a 5xx.

Path parameters that name server state (an uploaded image's id, a label, an example) are mostly replaced by
real ones, so the fuzzed queries and bodies reach the endpoints' own code instead of stopping at a 404.
"""

from __future__ import annotations

import io
import itertools
from collections import Counter
from pathlib import Path

import httpx
import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402

import ctran  # noqa: E402
from ctran.serving.app import create_app  # noqa: E402
from ctran.serving.server import BackgroundServer  # noqa: E402
from test_serve_api import EXTRAS, TARGETS, make_digit_checkpoint, scene  # noqa: E402


def _upload(url: str) -> str:
    buffer = io.BytesIO()
    scene(0).save(buffer, format="PNG")
    response = httpx.post(url + "api/images", files={"file": ("scene.png", buffer.getvalue(), "image/png")})
    response.raise_for_status()
    return response.json()["id"]


def test_no_input_causes_a_server_error(tmp_path: Path) -> None:
    checkpoint = make_digit_checkpoint(tmp_path)
    examples = tmp_path / "examples"
    examples.mkdir()
    scene(1).save(examples / "scene_1.png")
    labels = itertools.cycle([*TARGETS, *EXTRAS])
    reached: Counter[str] = Counter()
    with BackgroundServer(create_app(ctran.load(checkpoint), examples=examples)) as server:
        schema = schemathesis.openapi.from_url(server.url + "openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 6
        turn = itertools.count()
        for operation in operations:

            @given(case=operation.as_strategy())
            @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
            def call(case) -> None:
                params = case.path_parameters or {}
                if next(turn) % 4:  # three cases in four use real server state, the fourth stays random
                    if "image_id" in params:
                        params["image_id"] = _upload(server.url)  # fresh: DELETE may have dropped the last
                    if "label" in params:
                        params["label"] = next(labels)
                    if "name" in params:
                        params["name"] = "scene_1.png"
                response = case.call()
                where = f"{case.method} {case.formatted_path}"
                assert response.status_code < 500, f"{where}: {response.status_code} {response.text[:300]}"
                if response.status_code >= 400:
                    assert "error" in response.json(), where  # every error is {"error": message}
                else:
                    reached[f"{case.method} {case.path}"] += 1

            call()
    unreached = [
        f"{op.method.upper()} {op.path}" for op in operations if not reached[f"{op.method.upper()} {op.path}"]
    ]
    assert not unreached, f"no fuzzed request got past validation for: {unreached}"


def test_no_input_causes_a_server_error_in_a_library(tmp_path: Path, digits_checkpoint: Path) -> None:
    """``ctran annotate``'s API: fuzzed ids, labels, answers, filters and names are 4xx at worst; three
    cases in four name a real image and label, so the requests reach the answer store and the model."""
    from ctran.annotation.library import Library
    from ctran.serving.library_app import create_library_app
    from test_annotate import IMAGES, make_library

    library = Library(make_library(tmp_path / "lib"))
    (library.root / "broken.png").write_bytes(b"\x89PNG not really")  # an unreadable image in the library
    library.rescan()
    images = itertools.cycle([*IMAGES, "broken.png"])
    labels = itertools.cycle([*TARGETS, *EXTRAS])
    reached: Counter[str] = Counter()
    try:
        app = create_library_app(library, ctran.load(digits_checkpoint))
        with BackgroundServer(app) as server:
            schema = schemathesis.openapi.from_url(server.url + "openapi.json")
            operations = [result.ok() for result in schema.get_all_operations()]
            assert len(operations) >= 10
            turn = itertools.count()
            for operation in operations:

                @given(case=operation.as_strategy())
                @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
                def call(case) -> None:
                    if next(turn) % 4:
                        for fields in (case.query, case.body):
                            if not isinstance(fields, dict):
                                continue
                            for key in ("id", "image", "after"):
                                if key in fields:
                                    fields[key] = next(images)
                            if "label" in fields:
                                fields["label"] = next(labels)
                            if isinstance(fields.get("annotator"), str) and not fields["annotator"].strip():
                                fields["annotator"] = "fuzz"
                    response = case.call()
                    where = f"{case.method} {case.formatted_path} {case.query} {case.body}"
                    assert response.status_code < 500, (
                        f"{where}: {response.status_code} {response.text[:300]}"
                    )
                    if response.status_code >= 400:
                        assert "error" in response.json(), where  # every error is {"error": message}
                    else:
                        reached[f"{case.method} {case.path}"] += 1

                call()
    finally:
        library.close()
    unreached = [
        f"{op.method.upper()} {op.path}" for op in operations if not reached[f"{op.method.upper()} {op.path}"]
    ]
    assert not unreached, f"no fuzzed request got past validation for: {unreached}"
