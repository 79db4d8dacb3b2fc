"""The limits and the error table of docs/protocol.md are the server's: the documented numbers are
the code's (so neither can change alone), and the limits no other test reaches hold (sessions per
short-lived token, connections, players, media sections and candidates of an offer).

Covered elsewhere: frame size and message sizes (test_server_bad_input), JSON depth
(test_server_bad_input, test_fuzz_protocol), HTTP body and SDP size (test_server_bad_input,
test_bad_offers), the audio buffer (test_server_stream), the idle timeout (test_server_rest).
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import httpx
import pytest

from app.body_limits import MAX_REQUEST_BYTES
from app.peers import PEERS_PER_SESSION_SLOT
from app.routes_whep import MAX_PLAYERS_PER_SESSION
from app.settings import Settings
from streaming.client import StreamClient, StreamClientError
from streaming.errors import HTTP_STATUS, ErrorCode
from streaming.protocol import MAX_JSON_DEPTH
from streaming.sessions import SessionManager
from streaming.webrtc.offer import MAX_CANDIDATES, MAX_MEDIA_SECTIONS, MAX_SDP_BYTES

from conftest import make_settings, serve_app_in_thread
from fake_pipelines import TintPipeline
from webrtc_peers import client_offer

PROTOCOL = Path(__file__).parents[1] / "docs" / "protocol.md"


def table(heading: str) -> list[list[str]]:
    """The rows of the first table under `## heading` in docs/protocol.md, as cells."""
    section = PROTOCOL.read_text().split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")][2:]
    return [[cell.strip() for cell in re.split(r"(?<!\\)\|", row)[1:-1]] for row in rows]


def test_the_documented_error_table_is_the_servers():
    documented = {}
    for code, _, status in table("Error codes"):
        number = re.match(r"\d+", status)
        documented[code.strip("`")] = int(number.group()) if number else None
    assert set(documented) == {c.value for c in ErrorCode} - {ErrorCode.IDLE_TIMEOUT.value}  # idle_timeout: a `stopped` reason
    assert {code: status for code, status in documented.items() if status is not None} == {c.value: s for c, s in HTTP_STATUS.items()}


def test_the_documented_limits_are_the_servers():
    limits = {row[0]: row[1] for row in table("Limits")}
    defaults = Settings(_env_file=None)
    kib, mib = 2**10, 2**20
    expected = {
        "binary message (WebSocket)": f"{defaults.max_message_bytes // mib} MiB",
        "control message (WebSocket, data channel)": f"{defaults.max_control_bytes // kib} KiB",
        "JSON nesting (control messages, REST bodies)": f"{MAX_JSON_DEPTH} levels",
        "HTTP request body": f"{MAX_REQUEST_BYTES // kib} KiB",
        "SDP offer": f"{MAX_SDP_BYTES // kib} KiB, at most {MAX_MEDIA_SECTIONS} media sections, at most {MAX_CANDIDATES} `a=candidate`",
        "video frame": f"{defaults.max_frame_width}×{defaults.max_frame_height}",
        "audio buffer": f"{defaults.audio_buffer_s:g} s",
        "sessions": f"{defaults.max_sessions}",
        "sessions per short-lived token": f"{defaults.max_sessions_per_token} at once",
        "starts waiting in line (`\"queue\": true`)": f"{inspect.signature(SessionManager).parameters['max_queue'].default}",
        "WebRTC, WHIP and WHEP connections": f"{PEERS_PER_SESSION_SLOT} per session slot ({PEERS_PER_SESSION_SLOT * defaults.max_sessions})",
        "WHEP players of one session": f"{MAX_PLAYERS_PER_SESSION}",
        "an answered offer that never connects": f"{defaults.webrtc_connect_timeout_s:g} s",
        "a session nothing arrives on": f"{defaults.session_idle_timeout_s:g} s",
    }
    assert set(limits) == set(expected)
    for name, value in expected.items():
        assert limits[name].startswith(value), (name, limits[name], value)


TOKEN = "limits-secret"


@pytest.fixture(scope="module")
def server():
    settings = make_settings(api_token=TOKEN, max_sessions=3, max_sessions_per_token=2)
    with serve_app_in_thread(settings, lambda: {"tint": TintPipeline()}) as (url, context):
        yield url, context


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_a_short_lived_token_holds_at_most_its_share_of_sessions(server):
    url, _ = server
    async with httpx.AsyncClient(base_url=url) as http:
        short, other = [(await http.post("/v1/tokens", headers=bearer(TOKEN))).json()["token"] for _ in range(2)]
        held = [(await http.post("/v1/sessions", json={"pipeline": "tint"}, headers=bearer(short))).json()["id"] for _ in range(2)]
        refused = await http.post("/v1/sessions", json={"pipeline": "tint"}, headers=bearer(short))
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "too_many_sessions", refused.text
        async with await StreamClient.connect(url, token=short) as client:  # on the socket too
            with pytest.raises(StreamClientError) as err:
                await client.start("tint")
            assert err.value.code == "too_many_sessions"
        # Another token has its own share; ending a session gives the first one room again.
        mine = await http.post("/v1/sessions", json={"pipeline": "tint"}, headers=bearer(other))
        assert mine.status_code == 201
        await http.delete(f"/v1/sessions/{held.pop()}", headers=bearer(TOKEN))
        again = await http.post("/v1/sessions", json={"pipeline": "tint"}, headers=bearer(short))
        assert again.status_code == 201
        for session in (await http.get("/v1/sessions", headers=bearer(TOKEN))).json():
            await http.delete(f"/v1/sessions/{session['id']}", headers=bearer(TOKEN))


async def test_the_api_token_is_bounded_by_max_sessions_only(server):
    url, _ = server
    async with httpx.AsyncClient(base_url=url, headers=bearer(TOKEN)) as http:
        made = [await http.post("/v1/sessions", json={"pipeline": "tint"}) for _ in range(4)]
        assert [r.status_code for r in made] == [201, 201, 201, 503] and made[3].json()["error"]["code"] == "busy"
        for response in made[:3]:
            await http.delete(f"/v1/sessions/{response.json()['id']}")


@pytest.mark.usefixtures("loopback_ice")
async def test_connections_and_players_are_bounded(server):
    url, context = server
    async with httpx.AsyncClient(base_url=url, headers=bearer(TOKEN)) as http:
        watched = (await http.post("/v1/sessions", json={"pipeline": "tint"})).json()["id"]
        player = (await client_offer(video="recvonly", audio=None, channel=False)).encode()
        sdp = {"Content-Type": "application/sdp"}
        players = [await http.post(f"/v1/whep/{watched}", content=player, headers=sdp) for _ in range(MAX_PLAYERS_PER_SESSION + 1)]
        assert [r.status_code for r in players] == [201] * MAX_PLAYERS_PER_SESSION + [503]
        assert "players" in players[-1].json()["error"]["message"]
        demo_offer = await client_offer()
        room = PEERS_PER_SESSION_SLOT * 3 - MAX_PLAYERS_PER_SESSION
        answered = [await http.post("/v1/webrtc/offer", json={"sdp": demo_offer}) for _ in range(room + 1)]
        assert [r.status_code for r in answered] == [200] * room + [503]
        assert answered[-1].json()["error"]["code"] == "busy" and len(context.peers.peers) == PEERS_PER_SESSION_SLOT * 3
        for response in players[:-1]:
            assert (await http.delete(response.headers["location"])).status_code == 200
        await http.delete(f"/v1/sessions/{watched}")


@pytest.mark.usefixtures("loopback_ice")
async def test_an_offer_with_too_many_media_sections_or_candidates_is_refused(server):
    url, _ = server
    offer = await client_offer(audio=None, channel=False)
    head, video = offer.split("m=video", 1)
    sections = head + "".join(f"m=video{video}".replace("a=mid:0", f"a=mid:{i}") for i in range(MAX_MEDIA_SECTIONS + 1))
    candidate = next(line for line in offer.splitlines() if line.startswith("a=candidate:"))
    candidates = offer.replace(candidate, "\r\n".join([candidate] * (MAX_CANDIDATES + 1)))
    async with httpx.AsyncClient(base_url=url, headers=bearer(TOKEN)) as http:
        for sdp, named in ((sections, "media sections"), (candidates, "candidates")):
            response = await http.post("/v1/webrtc/offer", json={"sdp": sdp})
            assert response.status_code == 400 and response.json()["error"]["code"] == "bad_sdp"
            assert named in response.json()["error"]["message"]
        at_the_limit = offer.replace(candidate, "\r\n".join([candidate] * MAX_CANDIDATES))
        published = await http.post("/v1/whip?pipeline=tint", content=at_the_limit, headers={"Content-Type": "application/sdp"})
        assert published.status_code == 201
        assert (await http.delete(published.headers["location"])).status_code == 200
