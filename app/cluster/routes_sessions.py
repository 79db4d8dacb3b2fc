"""The front door's REST session routes: a create is placed and made on the chosen worker, which answers with
the session plus the worker's URLs for everything that follows; the routes of one session send the client to its
worker (307); the list gathers every worker's.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from app.cluster.context import FrontDoor, front_door, same_request_on
from app.cluster.pool import Worker
from app.routes_sessions import SessionCreate
from streaming.errors import ErrorCode, StreamError
from streaming.sessions import SessionInfo

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])


class SessionUrls(BaseModel):
    base: str = Field(description="The worker's base URL.")
    session: str = Field(description="GET, PATCH, DELETE the session here.")
    stats: str
    stream: str = Field(description="WebSocket: connect and send `start` with this session's id.")
    webrtc: str = Field(description="POST a WebRTC offer here, then `start` with this session's id on the data channel.")
    whip: str = Field(description="Publish into the session over WHIP.")
    whep: str = Field(description="Watch its output over WHEP.")
    player: str = Field(description="A receive-only player page of its output.")


class PlacedSession(SessionInfo):
    worker: str = Field(description="The worker it was placed on; it stays there for its whole life.")
    urls: SessionUrls


def session_urls(door: FrontDoor, worker: Worker, session_id: str, request: Request) -> SessionUrls:
    def url(path: str, query: dict[str, str] | None = None, scheme: str | None = None) -> str:
        return door.worker_url(worker, path, request, query, scheme)

    stream_scheme = "wss" if url("/").startswith("https") else "ws"
    return SessionUrls(base=url("/"), session=url(f"/v1/sessions/{session_id}"), stats=url(f"/v1/sessions/{session_id}/stats"),
                       stream=url("/v1/stream", scheme=stream_scheme), webrtc=url("/v1/webrtc/offer"),
                       whip=url("/v1/whip", {"session": session_id}), whep=url(f"/v1/whep/{session_id}"), player=url(f"/player/{session_id}"))


@router.post("", status_code=201, response_model=PlacedSession, responses={
    400: {"description": "bad_params, unknown_pipeline, bad_json"}, 422: {"description": "bad_message"},
    429: {"description": "too_many_sessions"}, 503: {"description": "busy: no worker admits it (the reason names each); not_ready"}})
async def create_session(body: SessionCreate, request: Request, door: FrontDoor = Depends(front_door)) -> Any:
    """Place a session on the least loaded worker that admits it and create it there; `urls` say where to reach it."""
    worker, _ = await door.pool.place(body.pipeline, body.params, body.slo)
    assert worker.status is not None
    try:
        made = await door.http.post(f"{worker.status.url}/v1/sessions", json=body.model_dump(mode="json", exclude_unset=True),
                                    headers=door.forwarded_credentials(request))
    except httpx.HTTPError as err:
        raise StreamError(ErrorCode.WORKER_FAILED, f"worker {worker.name} did not answer the create ({type(err).__name__}); retry") from None
    if made.status_code != 201:  # refused there after all (a race for its last room): its answer, as it is
        return JSONResponse(made.json(), status_code=made.status_code, headers={k: v for k, v in made.headers.items() if k == "retry-after"})
    info = SessionInfo.model_validate(made.json())
    await door.pool.refresh(worker)  # so that its own routes find it at once, not after the next status poll
    return PlacedSession(**info.model_dump(), worker=worker.name, urls=session_urls(door, worker, info.id, request))


@router.get("", response_model=list[PlacedSession])
async def list_sessions(request: Request, door: FrontDoor = Depends(front_door)) -> list[PlacedSession]:
    """Every worker's sessions, with where each runs."""
    workers = [w for w in door.pool.workers.values() if w.state in ("up", "draining") and w.status is not None]

    async def of(worker: Worker) -> list[PlacedSession]:
        assert worker.status is not None
        try:
            listed = await door.http.get(f"{worker.status.url}/v1/sessions", headers=door.forwarded_credentials(request))
            listed.raise_for_status()
        except httpx.HTTPError:
            return []  # gone since its last status: its sessions with it
        return [PlacedSession(**SessionInfo.model_validate(s).model_dump(), worker=worker.name,
                              urls=session_urls(door, worker, s["id"], request)) for s in listed.json()]

    return [s for sessions in await asyncio.gather(*(of(w) for w in workers)) for s in sessions]


_ONE_SESSION = {307: {"description": "the session's worker: the same request there"}, 404: {"description": "unknown_session"},
                502: {"description": "worker_failed: the worker that held it died, and the session with it"}}


@router.api_route("/{session_id}", methods=["GET", "PATCH", "DELETE"], status_code=307, responses=_ONE_SESSION)
async def one_session(session_id: str, request: Request, door: FrontDoor = Depends(front_door)) -> Response:
    """A session's own routes live on its worker: 307 there (GET, PATCH and DELETE keep their method and body)."""
    return same_request_on(door, await door.pool.locate(session_id), request)


@router.api_route("/{session_id}/{route:path}", methods=["GET", "PUT", "POST", "PATCH", "DELETE"], status_code=307,
                  responses=_ONE_SESSION)
async def session_subroute(session_id: str, route: str, request: Request, door: FrontDoor = Depends(front_door)) -> Response:
    """Every route under a session (stats, image uploads, control pictures, its OSC address, any
    added later) lives on its worker: 307 there, method and body kept."""
    return same_request_on(door, await door.pool.locate(session_id), request)
