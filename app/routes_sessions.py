"""REST routes for sessions: create, list, read, update parameters, read stats, delete.

A session made here gets its media by attaching a stream (`start` with its `session_id` on
/v1/stream); otherwise it times out like any idle session.
"""

from __future__ import annotations

import base64
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from app.auth import token_owner
from app.context import ServerContext, server_context
from streaming.codec import encode_image
from streaming.errors import ErrorCode, StreamError
from streaming.protocol import SloSpec
from streaming.sessions import SessionInfo, UpdateReport

IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp")

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


@router.put("/{session_id}/images/{field}", response_model=UpdateReport, responses={
    **_ERRORS, 413: {"description": "message_too_large"}, 415: {"description": "unsupported_media_type"}},
    openapi_extra={"requestBody": {"required": True, "content": {kind: {"schema": {"type": "string", "format": "binary"}}
                                                                 for kind in IMAGE_TYPES}}})
async def upload_image(session_id: str, field: str, request: Request, context: ServerContext = Depends(server_context)) -> UpdateReport:
    """Set an image parameter (one marked `"image": true` in the pipeline's schema, e.g. stream-diffusion's
    `image_prompt`) to the picture in the body (PNG, JPEG or WebP): the same update as sending it as a
    data URL, acknowledged the same way."""
    session = context.sessions.get(session_id)
    info = session.pipeline.params_model.model_fields.get(field)
    if info is None or not isinstance(info.json_schema_extra, dict) or not info.json_schema_extra.get("image"):
        images = [name for name, f in session.pipeline.params_model.model_fields.items()
                  if isinstance(f.json_schema_extra, dict) and f.json_schema_extra.get("image")]
        raise StreamError(ErrorCode.BAD_PARAMS, f"{field}: not an image parameter of {session.pipeline_name} "
                          f"(its image parameters: {', '.join(images) or 'none'})", field=field)
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind not in IMAGE_TYPES:
        raise StreamError(ErrorCode.UNSUPPORTED_MEDIA_TYPE, f"send the picture as {', '.join(IMAGE_TYPES)}, not {kind or 'no content type'}")
    body = await request.body()
    return await context.sessions.update(session, {field: f"data:{kind};base64,{base64.b64encode(body).decode()}"})


@router.get("/{session_id}/pictures/{name}", response_class=Response, responses={
    200: {"content": {"image/jpeg": {}}, "description": "the picture, JPEG"}, **_ERRORS})
def session_picture(session_id: str, name: str, context: ServerContext = Depends(server_context)) -> Response:
    """A picture the pipeline shows beside the stream's output (stream-diffusion: `control-0`, ... the
    newest control image of each ControlNet), as JPEG. 404 until there is one."""
    session = context.sessions.get(session_id)
    state = session.state
    pictures = {} if state is None else session.pipeline.stream_pictures(state)
    if name not in pictures:
        raise StreamError(ErrorCode.NOT_FOUND, f"session {session_id} has no picture {name!r} now "
                          f"(it has: {', '.join(pictures) or 'none'})")
    return Response(encode_image(pictures[name], "jpeg", 85), media_type="image/jpeg", headers={"Cache-Control": "no-store"})


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
