"""An OpenAPI-driven fuzz of every REST route: Schemathesis generates requests, valid and invalid,
from the server's own OpenAPI schema; they go to the real server. No answer is a 5xx, and every
error has the documented body `{"error": {"code", "message"}}` with the status its code has in
the error table (`streaming.errors.HTTP_STATUS`, docs/protocol.md). Bounded: a fixed number of
examples per route and mode, derandomized, so the run is quick and repeatable."""

from __future__ import annotations

from typing import Literal

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck
from pydantic import Field

from app.server import create_app
from pipelines.passthrough import PassthroughPipeline
from streaming.errors import HTTP_STATUS, ErrorCode

from conftest import make_settings, serve_in_thread
from fake_pipelines import TintParams, TintPipeline

EXAMPLES = 25  # per route and generation mode


class InputOnlyParams(TintParams):
    mode: Literal["img2img"] = Field("img2img", json_schema_extra={"update": "reset"})


class InputOnlyTintPipeline(TintPipeline):
    """TintPipeline without txt2img: the sessions the fuzz makes (and never feeds) are never stepped,
    so none of them loads the server and admission control never has cause to refuse one."""

    params_model = InputOnlyParams


def pipelines() -> dict:
    return {"passthrough": PassthroughPipeline(), "tint": InputOnlyTintPipeline()}


# The schema the server publishes at /openapi.json, read from an app that is never started.
SCHEMA = schemathesis.openapi.from_dict(create_app(make_settings(), pipelines).openapi())
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations()]


@schemathesis.serializer("application/sdp")
def sdp_body(context: schemathesis.SerializationContext, value: object) -> bytes:
    """The WHIP/WHEP offer as its bytes (generated values of other types as their text)."""
    return value if isinstance(value, bytes) else str(value).encode("utf-8", errors="surrogatepass")


@pytest.fixture(scope="module")
def base_url():
    # Room for every session the fuzz makes (none is deleted); the fake pipelines' sessions cost nothing.
    with serve_in_thread(make_settings(max_sessions=10_000), pipelines) as url:
        yield url


def test_the_fuzz_covers_every_route():
    routes = {op.label for op in OPERATIONS}
    assert {"POST /v1/sessions", "PATCH /v1/sessions/{session_id}", "POST /v1/webrtc/offer", "POST /v1/whip",
            "POST /v1/whep/{session_id}", "DELETE /v1/whip/{resource_id}", "GET /health", "POST /v1/tokens"} <= routes


def can_be_invalid(operation) -> bool:
    """Whether a request to `operation` can break its schema: a path parameter is any string and a
    binary body (an image upload) any bytes, so a route taking nothing else has no invalid request."""
    bodies = [body for body in operation.body if body.definition.get("schema") != {"type": "string", "format": "binary"}]
    return bool(bodies or len(operation.query))


CASES = [(op, mode) for op in OPERATIONS for mode in schemathesis.GenerationMode if mode.is_positive or can_be_invalid(op)]


@pytest.mark.parametrize("operation, mode", CASES, ids=[f"{op.label} {mode.value}" for op, mode in CASES])
def test_no_route_answers_5xx_and_every_error_has_the_documented_shape(base_url, operation, mode):
    @hypothesis.settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                         suppress_health_check=list(HealthCheck))
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    def request(case) -> None:
        response = case.call(base_url=base_url, timeout=15)
        status = response.status_code
        assert status < 500, f"{case.method} {case.formatted_path} -> {status}: {response.text[:300]}"
        if status >= 400:
            body = response.json()
            assert set(body) == {"error"}, body
            error = body["error"]
            assert set(error) <= {"code", "message", "field"} and isinstance(error["message"], str) and error["message"], body
            assert HTTP_STATUS[ErrorCode(error["code"])] == status, body

    request()
