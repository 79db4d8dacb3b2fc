"""Property-based tests (Hypothesis) of SDP offers: real offers, mutated line by line (lines dropped,
repeated, swapped, cut short, their values or numbers replaced, attribute lines of every kind aiortc
reads inserted with any value).

Properties: `check_offer` either accepts a mutant or refuses it with a documented error, never
another exception; whatever it accepts, aiortc can answer (so no check is missing that would let
an offer fail later, inside aiortc, after a session was made for it); and the three offer routes
answer every mutant without a 5xx, in the documented body, leaving no session and no peer behind.
Bounded by `max_examples`, derandomized so that a run is repeatable.
"""

from __future__ import annotations

import asyncio
import json
import re

import httpx
import pytest
from aiortc import RTCSessionDescription
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streaming.errors import HTTP_STATUS, ErrorCode, StreamError
from streaming.webrtc.offer import check_offer

from conftest import make_settings, serve_app_in_thread
from fake_pipelines import TintPipeline
from webrtc_peers import client_offer, new_client_pc

pytestmark = pytest.mark.usefixtures("loopback_ice")

OFFER_CODES = {ErrorCode.BAD_SDP, ErrorCode.MESSAGE_TOO_LARGE, ErrorCode.UNSUPPORTED_FORMAT}
ATTRIBUTES = ["rtpmap", "fmtp", "rtcp-fb", "candidate", "fingerprint", "setup", "extmap", "ssrc", "ssrc-group", "rtcp", "rtcp-mux",
              "sctp-port", "max-message-size", "sctpmap", "ice-ufrag", "ice-pwd", "ice-lite", "mid", "msid", "group", "msid-semantic",
              "sendrecv", "recvonly", "end-of-candidates"]
TOKENS = st.text(st.characters(codec="ascii", exclude_characters="\r\n"), max_size=12) | st.sampled_from(
    ["", " ", "0", "-1", "99999999999", "VP8/90000", "H264/90000", "opus/48000/2", "sha-256", "AA:BB", "actpass", "typ", "host",
     "127.0.0.1", "IN IP4 127.0.0.1", "UDP/TLS/RTP/SAVPF", "webrtc-datachannel", "apt=x", "profile-level-id=zz", "x y z",
     "\udcff", "é", "\x00"])  # a lone surrogate (a JSON body can carry one), text beyond ASCII, a NUL


@pytest.fixture(scope="module")
def offers(loopback_ice) -> list[str]:
    """What clients offer: the demo (video, audio, data channel), a player, an OBS-like publisher, talk mode."""
    return asyncio.run(_offers())


async def _offers() -> list[str]:
    return [await client_offer(), await client_offer(video="recvonly", audio="recvonly", channel=False),
            await client_offer(video="sendonly", audio="sendonly", channel=False), await client_offer(video=None)]


@st.composite
def mutants(draw, offers: list[str]) -> str:
    lines = draw(st.sampled_from(offers)).split("\r\n")
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(lines) - 1))
        change = draw(st.sampled_from(["drop", "repeat", "swap", "cut", "value", "number", "insert"]))
        line = lines[at]
        if change == "drop":
            del lines[at]
        elif change == "repeat":
            lines.insert(at, line)
        elif change == "swap":
            other = draw(st.integers(0, len(lines) - 1))
            lines[at], lines[other] = lines[other], line
        elif change == "cut":
            lines[at] = line[:draw(st.integers(0, len(line)))]
        elif change == "value":
            head = line.split(":", 1)[0] if ":" in line else line[:2]
            lines[at] = head + draw(st.sampled_from([":", "", " "])) + draw(TOKENS)
        elif change == "number":
            numbers = list(re.finditer(r"\d+", line))
            if numbers:
                number = draw(st.sampled_from(numbers))
                lines[at] = line[:number.start()] + draw(TOKENS) + line[number.end():]
        else:
            lines.insert(at, f"a={draw(st.sampled_from(ATTRIBUTES))}" + draw(st.sampled_from([":", ""])) + draw(TOKENS))
        if not lines:
            lines = [""]
    return "\r\n".join(lines)


UNIT = settings(max_examples=400, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))


def test_every_mutant_is_accepted_or_refused_with_a_documented_error(offers):
    accepted = []

    @UNIT
    @given(sdp=mutants(offers))
    def check(sdp: str) -> None:
        try:
            check_offer(sdp)
        except StreamError as err:
            assert err.code in OFFER_CODES and err.message, err
            return
        accepted.append(sdp)

    check()
    assert accepted, "no mutant was accepted: the property about accepted offers below would test nothing"


def test_aiortc_answers_every_offer_check_offer_accepts(offers):
    """check_offer is complete for these mutants: what it lets through, aiortc can answer."""

    async def answer(sdp: str) -> None:
        pc = new_client_pc()
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp, "offer"))
            await pc.setLocalDescription(await pc.createAnswer())
        finally:
            await pc.close()

    answered = []

    @settings(max_examples=150, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
    @given(sdp=mutants(offers))
    def check(sdp: str) -> None:
        try:
            check_offer(sdp)
        except StreamError:
            return
        asyncio.run(answer(sdp))
        answered.append(sdp)

    check()
    assert len(answered) >= 20, "too few accepted mutants for the property to say much"


@pytest.fixture(scope="module")
def server():
    # An answered demo offer has no DELETE: it is given up soon, as one whose client never connects.
    with serve_app_in_thread(make_settings(webrtc_connect_timeout_s=2), lambda: {"tint": TintPipeline()}) as (url, context):
        yield url, context


@pytest.mark.parametrize("route", ["webrtc", "whip", "whep"])
def test_the_offer_routes_answer_every_mutant_without_a_5xx_and_keep_nothing_of_a_refused_one(server, offers, route):
    url, context = server
    with httpx.Client(base_url=url, timeout=20) as http:
        watched = http.post("/v1/sessions", json={"pipeline": "tint"}).json()["id"]

        @settings(max_examples=40, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
        @given(sdp=mutants(offers))
        def post(sdp: str) -> None:
            sessions_before = {s["id"] for s in http.get("/v1/sessions").json()}
            peers_before = set(context.peers.peers)
            if route == "webrtc":  # JSON escapes carry any character, a lone surrogate too
                response = http.post("/v1/webrtc/offer", content=json.dumps({"sdp": sdp}), headers={"Content-Type": "application/json"})
            else:
                path = "/v1/whip?pipeline=tint" if route == "whip" else f"/v1/whep/{watched}"
                body = sdp.encode(errors="surrogatepass")
                response = http.post(path, content=body, headers={"Content-Type": "application/sdp"})
            assert response.status_code < 500, response.text
            if response.status_code >= 400:
                error = response.json()["error"]
                assert HTTP_STATUS[ErrorCode(error["code"])] == response.status_code and error["message"], error
                assert {s["id"] for s in http.get("/v1/sessions").json()} <= sessions_before, "a refused offer left a session"
                assert set(context.peers.peers) <= peers_before, "a refused offer left a peer"
            elif route != "webrtc":  # answered: hang up, and what it made goes with it
                assert http.delete(response.headers["location"]).status_code == 200

        post()
        http.delete(f"/v1/sessions/{watched}")
