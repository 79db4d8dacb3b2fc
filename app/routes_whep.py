"""WHEP egress (draft-ietf-wish-whep): watch any session's generated output, as many players as
the server allows, and the receive-only player page built on it (an OBS Browser Source).

    POST /v1/whep/<session id>     offer (application/sdp, receive-only) -> 201 answer + Location
    DELETE <Location>              stop watching
    GET  /player/<session id>      the player page: ?background=transparent, ?fit=cover, ?token=

`latest` in place of an id means the newest session with a stream attached (else the newest):
a player URL that follows whatever OBS publishes, across stops and starts.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import FileResponse

from app.auth import token_owner
from app.context import ServerContext, server_context
from app.peers import answer_or_close, new_peer
from app.sdp_exchange import SDP_BODY, add_endpoint_routes, add_resource_routes, created, read_offer, refusal
from streaming.errors import ErrorCode, StreamError
from streaming.session import Session
from streaming.sessions import SessionManager
from streaming.webrtc.offer import check_offer
from streaming.webrtc.peer import PeerRegistry

router = APIRouter(tags=["whep"])

MAX_PLAYERS_PER_SESSION = 8  # each player has its own encoder: about a fifth of a core at 512x512
LATEST = "latest"


def watched_session(sessions: SessionManager, session_id: str) -> Session:
    if session_id != LATEST:
        return sessions.get(session_id)
    candidates = sorted(sessions.sessions.values(), key=lambda s: (s.sink is not None, s.created_wall))
    if not candidates:
        raise StreamError(ErrorCode.UNKNOWN_SESSION, "no session is running yet")
    return candidates[-1]


def check_room_for_player(peers: PeerRegistry, session: Session) -> None:
    if peers.watching(session.id) >= MAX_PLAYERS_PER_SESSION:
        raise StreamError(ErrorCode.BUSY, f"session {session.id} already has {MAX_PLAYERS_PER_SESSION} players")


@router.post("/v1/whep/{session_id}", status_code=201, response_class=Response, openapi_extra=SDP_BODY, responses={
    201: {"content": {"application/sdp": {}}, "description": "the SDP answer; Location names the player"},
    400: {"description": "bad_sdp: not a usable SDP offer"}, 404: {"description": "no such session"},
    413: {"description": "an offer over 64 KiB"}, 415: {"description": "not application/sdp"},
    422: {"description": "no codec in common"}, 503: {"description": "too many players"}})
async def watch(session_id: str, request: Request, context: ServerContext = Depends(server_context)) -> Response:
    """Watch a session's generated video (and audio) over WebRTC (`latest`: the newest session)."""
    try:
        offer = await read_offer(request)
        check_offer(offer)
        session = watched_session(context.sessions, session_id)
        check_room_for_player(context.peers, session)
        peer = new_peer(context, "whep", receive=False, send=True, owner=token_owner(request))
        answer = await answer_or_close(peer, offer, request)
        if session.closed:
            await peer.close()
            raise StreamError(ErrorCode.UNKNOWN_SESSION, f"session {session.id} ended")
    except StreamError as err:
        return refusal(err)
    session.watch(peer.sink)
    peer.bind(session, as_stream=False, release=lambda: session.unwatch(peer.sink))
    location = str(request.url_for("whep_resource", session_id=session.id, resource_id=peer.id))
    return created(answer, location, session.id)


add_endpoint_routes(router, "/v1/whep/{session_id}")
# The player's resource sits under its session's path; the peer id alone names it.
add_resource_routes(router, "/v1/whep/{session_id}/{resource_id}", "whep", "whep_resource", "Stop watching: the player's connection closes.")


@router.get("/player/{session_id}", response_class=FileResponse, tags=["pages"])
async def player_page(session_id: str) -> FileResponse:
    """Receive-only player for a session's output: no controls, fills the window; for an OBS
    Browser Source. It reconnects by itself when the session is not there yet or has ended
    (`/player/latest` then follows the next one)."""
    return FileResponse(Path(str(files("web"))) / "player.html", media_type="text/html")
