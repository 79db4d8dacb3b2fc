"""Bad input of every kind gets an `error` with a code; the session survives and other sessions
are untouched. A neighbour stream runs through the whole module and must never notice."""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import pytest

from pipelines.passthrough import PassthroughPipeline
from streaming.client import StreamClient, StreamClientError
from streaming.codec import encode_image
from streaming.protocol import MediaFormat, MediaHeader, MediaKind, pack_media

from conftest import make_settings, serve_in_thread
from fake_pipelines import TintPipeline
from media import moving_picture

LIMITS = {"max_frame_width": 256, "max_frame_height": 256, "max_message_bytes": 300_000, "max_control_bytes": 2048,
              "allowed_formats": ["jpeg", "rgb24"], "max_sessions": 4}


@pytest.fixture(scope="module")
def base_url():
    pipelines = {"passthrough": PassthroughPipeline(), "tint": TintPipeline()}
    with serve_in_thread(make_settings(**LIMITS), lambda: pipelines) as url:
        yield url


@pytest.fixture
async def neighbour(base_url):
    """Another session streaming all along: its frames must keep coming back, its own ids intact."""
    client = await StreamClient.connect(base_url)
    await client.start("tint", {"prompt": "neighbour"}, output_format="rgb24")
    stop = asyncio.Event()
    received: list[int] = []

    async def stream():
        for i in range(10_000):
            if stop.is_set():
                return
            await client.send_frame(moving_picture(i, 32, 32), frame_id=i, format="rgb24")
            received.append((await client.receive_frame(10)).frame_id)

    task = asyncio.create_task(stream())
    yield received
    seen = len(received)
    for _ in range(200):  # still served after whatever the test did
        if len(received) >= seen + 2:
            break
        await asyncio.sleep(0.025)
    stop.set()
    await task
    assert len(received) >= seen + 2 and received == sorted(received)
    assert client.errors.empty(), "the neighbour session saw an error"
    await client.close()


def header(fmt=MediaFormat.JPEG, frame_id=5, width=32, height=32, kind=MediaKind.VIDEO) -> MediaHeader:
    return MediaHeader(kind, fmt, frame_id, 1.0, width, height)


JPEG_32 = encode_image(moving_picture(0, 32, 32), "jpeg")

# (what is sent, the error code expected)
BAD_MEDIA = {
    "short binary": (b"LC\x01\x01", "bad_header"),
    "wrong magic": (b"XX" + header().pack()[2:] + JPEG_32, "bad_header"),
    "future version": (b"LC\x09" + header().pack()[3:] + JPEG_32, "unsupported_version"),
    "unknown kind": (b"LC\x01\x09" + header().pack()[4:] + JPEG_32, "bad_header"),
    "unknown format": (b"LC\x01\x01\x42" + header().pack()[5:] + JPEG_32, "unsupported_format"),
    "format not allowed": (pack_media(header(MediaFormat.WEBP), encode_image(moving_picture(0, 32, 32), "webp")), "unsupported_format"),
    "audio format on video": (pack_media(header(MediaFormat.PCM_S16LE), b"\0\0"), "unsupported_format"),
    "rgb24 length mismatch": (pack_media(header(MediaFormat.RGB24), bytes(32 * 32 * 3 - 1)), "bad_header"),
    "empty size": (pack_media(header(width=0), JPEG_32), "bad_header"),
    "resolution over the limit": (pack_media(header(width=4096, height=64), JPEG_32), "frame_too_large"),
    "undecodable jpeg": (pack_media(header(), b"\xff\xd8 certainly not a jpeg"), "bad_image"),
    "truncated jpeg": (pack_media(header(), JPEG_32[:60]), "bad_image"),
    "picture size differs from header": (pack_media(header(width=40), JPEG_32), "bad_image"),
    "empty payload": (pack_media(header(), b""), "bad_image"),
    "message over the limit": (pack_media(header(), bytes(400_000)), "message_too_large"),
    "audio with zero channels": (pack_media(header(MediaFormat.PCM_S16LE, kind=MediaKind.AUDIO, width=48000, height=0), b"\0\0"), "bad_header"),
    "audio with half a sample": (pack_media(header(MediaFormat.PCM_S16LE, kind=MediaKind.AUDIO, width=48000, height=1), b"\0\0\0"), "bad_header"),
    "audio as jpeg": (pack_media(header(MediaFormat.JPEG, kind=MediaKind.AUDIO, width=48000, height=1), b"\0\0"), "unsupported_format"),
}

