"""REST routes, attaching a stream to a REST session, idle timeouts, readiness."""

from __future__ import annotations

import asyncio
import threading

import httpx
import numpy as np
import pytest

from pipelines.passthrough import PassthroughPipeline
from streaming.client import StreamClient

from conftest import make_settings, serve_in_thread
from fake_pipelines import TintPipeline, prompt_color
from media import moving_picture

PIPELINES = {"tint": TintPipeline(), "passthrough": PassthroughPipeline()}


@pytest.fixture(scope="module")
def base_url():
    with serve_in_thread(make_settings(session_idle_timeout_s=1.0), lambda: PIPELINES) as url:
        yield url


@pytest.fixture
async def http(base_url):
    async with httpx.AsyncClient(base_url=base_url) as client:
        yield client


async def test_session_lifecycle_over_rest(http):
    created = await http.post("/v1/sessions", json={"pipeline": "tint", "params": {"prompt": "owl"},
                                                    "slo": {"target_fps": 15, "latency_budget_ms": 200}})
    assert created.status_code == 201
    session = created.json()
    assert session["pipeline"] == "tint" and session["params"]["prompt"] == "owl" and session["slo"]["target_fps"] == 15
    assert session["streaming"] is False
    sid = session["id"]

    assert sid in [s["id"] for s in (await http.get("/v1/sessions")).json()]
    assert (await http.get(f"/v1/sessions/{sid}")).json()["params"]["prompt"] == "owl"

    ack = (await http.patch(f"/v1/sessions/{sid}", json={"params": {"prompt": "cat"}, "slo": {"target_fps": 24}})).json()
    assert ack["applied"] == ["prompt"] and ack["update_class"] == "hot" and ack["params"]["prompt"] == "cat"
    assert ack["slo"] == {"target_fps": 24.0, "latency_budget_ms": 500.0}

    refused = await http.patch(f"/v1/sessions/{sid}", json={"params": {"strength": 2}})
    assert refused.status_code == 400
    assert refused.json()["error"] == {"code": "bad_params", "message": refused.json()["error"]["message"], "field": "strength"}

    stats = (await http.get(f"/v1/sessions/{sid}/stats")).json()
    assert stats["session_id"] == sid and stats["frames_in"] == 0

    assert (await http.delete(f"/v1/sessions/{sid}")).status_code == 204
    assert (await http.get(f"/v1/sessions/{sid}")).json()["error"]["code"] == "unknown_session"
    assert (await http.delete(f"/v1/sessions/{sid}")).status_code == 404


@pytest.mark.parametrize("body, status, code", [
    ({"pipeline": "nope"}, 400, "unknown_pipeline"),
    ({"pipeline": "tint", "params": {"width": 9999}}, 400, "bad_params"),
    ({"pipeline": "tint", "colour": "red"}, 422, "bad_message"),
    ({"pipeline": "tint", "slo": {"target_fps": 0}}, 422, "bad_message"),
])
async def test_bad_session_requests_get_a_json_error(http, body, status, code):
    response = await http.post("/v1/sessions", json=body)
    assert response.status_code == status and response.json()["error"]["code"] == code


async def test_pipelines_publish_their_schema_with_update_classes(http):
    listing = (await http.get("/v1/pipelines")).json()
    assert listing["default"] == "tint"
    tint = next(p for p in listing["pipelines"] if p["name"] == "tint")
    props = tint["params_schema"]["properties"]
    assert props["prompt"]["update"] == "hot" and props["width"]["update"] == "reset" and props["strength"]["maximum"] == 1
    assert tint["defaults"]["strength"] == 1.0 and tint["kind"] == "video-to-video"


