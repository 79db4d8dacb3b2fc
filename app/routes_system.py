"""Server-wide routes: health, Prometheus metrics, the pipelines and their schemas, browser tokens."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel

from app import __version__
from app.context import ServerContext, server_context
from pipelines.base import parse_params
from streaming.errors import ErrorCode, StreamError
from streaming.protocol import PROTOCOL_VERSION

router = APIRouter(tags=["server"])


@router.get("/health", responses={503: {"description": "still loading, or loading failed"}})
async def health(context: ServerContext = Depends(server_context)) -> JSONResponse:
    """`ready` once the models are loaded and warm; 503 while `loading` or after a `failed` load. `step_costs_ms`:
    the measured cost of a step per pipeline and batch composition (cost shape * streams), which admission
    control and the scheduler plan with. `failed_pipelines`: pipelines that lost a stage process since, and why."""
    worker = context.worker
    status = "ready" if worker.ready.is_set() else "failed" if worker.failed else "loading"
    body = {"status": status, "version": __version__, "protocol": PROTOCOL_VERSION,
            "pipelines": list(worker.pipelines), "sessions": len(context.sessions.sessions),
            "max_sessions": context.sessions.max_sessions, "step_costs_ms": worker.costs.snapshot()}
    if worker.failed:
        body["error"] = str(worker.failed)
    if worker.failed_pipelines:  # still serving its other pipelines
        body["failed_pipelines"] = dict(worker.failed_pipelines)
    return JSONResponse(body, status_code=200 if status == "ready" else 503)


@router.get("/metrics", response_class=Response)
async def metrics(context: ServerContext = Depends(server_context)) -> Response:
    """Prometheus text format: server-wide counters and histograms, and per-session gauges."""
    context.metrics.ready.set(1 if context.worker.ready.is_set() else 0)
    return Response(context.metrics.render(), media_type=CONTENT_TYPE_LATEST)


class PipelineInfo(BaseModel):
    name: str
    kind: str
    params_schema: dict[str, Any]
    defaults: dict[str, Any]


class PipelineList(BaseModel):
    default: str | None
    pipelines: list[PipelineInfo]


@router.get("/v1/pipelines", response_model=PipelineList)
async def pipelines(context: ServerContext = Depends(server_context)) -> PipelineList:
    """The loaded pipelines with their parameter schema (bounds, and `update`: hot or reset per field)."""
    return PipelineList(
        default=context.sessions.default_pipeline,
        pipelines=[PipelineInfo(name=name, kind=p.kind.value, params_schema=p.params_model.model_json_schema(),
                                defaults=parse_params(p.params_model, None).model_dump(mode="json"))
                   for name, p in context.worker.pipelines.items()],
    )


class BrowserToken(BaseModel):
    token: str
    expires_at: float


@router.post("/v1/tokens", response_model=BrowserToken, responses={400: {"description": "auth_disabled"}})
async def issue_token(context: ServerContext = Depends(server_context)) -> BrowserToken:
    """A short-lived token for a browser: open `/?token=...`, or use it in a socket URL."""
    if not context.auth.enabled:
        raise StreamError(ErrorCode.AUTH_DISABLED, "this server has no API token, so it needs no browser tokens")
    token, expires = context.auth.issue(context.settings.browser_token_ttl_s)
    return BrowserToken(token=token, expires_at=expires)
