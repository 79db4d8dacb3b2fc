"""WHIP ingest (RFC 9725): OBS or any WHIP client publishes its camera into a session.

    POST /v1/whip?pipeline=stream-diffusion&prompt=a%20watercolor%20fox&strength=0.6   (a new session)
    POST /v1/whip?session=<id>                                                         (one made over REST)

The offer goes in as application/sdp; the answer comes back 201 with the resource's Location,
which the client DELETEs to stop. A session made by the POST ends with its publisher; a session
made beforehand over REST outlives it, so a publisher can stop and start again into it (and its
players keep watching) until it is deleted or times out.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import ValidationError

from app.context import ServerContext, server_context
from app.peers import new_peer, peer_registry
from app.sdp_exchange import SdpError, add_endpoint_routes, add_resource_routes, answer_offer, created, read_offer
from streaming.errors import ErrorCode, StreamError
from streaming.protocol import SloSpec
from streaming.session import Session
from streaming.webrtc.codecs import UnsupportedOffer, check_offer
from streaming.webrtc.peer import PeerRegistry, SessionPeer

router = APIRouter(prefix="/v1/whip", tags=["whip"])

# Query keys that are not pipeline parameters. `token` is the AuthMiddleware's.
SESSION_KEY, PIPELINE_KEY, TOKEN_KEY = "session", "pipeline", "token"
SLO_KEYS = set(SloSpec.model_fields)


def query_value(raw: str) -> Any:
    """Lists and objects come as JSON (`t_index_list=[20,35]`); anything else stays a string,
    which the parameter schema converts where it expects a number or a bool."""
    if raw[:1] in "[{":
        try:
            return json.loads(raw)
        except ValueError:
            pass
    return raw


def session_request(request: Request) -> tuple[str | None, str | None, dict[str, Any], SloSpec]:
    """(session id, pipeline, params, slo) from the query string."""
    query = {k: v for k, v in request.query_params.items() if k != TOKEN_KEY}
    session_id = query.pop(SESSION_KEY, None)
    pipeline = query.pop(PIPELINE_KEY, None)
    try:
        slo = SloSpec(**{k: query.pop(k) for k in list(query) if k in SLO_KEYS})
    except ValidationError as err:
        first = err.errors()[0]
        raise StreamError(ErrorCode.BAD_PARAMS, f"{first['loc'][0]}: {first['msg']}", field=str(first["loc"][0])) from None
    return session_id, pipeline, {k: query_value(v) for k, v in query.items()}, slo


@router.post("", status_code=201, response_class=Response, responses={
    201: {"content": {"application/sdp": {}}, "description": "the SDP answer; Location names the resource"},
    400: {"description": "not an SDP offer, or bad parameters"}, 401: {"description": "missing or wrong Bearer token"},
    404: {"description": "?session= names no session"}, 409: {"description": "that session already has a publisher"},
    415: {"description": "not application/sdp"}, 422: {"description": "no video codec we decode (send H.264 or VP8)"},
    503: {"description": "busy or still loading"}})
async def publish(request: Request, context: ServerContext = Depends(server_context),
                  peers: PeerRegistry = Depends(peer_registry)) -> Response:
    """Publish media into a session. Pipeline, parameters (any other query key) and SLO
    (`target_fps`, `latency_budget_ms`) come from the query string, or `session=` names a
    session created with POST /v1/sessions."""
    try:
        offer = await read_offer(request)
        check_offer(offer)  # refuse an unusable offer before making a session for it
    except UnsupportedOffer as err:
        return SdpError(422, str(err), ErrorCode.UNSUPPORTED_FORMAT).response()
    except ValueError as err:
        return SdpError(400, str(err)).response()
    except SdpError as err:
        return err.response()
    session_id, pipeline, params, slo = session_request(request)
    sessions = context.sessions
    peer = new_peer(context, peers, "whip", receive=True, send=False)
    try:
        if session_id is None:
            session = await sessions.create(pipeline, params, slo)
            sessions.attach_stream(session.id, peer.sink)
            release = lambda: sessions.close(session.id)  # noqa: E731
        else:
            session = sessions.attach_stream(session_id, peer.sink)
            release = lambda: _detach(session, peer)  # noqa: E731
    except StreamError:
        await peer.close()
        raise
    peer.bind(session, as_stream=True, release=release)
    try:
        answer = await answer_offer(peer, offer)
    except SdpError as err:
        await peer.close()
        return err.response()
    return created(answer, str(request.url_for("whip_resource", resource_id=peer.id)), session.id)


def _detach(session: Session, peer: SessionPeer) -> None:
    """Leave a REST-made session to its next publisher."""
    if session.sink == peer.sink:
        session.sink = None
        session.touch()  # the idle timeout counts from the publisher leaving


add_endpoint_routes(router, "")
add_resource_routes(router, "/{resource_id}", "whip", "whip_resource",
                    "Stop publishing: the connection closes, and the session with it unless it was made over REST.")