async def test_openapi_documents_the_rest_routes(http):
    paths = (await http.get("/openapi.json")).json()["paths"]
    for route in ("/v1/sessions", "/v1/sessions/{session_id}", "/v1/sessions/{session_id}/stats", "/v1/pipelines",
                  "/health", "/metrics", "/v1/tokens"):
        assert route in paths, route
    assert {"post", "get"} <= set(paths["/v1/sessions"]) and {"get", "patch", "delete"} <= set(paths["/v1/sessions/{session_id}"])
    assert (await http.get("/docs")).status_code == 200


async def test_demo_page_and_its_files_are_served(http):
    page = await http.get("/")
    assert page.status_code == 200 and "demo.js" in page.text
    for name in ("demo.js", "controls.js", "protocol.js", "style.css", "favicon.svg"):
        assert (await http.get(f"/{name}")).status_code == 200, name


async def test_a_stream_attaches_to_a_rest_session_and_rest_updates_reach_it(base_url, http):
    sid = (await http.post("/v1/sessions", json={"pipeline": "tint", "params": {"prompt": "moth"}})).json()["id"]
    async with await StreamClient.connect(base_url) as client:
        started = await client.start(session_id=sid, output_format="rgb24")
        assert started["session_id"] == sid and started["params"]["prompt"] == "moth"
        assert (await http.get(f"/v1/sessions/{sid}")).json()["streaming"] is True

        await http.patch(f"/v1/sessions/{sid}", json={"params": {"prompt": "lamp"}})
        await client.send_frame(moving_picture(0, 32, 32), format="rgb24")
        frame = await client.receive_frame()
        assert np.allclose(frame.image.reshape(-1, 3).mean(0), prompt_color("lamp"), atol=1)

        async with await StreamClient.connect(base_url) as second:
            with pytest.raises(Exception) as err:
                await second.start(session_id=sid)
            assert getattr(err.value, "code", None) == "session_attached"

        await http.delete(f"/v1/sessions/{sid}")
        stopped = await asyncio.wait_for(client.stopped, 5)
        assert stopped["reason"] == "deleted"


async def test_idle_sessions_time_out_and_free_what_they_held(base_url, http):
    pipeline = PIPELINES["tint"]
    sid = (await http.post("/v1/sessions", json={"pipeline": "tint"})).json()["id"]
    async with await StreamClient.connect(base_url) as client:
        streamed = await client.start("tint")
        stopped = await asyncio.wait_for(client.stopped, 5)  # sends nothing: idle after 1 s
        assert stopped["reason"] == "idle_timeout" and "1 s" in stopped["message"]
    assert (await http.get(f"/v1/sessions/{sid}")).status_code == 404
    ids = {s.stream_id for s in pipeline.live_states}
    assert sid not in ids and streamed["session_id"] not in ids


async def test_txt2img_stream_is_not_idle_while_connected(base_url):
    async with await StreamClient.connect(base_url) as client:
        await client.start("tint", {"mode": "txt2img"}, slo={"target_fps": 10})
        await asyncio.sleep(1.6)
        assert not client.stopped.done()
        assert client.frames.qsize() >= 8


async def test_health_says_loading_until_the_models_are_warm(server_factory):
    release = threading.Event()

    def slow_loader():
        release.wait(10)
        return {"passthrough": PassthroughPipeline()}

    url = server_factory(slow_loader, wait_loaded=False)
    async with httpx.AsyncClient(base_url=url) as http:
        loading = await http.get("/health")
        assert loading.status_code == 503 and loading.json()["status"] == "loading"
        refused = await http.post("/v1/sessions", json={})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "not_ready"
        release.set()
        for _ in range(100):
            if (await http.get("/health")).status_code == 200:
                break
            await asyncio.sleep(0.05)
        assert (await http.get("/health")).json()["status"] == "ready"


async def test_health_reports_a_failed_load(server_factory):
    def broken_loader():
        raise RuntimeError("weights not found")

    url = server_factory(broken_loader)
    async with httpx.AsyncClient(base_url=url) as http:
        health = await http.get("/health")
    assert health.status_code == 503 and health.json()["status"] == "failed" and "weights not found" in health.json()["error"]
