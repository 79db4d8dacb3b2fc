"""Server-wide routes: health, Prometheus metrics, the pipelines and their schemas, browser tokens."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field

from app import __version__
from app.context import ServerContext, server_context
from app.style_thumbnails import INPUT, StyleThumbnails
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


class StyleInfo(BaseModel):
    prompt: str = Field(description="A prompt that works on this model")
    thumbnail: str = Field(description="URL of a PNG: the sample picture restyled by this model with `prompt`")


class PipelineInfo(BaseModel):
    name: str
    kind: str
    params_schema: dict[str, Any]
    defaults: dict[str, Any]
    styles: list[StyleInfo] = Field(default_factory=list, description="Prompts known to work, best first, each with a thumbnail "
                                    "rendered by the model itself; empty when any prompt goes")
    sample_thumbnail: str | None = Field(None, description="URL of the sample picture the style thumbnails start from")


class PipelineList(BaseModel):
    default: str | None
    pipelines: list[PipelineInfo]


@router.get("/v1/pipelines", response_model=PipelineList)
async def pipelines(context: ServerContext = Depends(server_context)) -> PipelineList:
    """The loaded pipelines with their parameter schema (bounds, and `update`: hot or reset per field)."""
    return PipelineList(
        default=context.sessions.default_pipeline,
        pipelines=[PipelineInfo(name=name, kind=p.kind.value, params_schema=p.params_model.model_json_schema(),
                                defaults=parse_params(p.params_model, None).model_dump(mode="json"),
                                styles=[StyleInfo(prompt=style, thumbnail=_thumbnail_url(name, style)) for style in p.styles()],
                                sample_thumbnail=_thumbnail_url(name, INPUT) if p.styles() else None)
                   for name, p in context.worker.pipelines.items()],
    )


def _thumbnail_url(pipeline: str, style: str) -> str:
    return f"v1/pipelines/{quote(pipeline)}/thumbnails/{quote(style)}.png"  # relative: it works behind a path prefix too


def style_thumbnails(request: Request) -> StyleThumbnails:
    state = request.app.state
    if not hasattr(state, "style_thumbnails"):
        state.style_thumbnails = StyleThumbnails(state.context.worker.call)
    return state.style_thumbnails


@router.get("/v1/pipelines/{name}/thumbnails/{style}.png", response_class=Response,
            responses={200: {"content": {"image/png": {}}}, 404: {"description": "no such pipeline or style"}})
async def style_thumbnail(name: str, style: str, context: ServerContext = Depends(server_context),
                          thumbnails: StyleThumbnails = Depends(style_thumbnails)) -> Response:
    """A style of `/v1/pipelines` (or `input`, the sample it starts from) as the pipeline's own model renders it,
    rendered on first request and kept."""
    pipeline = context.worker.pipelines.get(name)
    if pipeline is None or (style != INPUT and style not in pipeline.styles()):
        raise StreamError(ErrorCode.NOT_FOUND, f"pipeline {name!r} has no style {style!r}")
    png = (await thumbnails.of(name, pipeline))[style]
    return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=3600"})


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
