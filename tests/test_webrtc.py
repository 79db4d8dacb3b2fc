"""WebRTC against the real server: two aiortc peers in one process on 127.0.0.1 (the client here,
the server's in its thread). Media goes both ways, the `control` data channel speaks the
WebSocket API, a slow pipeline does not build latency, and a closed connection frees its session."""

from __future__ import annotations

import asyncio
import time

import httpx
import numpy as np
import pytest

from pipelines.passthrough import PassthroughPipeline
from streaming.frames import VideoFrame
from streaming.webrtc.output import GeneratedVideoTrack

from conftest import make_settings, serve_in_thread
from fake_pipelines import TintPipeline, prompt_color
from webrtc_peers import CountingCamera, DemoClient, ToneMicrophone, new_client_pc, prefer, received_on, wait_until

SLOW_STEP_S = 0.15


pytestmark = pytest.mark.usefixtures("loopback_ice")


@pytest.fixture(scope="module")
def pipelines():
    return {"tint": TintPipeline(), "slow": TintPipeline("slow", delay_s=SLOW_STEP_S), "passthrough": PassthroughPipeline()}


@pytest.fixture(scope="module")
def base_url(pipelines):
    with serve_in_thread(make_settings(stats_interval_s=0.5), lambda: pipelines) as url:
        yield url


async def sessions_of(base_url: str) -> list[dict]:
    async with httpx.AsyncClient(base_url=base_url) as http:
        return (await http.get("/v1/sessions")).json()


async def test_media_both_ways_with_control_on_the_data_channel(base_url):
    pc = new_client_pc()
    camera = CountingCamera(fps=20)
    pc.addTransceiver(camera, direction="sendrecv")
    pc.addTransceiver(ToneMicrophone(), direction="sendrecv")
    received = received_on(pc)
    client = DemoClient(base_url, pc)
    try:
        assert (await client.connect()).status_code == 200
        client.send({"type": "start", "request_id": "s", "pipeline": "tint", "params": {"strength": 0.0}})
        started = await client.expect("started", "s")
        assert started["pipeline"] == "tint" and started["params"]["strength"] == 0.0

        # The camera's own pictures come back (strength 0), numbered as sent.
        await wait_until(lambda: len(received["video"].frames) >= 10)
        indices = [i for _, i in received["video"].indices()]
        assert all(i in camera.captured for i in indices) and indices == sorted(indices)

        # An update is acknowledged once in force, and the pictures show it.
        client.send({"type": "update", "request_id": "u", "params": {"prompt": "a lighthouse", "strength": 1.0}})
        ack = await client.expect("ack", "u")
        assert ack["applied"] == ["prompt", "strength"] and ack["update_class"] == "hot"
        seen = len(received["video"].frames)
        await wait_until(lambda: len(received["video"].frames) >= seen + 5)
        last = received["video"].frames[-1][1].to_ndarray(format="rgb24")
        assert np.allclose(last[64, 128], prompt_color("a lighthouse"), atol=12), last[64, 128]

        # Bad input is answered with an error naming the request, and the stream goes on.
        client.send({"type": "update", "request_id": "bad", "params": {"strength": 7}})
        error = await client.expect("error", "bad")
        assert error["code"] == "bad_params" and error["field"] == "strength"

        # Audio comes back too: the tone, not silence.
        await wait_until(lambda: len(received["audio"].frames) >= 50)
        loud = [np.abs(f.to_ndarray()).mean() for _, f in received["audio"].frames[-25:]]
        assert max(loud) > 1000

        stats = await client.expect("stats")
        assert stats["frames_in"] > 10 and stats["frames_out"] > 10 and stats["audio"]["chunks_in"] > 10

        client.send({"type": "stop", "request_id": "x"})
        stopped = await client.expect("stopped", "x")
        assert stopped["reason"] == "client"
        assert await sessions_of(base_url) == []
    finally:
        await client.close()


async def test_slow_pipeline_keeps_latency_bounded(base_url):
    """A model slower than the camera drops inputs (latest wins) instead of queueing them."""
    pc = new_client_pc()
    camera = CountingCamera(fps=30)
    pc.addTransceiver(camera, direction="sendrecv")
    received = received_on(pc)
    client = DemoClient(base_url, pc)
    try:
        await client.connect()
        client.send({"type": "start", "request_id": "s", "pipeline": "slow", "params": {"strength": 0.0}})
        await client.expect("started", "s")
        await asyncio.sleep(4.0)
        latencies = [at - camera.captured[i] for at, i in received["video"].indices() if i in camera.captured]
        assert len(latencies) >= 12
        early, late = np.median(latencies[2:8]), np.median(latencies[-6:])
        # Bounded by about a step, a frame interval and the codecs; a queue would grow ~0.12 s per second.
        assert late < 0.5 and late < early + 0.15, (early, late)
        client.send({"type": "stats", "request_id": "q"})
        stats = await client.expect("stats", "q")
        assert stats["dropped_input"] > 30
    finally:
        await client.close()


