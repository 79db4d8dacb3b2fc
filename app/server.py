"""The FastAPI application: routes, the compute worker's lifetime, auth, and the demo page.

`create_app` takes the pipeline loader as an argument so tests can serve pipelines of their own
through exactly the same server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from app import __version__
from app.api_docs import add_api_docs
from app.auth import AuthMiddleware, TokenAuthority, check_bind
from app.body_limits import BodyLimitMiddleware
from app.context import ServerContext
from app.errors import install_error_handlers
from app.live_control.routes import router as live_control_router
from app.live_control.service import LiveControl
from app.peers import router as peers_router
from app.routes_sessions import router as sessions_router
from app.routes_system import router as system_router
from app.routes_webrtc import router as webrtc_router
from app.routes_whep import router as whep_router
from app.routes_whip import router as whip_router
from app.settings import Settings
from app.ws import router as ws_router
from pipelines.base import Pipeline
from pipelines.registry import load_pipeline, plan_pipelines
from streaming.metrics import ServerMetrics
from streaming.sessions import SessionManager
from streaming.webrtc.peer import PeerRegistry
from streaming.worker import ComputeWorker

CODEC_THREADS = 4


def web_root() -> Path:
    """The demo's static files; `web` is a package so they install with the wheel."""
    return Path(str(files("web")))


def load_configured_pipelines(plan: list[tuple[str, str | None]], settings: Settings) -> dict[str, Pipeline]:
    """The planned pipelines, in order (the first is the default), each built once.

    --model-dir belongs to --preset's pipeline (without --preset, to the first that loads a model).
    """
    owner = next((name for name, preset in plan if preset and preset == settings.preset), None)
    owner = owner or next((name for name, preset in plan if preset), None)
    return {
        name: load_pipeline(name, settings.model_options(preset, settings.model_dir if name == owner else None))
        for name, preset in plan
    }


def create_app(settings: Settings, load_pipelines: Callable[[], Mapping[str, Pipeline]] | None = None) -> FastAPI:
    api_token = settings.api_token.get_secret_value() if settings.api_token else None
    check_bind(settings.host, api_token)
    if load_pipelines is None:
        plan = plan_pipelines(settings.pipelines, settings.preset)  # a bad name fails here, before binding
        load_pipelines = lambda: load_configured_pipelines(plan, settings)  # noqa: E731
    live_control = LiveControl.open(settings)  # OSC and MIDI (off by default): a bad port or mapping file fails here
    worker = ComputeWorker(load_pipelines, warmup=settings.warmup, max_batch=settings.max_batch,
                           stage_devices=settings.stage_devices)
    metrics = ServerMetrics()
    sessions = SessionManager(worker, metrics, max_sessions=settings.max_sessions, idle_timeout_s=settings.session_idle_timeout_s,
                              audio_buffer_s=settings.audio_buffer_s, max_sessions_per_owner=settings.max_sessions_per_token)
    metrics.track_sessions(sessions.samples)
    metrics.track_pipelines(lambda: list(worker.pipelines.items()))
    context = ServerContext(settings, worker, sessions, metrics, TokenAuthority(api_token),
                            ThreadPoolExecutor(CODEC_THREADS, thread_name_prefix="codec"), PeerRegistry())

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

    app = FastAPI(title="latentcast", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,  # add_api_docs
                  description="Real-time streaming media generation. Media and control stream over the WebSocket "
                  "`/v1/stream` (protocol in docs/protocol.md); these routes manage sessions and the server.")
    app.state.context = context
    app.state.live_control = live_control
    app.include_router(system_router)
    app.include_router(sessions_router)
    app.include_router(ws_router)
    app.include_router(peers_router)  # its lifespan closes every WebRTC peer before the sessions go
    app.include_router(webrtc_router)
    app.include_router(whip_router)
    app.include_router(whep_router)
    app.include_router(live_control_router)  # its lifespan stops OSC and MIDI before the sessions go
    install_error_handlers(app)
    add_api_docs(app)  # before the catch-all mount of the demo's files
    app.mount("/", StaticFiles(directory=web_root(), html=True), name="web")
    app.add_middleware(BodyLimitMiddleware)
    app.add_middleware(AuthMiddleware, authority=context.auth)  # outermost: nothing is read for a refused request
    return app