def nested(depth: int) -> list:
    """A JSON array nested `depth` levels deep."""
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


BAD_CONTROL = {
    "malformed json": ("{'type': 'update'", "bad_json"),
    "json that is not an object": ('"start"', "bad_json"),
    "unknown message type": ('{"type": "teleport", "request_id": "q"}', "unknown_type"),
    "missing request id": ('{"type": "update", "params": {"prompt": "x"}}', "bad_message"),
    "wrongly typed field": ('{"type": "update", "request_id": "q", "params": "prompt=x"}', "bad_message"),
    "second start": ('{"type": "start", "pipeline": "tint", "request_id": "q"}', "already_started"),
    "control message over the limit": (json.dumps({"type": "update", "request_id": "q", "params": {"prompt": "x" * 3000}}), "message_too_large"),
    "parameter out of bounds": ('{"type": "update", "request_id": "q", "params": {"strength": 1.5}}', "bad_params"),
    "unknown parameter": ('{"type": "update", "request_id": "q", "params": {"sharpness": 3}}', "bad_params"),
    "wrongly typed parameter": ('{"type": "update", "request_id": "q", "params": {"width": "wide"}}', "bad_params"),
    # Under the size limit, but deeper than Python's JSON reader recurses (it used to answer `internal`).
    "deeply nested json": ('{"type": "start", "request_id": "q", "params": {"p": ' + "[" * 900 + "]" * 900 + "}}", "bad_json"),
    "nested one level deeper than the limit": (json.dumps({"type": "update", "request_id": "q", "params": {"prompt": nested(32)}}), "bad_json"),
}


async def assert_still_serving(client: StreamClient, frame_id: int) -> None:
    await client.send_frame(moving_picture(frame_id, 32, 32), frame_id=frame_id, format="rgb24")
    while (frame := await client.receive_frame(10)).frame_id != frame_id:
        pass
    assert frame.width == 32


@pytest.mark.parametrize("case", BAD_MEDIA)
async def test_bad_media_gets_its_error_and_the_session_survives(base_url, neighbour, case):
    message, code = BAD_MEDIA[case]
    async with await StreamClient.connect(base_url) as client:
        await client.start("tint", {"prompt": "victim"}, output_format="rgb24")
        await client.send_raw(message)
        error = await client.next_error()
        assert error.code == code, error
        assert error.message
        # Once the header has been read, the error names the frame it is about.
        assert error.frame_id == (5 if code in ("bad_image", "frame_too_large") or "mismatch" in case
                                  or case == "format not allowed" else error.frame_id)
        await assert_still_serving(client, 77)


@pytest.mark.parametrize("case", BAD_CONTROL)
async def test_bad_control_gets_its_error_and_the_session_survives(base_url, neighbour, case):
    message, code = BAD_CONTROL[case]
    async with await StreamClient.connect(base_url) as client:
        await client.start("tint", {"prompt": "victim", "strength": 1.0}, output_format="rgb24")
        await client.send_raw(message)
        error = await client.next_error()
        assert error.code == code, error
        if code == "bad_params":
            assert error.field in ("strength", "sharpness", "width")
        if '"request_id": "q"' in message and code not in ("message_too_large", "bad_json"):  # too large or deep: never parsed
            assert error.body.get("request_id") == "q"
        await assert_still_serving(client, 78)
        assert (await client.update({}))["params"]["strength"] == 1.0  # a refused update changed nothing


@pytest.mark.parametrize("start, code", [
    ({"pipeline": "no-such-pipeline"}, "unknown_pipeline"),
    ({"pipeline": "tint", "params": {"strength": -1}}, "bad_params"),
    ({"pipeline": "tint", "version": 99}, "unsupported_version"),
    ({"session_id": "0000"}, "unknown_session"),
])
async def test_a_bad_start_is_refused_and_the_connection_can_start_again(base_url, start, code):
    async with await StreamClient.connect(base_url) as client:
        with pytest.raises(StreamClientError) as err:
            await client.request({"type": "start", **start}, timeout=10)
        assert err.value.code == code
        await client.start("tint", output_format="rgb24")
        await assert_still_serving(client, 1)


async def test_media_and_updates_before_start_are_refused(base_url):
    async with await StreamClient.connect(base_url) as client:
        await client.send_frame(moving_picture(0, 32, 32), frame_id=3)
        error = await client.next_error()
        assert error.code == "not_started" and error.frame_id == 3
        with pytest.raises(StreamClientError) as err:
            await client.update({"prompt": "x"})
        assert err.value.code == "not_started"


