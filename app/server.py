"""The FastAPI application: routes, the compute worker's lifetime, auth, and the demo page.

`create_app` takes the pipeline loader as an argument so tests can serve pipelines of their own
through exactly the same server.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from app import __version__
from app.auth import AuthMiddleware, TokenAuthority, check_bind
from app.context import ServerContext
from app.routes_sessions import router as sessions_router
from app.routes_system import router as system_router
from app.settings import Settings
from app.ws import router as ws_router
from pipelines.base import Pipeline
from pipelines.registry import ModelOptions, load_pipeline, pipeline_names
from streaming.errors import ErrorCode, StreamError
from streaming.metrics import ServerMetrics
from streaming.sessions import SessionManager
from streaming.worker import ComputeWorker

log = logging.getLogger(__name__)

_HTTP_STATUS = {ErrorCode.BUSY: 503, ErrorCode.NOT_READY: 503, ErrorCode.UNKNOWN_SESSION: 404,
                ErrorCode.SESSION_ATTACHED: 409, ErrorCode.INTERNAL: 500}
CODEC_THREADS = 4


def web_root() -> Path:
    """The demo's static files; `web` is a package so they install with the wheel."""
    return Path(str(files("web")))


def load_configured_pipelines(settings: Settings) -> dict[str, Pipeline]:
    """The pipelines named in the settings, in order (the first is the default), built once."""
    options = ModelOptions(preset=settings.preset, device=settings.device, dtype=settings.dtype,
                           model_dir=settings.model_dir, random_weights=settings.random_weights)
    installed = set(pipeline_names())
    loaded: dict[str, Pipeline] = {}
    for name in settings.pipelines:
        if name not in installed:
            log.warning("pipeline %r is not installed here; skipped (installed: %s)", name, ", ".join(sorted(installed)))
            continue
        loaded[name] = load_pipeline(name, options)
    if not loaded:
        raise RuntimeError(f"none of the pipelines {settings.pipelines} is installed")
    return loaded


def create_app(settings: Settings, load_pipelines: Callable[[], Mapping[str, Pipeline]] | None = None) -> FastAPI:
    api_token = settings.api_token.get_secret_value() if settings.api_token else None
    check_bind(settings.host, api_token)
    worker = ComputeWorker(load_pipelines or (lambda: load_configured_pipelines(settings)),
                           warmup=settings.warmup, max_batch=settings.max_batch)
    metrics = ServerMetrics()
    sessions = SessionManager(worker, metrics, max_sessions=settings.max_sessions,
                              idle_timeout_s=settings.session_idle_timeout_s, audio_buffer_s=settings.audio_buffer_s)
    metrics.track_sessions(sessions.samples)
    context = ServerContext(settings, worker, sessions, metrics, TokenAuthority(api_token),
                            ThreadPoolExecutor(CODEC_THREADS, thread_name_prefix="codec"))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        worker.start()
        reaper = asyncio.create_task(sessions.reap_forever())
        try:
            yield
        finally:
            reaper.cancel()
            sessions.close_all("shutdown", "the server is shutting down")
            await asyncio.to_thread(worker.stop)
            context.codec_pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="latentcast", version=__version__, lifespan=lifespan,
                  description="Real-time streaming media generation. Media and control stream over the WebSocket "
                  "`/v1/stream` (protocol in docs/protocol.md); these routes manage sessions and the server.")
    app.state.context = context
    app.include_router(system_router)
    app.include_router(sessions_router)
    app.include_router(ws_router)
    app.add_exception_handler(StreamError, _stream_error_response)
    app.add_exception_handler(RequestValidationError, _validation_error_response)
    app.mount("/", StaticFiles(directory=web_root(), html=True), name="web")
    app.add_middleware(AuthMiddleware, authority=context.auth)
    return app


async def _stream_error_response(request: Request, err: StreamError) -> JSONResponse:
    headers = {"Retry-After": "1"} if err.code is ErrorCode.BUSY else None
    return JSONResponse({"error": err.to_dict()}, status_code=_HTTP_STATUS.get(err.code, 400), headers=headers)


async def _validation_error_response(request: Request, err: RequestValidationError) -> JSONResponse:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    body = StreamError(ErrorCode.BAD_MESSAGE, f"{where}: {first['msg']}", field=where)
    return JSONResponse({"error": body.to_dict()}, status_code=422)
