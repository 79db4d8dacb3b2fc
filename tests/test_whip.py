"""WHIP ingest (RFC 9725) with an aiortc client, as OBS would publish: 201 with the answer and a
Location, DELETE ends it, 422 with a reason for codecs we cannot decode, Bearer auth, CORS, and
the answers the RFC prescribes for PATCH and other methods."""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest

from streaming.webrtc.http_signaling import SignalingError, close_resource, open_resource

from conftest import make_settings, serve_in_thread
from fake_pipelines import TintPipeline
from webrtc_peers import CountingCamera, ToneMicrophone, new_client_pc, prefer, wait_until

TOKEN = "whip-secret"


pytestmark = pytest.mark.usefixtures("loopback_ice")


@pytest.fixture(scope="module")
def base_url():
    with serve_in_thread(make_settings(), lambda: {"tint": TintPipeline()}) as url:
        yield url


def publisher(fps: float = 15) -> tuple:
    """An OBS-like publisher: H.264 video and Opus audio, send only."""
    pc = new_client_pc()
    camera = CountingCamera(fps=fps)
    prefer(pc.addTransceiver(camera, direction="sendonly"), "video/H264")
    pc.addTransceiver(ToneMicrophone(), direction="sendonly")
    return pc, camera


async def sessions(http: httpx.AsyncClient) -> list[dict]:
    return (await http.get("/v1/sessions")).json()


async def test_publish_with_params_from_the_query_then_delete(base_url):
    pc, camera = publisher()
    async with httpx.AsyncClient(base_url=base_url) as http:
        try:
            resource = await open_resource(pc, f"{base_url}/v1/whip?pipeline=tint&strength=0.25&prompt=a%20fox&target_fps=15")
            assert re.fullmatch(rf"{base_url}/v1/whip/[0-9a-f]+", resource)
            assert "H264/90000" in pc.remoteDescription.sdp.split("m=video")[1]
            [session] = await sessions(http)
            assert session["pipeline"] == "tint" and session["streaming"]
            assert session["params"]["strength"] == 0.25 and session["params"]["prompt"] == "a fox"
            assert session["slo"]["target_fps"] == 15
            await wait_until(lambda: pc.connectionState == "connected")

            await asyncio.sleep(1.5)
            stats = (await http.get(f"/v1/sessions/{session['id']}/stats")).json()
            assert stats["frames_in"] >= 10 and stats["frames_stepped"] >= 5 and stats["audio"]["chunks_in"] > 10

            assert await close_resource(resource) == 200
            assert await sessions(http) == []
            await wait_until(lambda: pc.connectionState in ("closed", "failed"), timeout=15)
            assert await close_resource(resource) == 404
        finally:
            await pc.close()


async def test_offer_without_a_codec_we_decode_gets_422_with_the_fix(base_url):
    for codec in ("H265", "AV1"):
        pc = new_client_pc()
        pc.addTransceiver("video", direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        offer = re.sub(r"a=rtpmap:(\d+) (VP8|H264)/90000", rf"a=rtpmap:\1 {codec}/90000", pc.localDescription.sdp)
        async with httpx.AsyncClient(base_url=base_url) as http:
            response = await http.post("/v1/whip", content=offer, headers={"Content-Type": "application/sdp"})
            assert response.status_code == 422
            message = response.json()["error"]["message"]
            assert codec in message and "H.264" in message and "OBS" in message
            assert await sessions(http) == []  # nothing was made for it
        await pc.close()


async def test_methods_content_types_and_cors(base_url):
    async with httpx.AsyncClient(base_url=base_url) as http:
        options = await http.options("/v1/whip")
        assert options.status_code == 204 and options.headers["accept-post"] == "application/sdp"
        assert options.headers["access-control-allow-origin"] == "*" and "POST" in options.headers["access-control-allow-methods"]
        assert (await http.get("/v1/whip")).status_code == 405
        wrong_type = await http.post("/v1/whip", content="v=0", headers={"Content-Type": "text/plain"})
        assert wrong_type.status_code == 415
        not_sdp = await http.post("/v1/whip", content="hello", headers={"Content-Type": "application/sdp"})
        assert not_sdp.status_code == 400
        assert (await http.delete("/v1/whip/nope")).status_code == 404

    pc, _ = publisher()
    try:
        resource = await open_resource(pc, f"{base_url}/v1/whip?pipeline=tint")
        async with httpx.AsyncClient() as http:
            patch = await http.patch(resource, content="a=end-of-candidates", headers={
                "Content-Type": "application/trickle-ice-sdpfrag", "If-Match": "*"})
            assert patch.status_code == 501  # neither trickle nor ICE restarts: RFC 9725 section 4.3.1
            assert (await http.get(resource)).status_code == 405
            assert (await http.options(resource)).status_code == 204
        assert await close_resource(resource) == 200
    finally:
        await pc.close()


async def test_publishing_into_a_session_made_over_rest_survives_a_restart(base_url):
    async with httpx.AsyncClient(base_url=base_url) as http:
        session_id = (await http.post("/v1/sessions", json={"pipeline": "tint", "params": {"strength": 0}})).json()["id"]
        first, _ = publisher()
        second, _ = publisher()
        try:
            resource = await open_resource(first, f"{base_url}/v1/whip?session={session_id}")
            with pytest.raises(SignalingError) as refused:
                await open_resource(second, f"{base_url}/v1/whip?session={session_id}")
            assert refused.value.status == 409
            await close_resource(resource)
            assert (await http.get(f"/v1/sessions/{session_id}")).json()["streaming"] is False

            again, _ = publisher()
            resource = await open_resource(again, f"{base_url}/v1/whip?session={session_id}")
            await wait_until(lambda: again.connectionState == "connected")
            assert (await http.get(f"/v1/sessions/{session_id}")).json()["streaming"] is True
            await close_resource(resource)
            await again.close()
            stranger, _ = publisher()
            with pytest.raises(SignalingError) as unknown:
                await open_resource(stranger, f"{base_url}/v1/whip?session=nope")
            assert unknown.value.status == 404
            await stranger.close()
        finally:
            await first.close()
            await second.close()
            await http.delete(f"/v1/sessions/{session_id}")


async def test_bearer_token_is_required_when_the_server_has_one(server_factory):
    url = server_factory({"tint": TintPipeline()}, api_token=TOKEN)
    for token in (None, "wrong"):
        pc, _ = publisher()
        with pytest.raises(SignalingError) as refused:
            await open_resource(pc, f"{url}/v1/whip", token=token)
        assert refused.value.status == 401
        await pc.close()
    async with httpx.AsyncClient() as http:  # a CORS preflight carries no token
        assert (await http.options(f"{url}/v1/whip")).status_code == 204
    pc, _ = publisher()
    try:
        resource = await open_resource(pc, f"{url}/v1/whip", token=TOKEN)
        assert await close_resource(resource) == 401
        assert await close_resource(resource, token=TOKEN) == 200
    finally:
        await pc.close()