async def test_admission_control_says_busy_instead_of_slowing_everyone(base_url, neighbour):
    async with httpx.AsyncClient(base_url=base_url) as http:
        while len((await http.get("/v1/sessions")).json()) > 1:  # only the neighbour left from earlier tests
            await asyncio.sleep(0.05)
        clients = [await StreamClient.connect(base_url) for _ in range(4)]
        try:
            for client in clients[:3]:
                await client.start("passthrough")
            with pytest.raises(StreamClientError) as err:
                await clients[3].start("passthrough")
            assert err.value.code == "busy" and "4" in err.value.message
            response = await http.post("/v1/sessions", json={"pipeline": "passthrough"})
            assert response.status_code == 503 and response.json()["error"]["code"] == "busy"
            assert "latentcast_sessions_refused_total 2.0" in (await http.get("/metrics")).text.replace('{reason="busy"}', "")
            await clients[0].close()
            await asyncio.sleep(0.1)
            await clients[3].start("passthrough")  # a freed slot admits the next session
        finally:
            for client in clients:
                await client.close()


async def test_the_server_is_healthy_after_all_that(base_url):
    async with httpx.AsyncClient(base_url=base_url) as http:
        assert (await http.get("/health")).json()["status"] == "ready"
    async with await StreamClient.connect(base_url) as client:
        await client.start("passthrough", output_format="rgb24")
        image = moving_picture(3, 32, 32)
        await client.send_frame(image, frame_id=9, format="rgb24")
        assert np.array_equal((await client.receive_frame()).image, image)


async def test_json_nested_up_to_the_limit_is_read(base_url):
    """The depth limit (32: the message object and what it holds) refuses only what is deeper."""
    async with await StreamClient.connect(base_url) as client:
        await client.start("tint", output_format="rgb24")
        await client.send_raw(json.dumps({"type": "update", "request_id": "d", "params": {"prompt": nested(30)}}))
        error = await client.next_error()
        assert error.code == "bad_params" and error.field == "prompt"  # read and parsed: the parameter's type is wrong


def assert_error_body(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code and body["error"]["message"], body
    return body["error"]


async def test_http_errors_of_the_framework_have_the_documented_shape(base_url):
    async with httpx.AsyncClient(base_url=base_url) as http:
        assert_error_body(await http.get("/v1/no-such-route"), 404, "not_found")
        assert_error_body(await http.get("/no-such-file.js"), 404, "not_found")
        for method, path, allowed in [("GET", "/v1/webrtc/offer", "POST"), ("PUT", "/v1/sessions", "GET, POST"),
                                      ("POST", "/health", "GET"), ("GET", "/v1/whip", "POST, OPTIONS"),
                                      ("PUT", "/v1/whep/x", "POST, OPTIONS"), ("POST", "/v1/whip/x", "DELETE, PATCH, OPTIONS")]:
            response = await http.request(method, path)
            assert_error_body(response, 405, "method_not_allowed")
            assert response.headers["allow"] == allowed, (method, path)
        assert_error_body(await http.patch("/v1/whip/x"), 404, "unknown_session")  # PATCH on an unknown resource
        sessions = "/v1/sessions"
        json_headers = {"Content-Type": "application/json"}
        assert_error_body(await http.post(sessions, content=b'{"pipeline": "tint\xff"}', headers=json_headers), 400, "bad_json")
        assert_error_body(await http.post(sessions, content=b'{"pipeline": ', headers=json_headers), 400, "bad_json")
        deep = json.dumps({"pipeline": "tint", "params": {"prompt": nested(40)}})
        assert "deeper than 32" in assert_error_body(await http.post(sessions, content=deep, headers=json_headers), 400, "bad_json")["message"]
        deeper = '{"params": {"p": ' + "[" * 5000 + "]" * 5000 + "}}"
        assert_error_body(await http.post(sessions, content=deeper, headers=json_headers), 400, "bad_json")
        error = assert_error_body(await http.post(sessions, json={"pipeline": "tint", "params": {"prompt": nested(30)}}), 400, "bad_params")
        assert error["field"] == "prompt"  # 30 levels are read
        too_large = json.dumps({"pipeline": "tint", "params": {"prompt": "x" * 140_000}})
        assert_error_body(await http.post(sessions, content=too_large, headers=json_headers), 413, "message_too_large")
        assert_error_body(await http.post(sessions, json={"pipeline": "tint", "extra": 1}), 422, "bad_message")
        assert (await http.get("/health")).status_code == 200
