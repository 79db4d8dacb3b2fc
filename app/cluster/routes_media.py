"""The front door's WebRTC doors: every offer is answered by a worker, so the front door answers 307 to it.

- `POST /v1/whip`: placed by the query's pipeline, parameters and SLO (or `?session=` names a session: its
  worker); RFC 9725 §4.5 lets a WHIP endpoint redirect, and clients re-POST the offer there.
- `POST /v1/whep/{session}` and `GET /player/{session}`: the session's worker (`latest`: the newest session of
  the whole cluster; the player then follows that worker's newest).
- `POST /v1/webrtc/offer`: placed as a session of the default pipeline (the offer does not say which pipeline
  its `start` will ask for); to place by your own, create the session over REST and offer to its `urls.webrtc`.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response

from app.cluster.context import FrontDoor, front_door, same_request_on
from app.cluster.pool import Worker
from app.routes_whep import LATEST
from app.routes_whip import session_request
from app.sdp_exchange import add_endpoint_routes, refusal
from streaming.errors import StreamError
from streaming.protocol import SloSpec

router = APIRouter(tags=["webrtc"])

_REDIRECT = {307: {"description": "to the worker that answers the offer: POST it again there"},
             503: {"description": "busy: no worker admits the session (the reason names each); not_ready"}}


@router.post("/v1/whip", status_code=307, responses={**_REDIRECT, 404: {"description": "?session= names no session"},
                                                     502: {"description": "worker_failed: that session's worker died"}})
async def publish(request: Request, door: FrontDoor = Depends(front_door)) -> Response:
    """WHIP ingest: 307 to the worker the new session is placed on (or the worker of `?session=`)."""
    try:
        session_id, pipeline, params, slo = session_request(request)
        worker = await door.pool.locate(session_id) if session_id else (await door.pool.place(pipeline, params, slo))[0]
    except StreamError as err:
        return refusal(err)
    return same_request_on(door, worker, request)


@router.post("/v1/whep/{session_id}", status_code=307, responses={**_REDIRECT, 404: {"description": "no such session"}})
async def watch(session_id: str, request: Request, door: FrontDoor = Depends(front_door)) -> Response:
    """WHEP egress: 307 to the worker the session runs on."""
    try:
        worker = await _worker_of(door, session_id)
    except StreamError as err:
        return refusal(err)
    return same_request_on(door, worker, request)


@router.get("/player/{session_id}", status_code=307, tags=["pages"])
async def player_page(session_id: str, request: Request, door: FrontDoor = Depends(front_door)) -> Response:
    """The receive-only player, served by the session's worker."""
    return same_request_on(door, await _worker_of(door, session_id), request)


@router.post("/v1/webrtc/offer", status_code=307, responses=_REDIRECT)
async def offer(request: Request, door: FrontDoor = Depends(front_door)) -> Response:
    """307 to the least loaded worker that admits a session of the default pipeline."""
    worker, _ = await door.pool.place(None, {}, SloSpec())
    return same_request_on(door, worker, request)


async def _worker_of(door: FrontDoor, session_id: str) -> Worker:
    """`latest` stays `latest` on the worker it sends to: the worker of the cluster's newest session."""
    return door.pool.latest()[0] if session_id == LATEST else await door.pool.locate(session_id)


add_endpoint_routes(router, "/v1/whip")
add_endpoint_routes(router, "/v1/whep/{session_id}")
