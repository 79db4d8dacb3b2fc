"""The front door: the server's FastAPI shape in a routing role, one address for the whole cluster.

It knows every worker through the pool (Ray), places each new session on the worker that admits it and sends
the client there; it serves the demo page, health, the cluster's metrics, the pipelines, browser tokens, and
the operators' routes (list the workers, drain one). Auth, body limits and error bodies are the lone server's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from app import __version__
from app.auth import AuthMiddleware, TokenAuthority, check_bind, token_owner
from app.body_limits import BodyLimitMiddleware
from app.cluster.context import FrontDoor, front_door
from app.cluster.metrics import cluster_metrics
from app.cluster.pool import WorkerPool
from app.cluster.routes_media import router as media_router
from app.cluster.routes_sessions import router as sessions_router
from app.cluster.settings import ClusterSettings
from app.cluster.stream_redirect import router as stream_router
from app.errors import install_error_handlers
from app.routes_system import BrowserToken, issue_token
from app.server import web_root
from app.settings import Settings
from pipelines.registry import plan_pipelines
from streaming.errors import ErrorCode, StreamError
from streaming.protocol import PROTOCOL_VERSION

router = APIRouter(tags=["cluster"])


def create_front_door(settings: Settings, options: ClusterSettings) -> FastAPI:
    api_token = settings.api_token.get_secret_value() if settings.api_token else None
    check_bind(settings.host, api_token)
    plan_pipelines(settings.pipelines, settings.preset)  # a bad name fails here, before any worker is made
    pool = WorkerPool(settings, options)
    door = FrontDoor(settings, options, pool, TokenAuthority(api_token), cluster_metrics(pool), httpx.AsyncClient(timeout=30.0))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await pool.start()
        try:
            yield
        finally:
            await pool.close(options.drain_timeout_s)
            await door.http.aclose()

    app = FastAPI(title="latentcast front door", version=__version__, lifespan=lifespan,
                  description="One address for a cluster of latentcast workers (docs/cluster.md): sessions are placed on a worker "
                  "and the client is sent there (307, REST `urls`, a WebSocket `redirect` message).")
    app.state.front_door = door
    app.state.context = door  # the routes it shares with the lone server (browser tokens) read settings and auth from here
    for routes in (router, sessions_router, media_router, stream_router):
        app.include_router(routes)
    install_error_handlers(app)
    app.mount("/", StaticFiles(directory=web_root(), html=True), name="web")
    app.add_middleware(BodyLimitMiddleware)
    app.add_middleware(AuthMiddleware, authority=door.auth)
    return app


@router.get("/health", responses={503: {"description": "no worker is up yet"}})
async def health(door: FrontDoor = Depends(front_door)) -> JSONResponse:
    """`ready` once a worker takes sessions; `workers`: each one's state, sessions and load."""
    workers = [w.describe() for w in door.pool.workers.values()]
    up = [w for w in door.pool.workers.values() if w.state == "up" and w.status is not None]
    body = {"status": "ready" if up else "loading", "role": "front-door", "version": __version__, "protocol": PROTOCOL_VERSION,
            "pipelines": list(up[0].status.pipelines) if up and up[0].status else [],
            "sessions": sum(len(w.sessions) for w in door.pool.workers.values()),
            "max_sessions": sum(w.status.max_sessions for w in up if w.status), "workers": workers}
    return JSONResponse(body, status_code=200 if up else 503)


@router.get("/metrics", response_class=Response)
async def metrics(door: FrontDoor = Depends(front_door)) -> Response:
    """Prometheus text: workers by state, session slots, and per worker its sessions, load, queue and restarts."""
    return Response(generate_latest(door.metrics), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/pipelines")
async def pipelines(request: Request, door: FrontDoor = Depends(front_door)) -> Any:
    """The workers' pipelines with their schemas (every worker runs the same)."""
    worker = door.pool.any_up()
    assert worker.status is not None
    try:
        answer = await door.http.get(f"{worker.status.url}/v1/pipelines", headers=door.forwarded_credentials(request))
    except httpx.HTTPError as err:
        raise StreamError(ErrorCode.WORKER_FAILED, f"worker {worker.name} did not answer ({type(err).__name__}); retry") from None
    return JSONResponse(answer.json(), status_code=answer.status_code)


router.add_api_route("/v1/tokens", issue_token, methods=["POST"], response_model=BrowserToken,
                     responses={400: {"description": "auth_disabled"}}, summary="Issue Token",
                     description="A short-lived token for a browser; every worker accepts it (they share the API token).")


@router.get("/v1/cluster/workers")
async def workers(door: FrontDoor = Depends(front_door)) -> list[dict[str, Any]]:
    """Every worker: state (starting, loading, up, failed, down, draining, dead), URL, process, restarts, sessions, load."""
    return [w.describe() for w in door.pool.workers.values()]


class DrainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    timeout_s: float | None = Field(None, ge=0, description="How long its sessions may go on (default: the cluster's drain timeout).")


@router.post("/v1/cluster/workers/{name}/drain", status_code=202, responses={
    401: {"description": "only the API token may drain"}, 404: {"description": "no such worker"}})
async def drain(name: str, request: Request, body: DrainRequest | None = None, door: FrontDoor = Depends(front_door)) -> dict[str, Any]:
    """Remove a worker: no session is placed on it any more and it refuses new ones; its sessions go on until they
    end or the timeout passes, when the rest are ended (`stopped`, reason `shutdown`) and it stops."""
    if door.auth.enabled and token_owner(request) is not None:
        raise StreamError(ErrorCode.UNAUTHORIZED, "draining a worker takes the API token, not a short-lived one")
    timeout = body.timeout_s if body is not None and body.timeout_s is not None else door.options.drain_timeout_s
    return (await door.pool.drain(name, timeout)).describe()
