"""REST routes for sessions: create, list, read, update parameters, read stats, delete.

A session made here gets its media by attaching a stream (`start` with its `session_id` on
/v1/stream); otherwise it times out like any idle session.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from app.auth import token_owner
from app.context import ServerContext, server_context
from streaming.protocol import SloSpec
from streaming.sessions import SessionInfo, UpdateReport

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])


class SessionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pipeline: str | None = Field(None, description="Pipeline name (GET /v1/pipelines); the server's default when omitted.")
    params: dict[str, Any] = Field(default_factory=dict, description="Initial parameters; omitted ones take the schema's defaults.")
    slo: SloSpec = Field(default_factory=SloSpec)


class SessionUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    params: dict[str, Any] = Field(default_factory=dict, description="Only the parameters to change (last value wins).")
    slo: SloSpec | None = None


_ERRORS = {400: {"description": "bad_params, unknown_pipeline, bad_json"}, 404: {"description": "unknown_session"},
           422: {"description": "bad_message"}}


@router.post("", status_code=201, response_model=SessionInfo, responses={
    **_ERRORS, 429: {"description": "too_many_sessions: the short-lived token holds as many as it may"},
    503: {"description": "busy (admission control), not_ready (models loading), out_of_memory, pipeline_failed"}})
async def create_session(body: SessionCreate, request: Request, context: ServerContext = Depends(server_context)) -> SessionInfo:
    session = await context.sessions.create(body.pipeline, body.params, body.slo, owner=token_owner(request))
    return context.sessions.info(session)


@router.get("", response_model=list[SessionInfo])
async def list_sessions(context: ServerContext = Depends(server_context)) -> list[SessionInfo]:
    return [context.sessions.info(s) for s in list(context.sessions.sessions.values())]


@router.get("/{session_id}", response_model=SessionInfo, responses=_ERRORS)
async def read_session(session_id: str, context: ServerContext = Depends(server_context)) -> SessionInfo:
    session = context.sessions.get(session_id)
    session.touch()
    return context.sessions.info(session)


@router.patch("/{session_id}", response_model=UpdateReport, responses=_ERRORS)
async def update_session(session_id: str, body: SessionUpdate, context: ServerContext = Depends(server_context)) -> UpdateReport:
    """Change parameters between ticks; the reply comes once they are in force."""
    return await context.sessions.update(context.sessions.get(session_id), body.params, body.slo)


@router.get("/{session_id}/stats", responses=_ERRORS)
async def session_stats(session_id: str, context: ServerContext = Depends(server_context)) -> dict:
    """Time to first frame, fps in and out, latency percentiles, drops, deadline misses, queue wait, model time,
    the parameters in force and the quality level."""
    session = context.sessions.get(session_id)
    return {"session_id": session.id, "pipeline": session.pipeline_name, **session.stats_snapshot()}


@router.delete("/{session_id}", status_code=204, responses=_ERRORS)
async def delete_session(session_id: str, context: ServerContext = Depends(server_context)) -> Response:
    context.sessions.get(session_id)
    context.sessions.close(session_id, "deleted", "deleted over REST")
    return Response(status_code=204)
