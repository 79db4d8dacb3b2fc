"""Malformed and incomplete SDP offers on the three offer routes (`/v1/webrtc/offer`, WHIP, WHEP):
each gets the documented error (400 `bad_sdp` naming what is wrong, 413, 415, 422) in the
documented body, and nothing is made for it: no session, no peer, no slot held afterwards."""

from __future__ import annotations

import asyncio
import json
import re

import httpx
import pytest

from conftest import make_settings, serve_app_in_thread
from fake_pipelines import TintPipeline
from webrtc_peers import client_offer

pytestmark = pytest.mark.usefixtures("loopback_ice")

MAX_SESSIONS = 3


@pytest.fixture(scope="module")
def server():
    with serve_app_in_thread(make_settings(max_sessions=MAX_SESSIONS), lambda: {"tint": TintPipeline()}) as (url, context):
        yield url, context


@pytest.fixture(scope="module")
def offer(loopback_ice) -> str:
    return asyncio.run(client_offer())


def one(pattern: str, replacement: str):
    return lambda sdp: re.sub(pattern, replacement, sdp, count=1)


# What the issue found (and a few neighbours): each a change to a valid offer, and words the refusal must name.
BAD_OFFERS = {
    "rtpmap without a value": (one(r"a=rtpmap:\d+ VP8/90000", "a=rtpmap"), "a=rtpmap"),
    "fmtp without a value": (one(r"a=fmtp:[^\r\n]+", "a=fmtp"), "a=fmtp"),
    "fmtp of an unmapped payload type": (one(r"a=fmtp:\d+", "a=fmtp:55"), "payload type 55"),
    "fmtp integer that is not one": (one(r"apt=\d+", "apt=x"), "apt"),
    "candidate with three fields": (one(r"a=candidate:[^\r\n]+", "a=candidate:x y z"), "a=candidate"),
    "bare m=video": (one(r"m=video [^\r\n]+", "m=video"), "m="),
    "non-numeric port": (one(r"m=video \d+", "m=video abc"), "m="),
    "neither setup nor fingerprint": (lambda sdp: re.sub(r"a=(setup|fingerprint):[^\r\n]+\r\n", "", sdp), "a=setup"),
    "no fingerprint": (lambda sdp: re.sub(r"a=fingerprint:[^\r\n]+\r\n", "", sdp), "a=fingerprint"),
    "fingerprint of an unknown hash": (lambda sdp: re.sub(r"a=fingerprint:sha-\d+", "a=fingerprint:md5", sdp), "a=fingerprint"),
    "no ICE credentials": (lambda sdp: re.sub(r"a=ice-(ufrag|pwd):[^\r\n]+\r\n", "", sdp), "ICE"),
    "no rtcp-mux": (lambda sdp: sdp.replace("a=rtcp-mux\r\n", ""), "rtcp-mux"),
    "no mid": (lambda sdp: re.sub(r"a=mid:[^\r\n]+\r\n", "", sdp), "a=mid"),
    "setup of another kind": (one(r"a=setup:actpass", "a=setup:holdconn"), "a=setup"),
    "an unknown media kind": (one(r"m=audio", "m=text"), "text"),
    "a line that is no SDP line": (lambda sdp: sdp.replace("a=rtcp-mux\r\n", "rtcp-mux please\r\n", 1), "not an SDP line"),
    "bad connection line": (one(r"c=IN IP4 \S+", "c=somewhere"), "c="),
    "not SDP at all": (lambda sdp: "hello", "v=0"),
    "no media": (lambda sdp: sdp.split("m=")[0], "no media"),
    # Accepted once, and then the answer, which repeats the mid, could not be written as JSON (500).
    "a lone surrogate in a mid": (lambda sdp: sdp.replace("a=mid:0", "a=mid:\udcff").replace("BUNDLE 0 ", "BUNDLE \udcff "), "UTF-8"),
}


async def post_offer(http: httpx.AsyncClient, route: str, sdp: str) -> httpx.Response:
    if route == "webrtc":  # JSON escapes carry any character, a lone surrogate too
        body = json.dumps({"sdp": sdp, "type": "offer"})
        return await http.post("/v1/webrtc/offer", content=body, headers={"Content-Type": "application/json"})
    path = "/v1/whip?pipeline=tint" if route == "whip" else f"/v1/whep/{(await http.get('/v1/sessions')).json()[0]['id']}"
    return await http.post(path, content=sdp.encode(errors="surrogatepass"), headers={"Content-Type": "application/sdp"})


@pytest.fixture
async def http(server):
    """A client, with one REST session to watch (WHEP) that must outlive every refusal."""
    url, context = server
    async with httpx.AsyncClient(base_url=url) as client:
        watched = (await client.post("/v1/sessions", json={"pipeline": "tint"})).json()["id"]
        yield client
        assert [s["id"] for s in (await client.get("/v1/sessions")).json()] == [watched], "a refused offer left a session"
        assert context.peers.peers == {}, "a refused offer left a peer"
        await client.delete(f"/v1/sessions/{watched}")


def assert_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code and body["error"]["message"], body
    return body["error"]


@pytest.mark.parametrize("route", ["webrtc", "whip", "whep"])
@pytest.mark.parametrize("case", BAD_OFFERS)
async def test_a_malformed_offer_gets_400_naming_the_problem_and_makes_nothing(http, offer, route, case):
    change, named = BAD_OFFERS[case]
    error = assert_error(await post_offer(http, route, change(offer)), 400, "bad_sdp")
    assert named in error["message"], error


@pytest.mark.parametrize("route", ["webrtc", "whip", "whep"])
async def test_offer_size_codec_and_content_type_refusals(http, offer, route):
    huge = offer + "a=x-padding:" + "p" * 70_000 + "\r\n"
    assert_error(await post_offer(http, route, huge), 413, "message_too_large")
    video_only_hevc = re.sub(r"a=rtpmap:(\d+) (VP8|H264)/90000", r"a=rtpmap:\1 H265/90000", await client_offer(audio=None, channel=False))
    assert "H265" in assert_error(await post_offer(http, route, video_only_hevc), 422, "unsupported_format")["message"]
    if route == "webrtc":  # bytes that are not UTF-8: the JSON body cannot be read
        not_utf8 = await http.post("/v1/webrtc/offer", content=b'{"sdp": "v=0\xff"}', headers={"Content-Type": "application/json"})
        assert_error(not_utf8, 400, "bad_json")
        return
    path = "/v1/whip" if route == "whip" else "/v1/whep/latest"
    assert_error(await http.post(path, content=b"v=0\r\n\xff\r\n", headers={"Content-Type": "application/sdp"}), 400, "bad_sdp")
    assert_error(await http.post(path, content=offer, headers={"Content-Type": "text/plain"}), 415, "unsupported_media_type")


async def test_refused_whip_offers_hold_no_session_slot(http, offer):
    """Offers that aiortc used to fail on only after the session was made: as many as there are
    slots, then a session must still be admitted."""
    no_setup = re.sub(r"a=(setup|fingerprint):[^\r\n]+\r\n", "", offer)
    for _ in range(MAX_SESSIONS + 2):
        assert_error(await post_offer(http, "whip", no_setup), 400, "bad_sdp")
    created = await http.post("/v1/sessions", json={"pipeline": "tint"})
    assert created.status_code == 201, created.text
    await http.delete(f"/v1/sessions/{created.json()['id']}")
