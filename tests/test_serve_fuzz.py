"""Fuzz the live server from its own OpenAPI schema (schemathesis): no input may cause a 5xx."""

from __future__ import annotations

from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402

import ctran  # noqa: E402
from ctran.serving.app import create_app  # noqa: E402
from ctran.serving.server import BackgroundServer  # noqa: E402
from test_serve_api import make_digit_checkpoint  # noqa: E402


def test_no_input_causes_a_server_error(tmp_path: Path) -> None:
    checkpoint = make_digit_checkpoint(tmp_path)
    with BackgroundServer(create_app(ctran.load(checkpoint))) as server:
        schema = schemathesis.openapi.from_url(server.url + "openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 6
        for operation in operations:

            @given(case=operation.as_strategy())
            @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
            def call(case) -> None:
                response = case.call()
                where = f"{case.method} {case.formatted_path}"
                assert response.status_code < 500, f"{where}: {response.status_code} {response.text[:300]}"
                if response.status_code >= 400:
                    assert "error" in response.json(), where  # every error is {"error": message}

            call()