async def test_h264_and_closing_the_connection_frees_the_session(base_url):
    pc = new_client_pc()
    prefer(pc.addTransceiver(CountingCamera(fps=15), direction="sendrecv"), "video/H264")
    received = received_on(pc)
    client = DemoClient(base_url, pc)
    await client.connect()
    client.send({"type": "start", "request_id": "s", "pipeline": "passthrough"})
    session_id = (await client.expect("started", "s"))["session_id"]
    await wait_until(lambda: len(received["video"].frames) >= 5)
    answer_video = pc.remoteDescription.sdp.split("m=video")[1]
    assert "H264/90000" in answer_video and "VP8/90000" not in answer_video
    assert [s["id"] for s in await sessions_of(base_url)] == [session_id]

    await client.close()
    remaining = None
    for _ in range(100):
        remaining = await sessions_of(base_url)
        if not remaining:
            break
        await asyncio.sleep(0.05)
    assert remaining == []


async def test_refusals_before_and_after_start(base_url):
    pc = new_client_pc()
    pc.addTransceiver("video", direction="recvonly")
    client = DemoClient(base_url, pc)
    try:
        await client.connect()
        client.send({"type": "update", "request_id": "early", "params": {}})
        assert (await client.expect("error", "early"))["code"] == "not_started"
        client.send({"type": "start", "request_id": "s", "pipeline": "nope"})
        assert (await client.expect("error", "s"))["code"] == "unknown_pipeline"
        client.send({"type": "start", "request_id": "s2", "pipeline": "tint"})
        await client.expect("started", "s2")
        client.send({"type": "start", "request_id": "s3"})
        assert (await client.expect("error", "s3"))["code"] == "already_started"
    finally:
        await client.close()

    async with httpx.AsyncClient(base_url=base_url) as http:
        response = await http.post("/v1/webrtc/offer", json={"sdp": "v=0 nonsense", "type": "offer"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "bad_sdp"


async def test_output_track_paces_a_burst_and_drops_what_a_slow_encoder_cannot_take():
    dropped: list[int] = []
    track = GeneratedVideoTrack(30.0, 0.5, on_dropped=lambda: dropped.append(1))
    picture = np.zeros((16, 16, 3), np.uint8)
    now = time.monotonic()

    def frame(i: int, step: int) -> VideoFrame:
        return VideoFrame(picture, i, 10 + i / 30, timestamps={"finished": now + step / 30})

    for i in range(4):  # a chunk's burst (one step): kept, and spaced out by pts
        track.push(frame(i, step=0))
    started = time.monotonic()
    sent = [await track.recv() for _ in range(4)]
    assert dropped == [] and time.monotonic() - started > 2.5 / 30 * 0.8
    assert [f.pts for f in sent] == sorted({f.pts for f in sent})  # monotonic RTP pts

    for i in range(4, 24):  # the encoder fell behind by 20 frames of as many steps: only the last quarter second waits
        track.push(frame(i, step=i))
    assert len(dropped) == 12
    assert (await track.recv()).pts > sent[-1].pts
    track.stop()


@pytest.mark.parametrize("codec", ["video/VP8", "video/H264"])
async def test_frame_info_announces_the_rtp_pts_the_receiver_sees(base_url, codec):
    """`rtp_pts` in a `frame` message equals the pts aiortc's receiver reports for that frame,
    exactly (the encoder's own time base once made them differ by a tick on about a third)."""
    pc = new_client_pc()
    prefer(pc.addTransceiver(CountingCamera(fps=20), direction="sendrecv"), codec)
    received = received_on(pc)
    client = DemoClient(base_url, pc)
    try:
        assert (await client.connect(frame_info=True)).status_code == 200
        client.send({"type": "start", "request_id": "s", "pipeline": "passthrough"})
        await client.expect("started", "s")
        await wait_until(lambda: len(received["video"].frames) >= 30, timeout=20)
        await asyncio.sleep(0.3)  # the announcements of the frames received so far
        announced = set()
        while not client.messages.empty():
            message = client.messages.get_nowait()
            if message["type"] == "frame":
                announced.add(message["rtp_pts"])
        seen = [frame.pts for _, frame in received["video"].frames]
        assert len(announced) >= 30
        assert [pts for pts in seen if pts not in announced] == []
    finally:
        await client.close()
