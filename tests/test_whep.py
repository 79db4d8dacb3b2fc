"""WHEP egress: players watch any session's generated output (one made over the WebSocket API or
published over WHIP), several at once, each leaving on DELETE, all closed when the session ends."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest

from streaming.client import StreamClient
from streaming.webrtc.http_signaling import SignalingError, close_resource, open_resource

from conftest import make_settings, serve_in_thread
from fake_pipelines import TintPipeline
from webrtc_peers import CountingCamera, new_client_pc, paint_index, prefer, received_on, wait_until

pytestmark = pytest.mark.usefixtures("loopback_ice")


@pytest.fixture(scope="module")
def base_url():
    with serve_in_thread(make_settings(), lambda: {"tint": TintPipeline()}) as url:
        yield url


def player() -> tuple:
    pc = new_client_pc()
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    return pc, received_on(pc)


async def test_players_watch_a_websocket_session_and_end_with_it(base_url):
    client = await StreamClient.connect(base_url)
    started = await client.start("tint", {"strength": 0.0})
    session_id = started["session_id"]
    sending = True

    async def send_frames() -> None:
        index = 0
        while sending:
            image = paint_index(np.full((144, 256, 3), 90, np.uint8), index)
            await client.send_frame(image, format="rgb24")
            index += 1
            await asyncio.sleep(1 / 15)

    sender = asyncio.create_task(send_frames())
    players = [player(), player()]
    try:
        resources = [await open_resource(pc, f"{base_url}/v1/whep/{session_id}") for pc, _ in players]
        assert resources[0] != resources[1] and resources[0].startswith(f"{base_url}/v1/whep/{session_id}/")
        for _, received in players:
            await wait_until(lambda r=received: len(r["video"].frames) >= 5)
            indices = [i for _, i in received["video"].indices()]
            assert indices == sorted(indices) and indices[-1] < 10_000

        # One player leaves; the other and the session go on.
        assert await close_resource(resources[0]) == 200
        seen = len(players[1][1]["video"].frames)
        await wait_until(lambda: len(players[1][1]["video"].frames) >= seen + 5)
        async with httpx.AsyncClient(base_url=base_url) as http:
            assert (await http.get(f"/v1/sessions/{session_id}")).status_code == 200

        # The session's own client leaves: the session ends, and its players with it.
        sending = False
        await sender
        await client.close()
        await wait_until(lambda: players[1][0].connectionState in ("closed", "failed"), timeout=15)
        assert await close_resource(resources[1]) == 404
    finally:
        sending = False
        await client.close()
        for pc, _ in players:
            await pc.close()


async def test_whip_in_whep_out(base_url):
    """OBS-like H.264 publisher in, generated frames out to two players; the session's stats count
    what the players are sent (once, however many watch); DELETE frees everything."""
    publisher = new_client_pc()
    camera = CountingCamera(fps=15)
    prefer(publisher.addTransceiver(camera, direction="sendonly"), "video/H264")
    viewer, received = player()
    second, received_too = player()
    try:
        whip = await open_resource(publisher, f"{base_url}/v1/whip?pipeline=tint&strength=0")
        async with httpx.AsyncClient(base_url=base_url) as http:
            [session] = (await http.get("/v1/sessions")).json()
            whep = await open_resource(viewer, f"{base_url}/v1/whep/{session['id']}")
            await open_resource(second, f"{base_url}/v1/whep/{session['id']}")
            await wait_until(lambda: len(received["video"].frames) >= 8 and len(received_too["video"].frames) >= 8)
            assert all(i in camera.captured for _, i in received["video"].indices()[2:])
            stats = (await http.get(f"/v1/sessions/{session['id']}/stats")).json()
            assert 8 <= stats["frames_out"] <= stats["frames_stepped"], stats
            assert stats["time_to_first_frame_ms"] is not None and stats["latency_ms"]["p50"] is not None, stats
        await close_resource(whip)
        await wait_until(lambda: viewer.connectionState in ("closed", "failed"), timeout=15)
        assert await close_resource(whep) == 404
        async with httpx.AsyncClient(base_url=base_url) as http:
            assert (await http.get("/v1/sessions")).json() == []
    finally:
        await publisher.close()
        await viewer.close()
        await second.close()


async def test_unknown_session_and_player_page(base_url):
    pc, _ = player()
    with pytest.raises(SignalingError) as unknown:
        await open_resource(pc, f"{base_url}/v1/whep/nope")
    assert unknown.value.status == 404
    await pc.close()
    async with httpx.AsyncClient(base_url=base_url) as http:
        page = await http.get("/player/anything")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"] and "player.js" in page.text
        assert (await http.options("/v1/whep/anything")).headers["accept-post"] == "application/sdp"
