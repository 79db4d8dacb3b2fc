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

from app.auth import token_owner
from app.context import ServerContext, server_context
from app.peers import answer_or_close, check_room_for_peer, new_peer
from app.sdp_exchange import SDP_BODY, add_endpoint_routes, add_resource_routes, created, read_offer, refusal
from streaming.errors import ErrorCode, StreamError
from streaming.protocol import SloSpec
from streaming.session import Session
from streaming.webrtc.offer import check_offer
from streaming.webrtc.peer import SessionPeer

router = APIRouter(prefix="/v1/whip", tags=["whip"])

# Query keys that are not pipeline parameters. `token` is the AuthMiddleware's.
SESSION_KEY, PIPELINE_KEY, TOKEN_KEY = "session", "pipeline", "token"
SLO_KEYS = set(SloSpec.model_fields)
# The query as the OpenAPI page shows it; any other key is a pipeline parameter.
_QUERY = [{"name": SESSION_KEY, "in": "query", "required": False, "schema": {"type": "string"},
           "description": "Publish into this session (made with POST /v1/sessions) instead of a new one."},
          {"name": PIPELINE_KEY, "in": "query", "required": False, "schema": {"type": "string"},
           "description": "The new session's pipeline; the server's default when left out."},
          {"name": "target_fps", "in": "query", "required": False, "schema": {"type": "number"}},
          {"name": "latency_budget_ms", "in": "query", "required": False, "schema": {"type": "number"}}]


def query_value(raw: str) -> Any:
    """Lists and objects come as JSON (`t_index_list=[20,35]`); anything else stays a string,
    which the parameter schema converts where it expects a number or a bool."""
    if raw[:1] in "[{":
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):
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
        where = ".".join(str(p) for p in first["loc"])
        raise StreamError(ErrorCode.BAD_PARAMS, f"{where}: {first['msg']}", field=where) from None
    return session_id, pipeline, {k: query_value(v) for k, v in query.items()}, slo


@router.post("", status_code=201, response_class=Response, openapi_extra={**SDP_BODY, "parameters": _QUERY}, responses={
    201: {"content": {"application/sdp": {}}, "description": "the SDP answer; Location names the resource"},
    400: {"description": "bad_sdp: not a usable SDP offer; bad_params, unknown_pipeline"},
    401: {"description": "missing or wrong Bearer token"},
    404: {"description": "?session= names no session"}, 409: {"description": "that session already has a publisher"},
    413: {"description": "an offer over 64 KiB"}, 415: {"description": "not application/sdp"},
    422: {"description": "no video codec we decode (send H.264 or VP8)"}, 429: {"description": "too many sessions for this token"},
    503: {"description": "busy, out of memory or still loading"}})
async def publish(request: Request, context: ServerContext = Depends(server_context)) -> Response:
    """Publish media into a session. Pipeline, parameters (any other query key) and SLO
    (`target_fps`, `latency_budget_ms`) come from the query string, or `session=` names a
    session created with POST /v1/sessions."""
    sessions, owner = context.sessions, token_owner(request)
    try:
        # Everything the request says is checked before a session or a peer exists.
        offer = await read_offer(request)
        check_offer(offer)
        session_id, pipeline, params, slo = session_request(request)
        if session_id is not None:
            sessions.check_attachable(session_id)
        check_room_for_peer(context)
        session = await sessions.create(pipeline, params, slo, owner=owner) if session_id is None else sessions.get(session_id)
    except StreamError as err:
        return refusal(err)
    made_here = session_id is None  # a session made by this POST ends with its publisher
    try:
        peer = new_peer(context, "whip", receive=True, send=False, owner=owner)
        try:
            sessions.attach_stream(session.id, peer.sink, sends_video=False)  # its players' output is the session's
        except StreamError:
            await peer.close()
            raise
    except StreamError as err:  # another request took the last connection, or the publisher's place, meanwhile
        if made_here:
            sessions.close(session.id)
        return refusal(err)
    peer.bind(session, as_stream=True, release=(lambda: sessions.close(session.id)) if made_here else (lambda: _detach(session, peer)))
    try:
        answer = await answer_or_close(peer, offer, request)  # closing the peer releases the session
    except StreamError as err:
        return refusal(err)
    return created(answer, str(request.url_for("whip_resource", resource_id=peer.id)), session.id)


def _detach(session: Session, peer: SessionPeer) -> None:
    """Leave a REST-made session to its next publisher."""
    if session.sink == peer.sink:
        session.sink = None
        session.touch()  # the idle timeout counts from the publisher leaving


add_endpoint_routes(router, "")
add_resource_routes(router, "/{resource_id}", "whip", "whip_resource",
                    "Stop publishing: the connection closes, and the session with it unless it was made over REST.")
