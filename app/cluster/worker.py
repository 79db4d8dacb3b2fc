"""One worker of a cluster: the unchanged server core (`app.server.create_app`) on its own port, inside a Ray actor.

The actor is the unit Ray places (a GPU, or a node with its stage group), watches and restarts; the server in
it is the one `latentcast serve` runs, so a session on a worker behaves exactly as on a lone server. Clients
reach it directly at `url` once the front door has placed them; the front door reads it only through the
methods below, which run on the actor's threads and hop onto the server's event loop for anything that
touches the sessions.

A restart re-runs the constructor: a new server, a new `incarnation`, and none of the sessions it had.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import uvicorn
from fastapi.middleware.cors import CORSMiddleware

from app.cluster.reports import AdmissionAnswer, SessionEntry, WorkerStatus
from app.serve import uvicorn_config
from app.server import create_app
from app.settings import Settings
from pipelines.base import ParamError, parse_params
from streaming.capacity import CAPACITY, Demand, forecast
from streaming.errors import ErrorCode, StreamError
from streaming.protocol import SloSpec
from streaming.sessions import SessionManager, resolve_slo, session_demand

T = TypeVar("T")

START_TIMEOUT_S = 120.0  # the server listening (models load afterwards, in the background)
LOOP_TIMEOUT_S = 5.0     # a question to the server's event loop
PROBE_ID = "placement-probe"


class ClusterWorker:
    """The body of the Ray actor (`ray.remote(ClusterWorker)` in app.cluster.pool)."""

    def __init__(self, name: str, settings: Settings, bind_host: str | None, port: int):
        import ray  # in the actor's process only: the module imports without Ray

        self.name = name
        self.node_ip = ray.util.get_node_ip_address()
        self.incarnation = secrets.token_hex(6)
        self.draining = False
        self.settings = settings.model_copy(update={"host": bind_host or self.node_ip, "port": port})
        self.app = create_app(self.settings)
        # The demo page comes from the front door and calls this worker from there (the WebRTC offer); tokens
        # travel in headers or the URL, never in cookies, so any origin may call, as on the WHIP/WHEP routes.
        self.app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["*"], allow_headers=["*"],
                                expose_headers=["Location", "Latentcast-Session-Id"])
        self.context = self.app.state.context
        self._refuse_new_sessions_while_draining(self.context.sessions)
        self.server = uvicorn.Server(uvicorn_config(self.app, self.settings))
        self.thread = threading.Thread(target=self.server.run, name=f"server-{name}", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (self.server.started and self.context.sessions.loop is not None):
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"worker {name}: the server did not start on {self.settings.host}:{port}")
            time.sleep(0.02)
        bound = self.server.servers[0].sockets[0].getsockname()[1]
        advertised = self.node_ip if self.settings.host in ("0.0.0.0", "::") else self.settings.host
        self.url = f"http://{advertised}:{bound}"

    def _refuse_new_sessions_while_draining(self, sessions: SessionManager) -> None:
        """Every door (REST, socket, WebRTC, WHIP) makes sessions through `create`: while draining it refuses
        them all, and streams may still attach to the sessions this worker already has."""
        create = sessions.create

        async def create_unless_draining(*args: Any, **kwargs: Any):
            if self.draining:
                raise StreamError(ErrorCode.BUSY, f"worker {self.name} is draining and takes no new sessions: "
                                  "start the session at the cluster's front door")
            return await create(*args, **kwargs)

        sessions.create = create_unless_draining  # type: ignore[method-assign]

    # --- what the front door asks (through Ray) ----------------------------------------------------

    def describe(self) -> WorkerStatus:
        return self._on_server_loop(self._status)

    def forecast(self, pipeline: str | None, params: dict[str, Any], slo: dict[str, Any]) -> AdmissionAnswer:
        """Would this worker's admission control take a session asking for this now?"""
        return self._on_server_loop(lambda: self._forecast(pipeline, params, slo))

    def drain(self) -> None:
        """Take no new sessions from now on; the running ones go on."""
        self.draining = True

    def stop(self, message: str) -> int:
        """End the sessions left (`stopped`, reason `shutdown`, with `message`) and stop the server; returns how many."""
        sessions = self.context.sessions
        ended = self._on_server_loop(lambda: len(sessions.sessions))
        self._on_server_loop(lambda: sessions.close_all("shutdown", message))
        self.server.should_exit = True
        self.thread.join(15)
        return ended

    # --- on the server's event loop ----------------------------------------------------------------

    def _on_server_loop(self, fn: Callable[[], T]) -> T:
        loop = self.context.sessions.loop
        assert loop is not None, "the server started, so its sessions have their loop"

        async def call() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), loop).result(LOOP_TIMEOUT_S)

    def _status(self) -> WorkerStatus:
        sessions, worker = self.context.sessions, self.context.worker
        now = time.monotonic()
        running = [session_demand(s.id, s.pipeline_name, s.pipeline, s.params, s.slo, s.stats.input_fps(now))
                   for s in sessions.sessions.values()]
        return WorkerStatus(
            incarnation=self.incarnation, url=self.url, node_ip=self.node_ip, pid=os.getpid(),
            ready=worker.ready.is_set(), failed=str(worker.failed) if worker.failed else None, draining=self.draining,
            sessions=tuple(SessionEntry(s.id, s.pipeline_name, s.created_wall, s.sink is not None) for s in sessions.sessions.values()),
            max_sessions=sessions.max_sessions, queued=sessions.queued,
            load=forecast(running, worker.costs).utilization / CAPACITY, pipelines=tuple(worker.pipelines))

    def _forecast(self, pipeline_name: str | None, params: dict[str, Any], slo: dict[str, Any]) -> AdmissionAnswer:
        sessions = self.context.sessions
        try:
            demand = self._demand(sessions, pipeline_name, params, SloSpec.model_validate(slo))
        except StreamError as err:
            if err.code in (ErrorCode.NOT_READY, ErrorCode.PIPELINE_FAILED):  # this worker's state, not the request's
                return AdmissionAnswer(False, err.message, 0.0, 0.0)
            return AdmissionAnswer(False, err.message, 0.0, 0.0, error=err.to_dict())
        if self.draining:
            return AdmissionAnswer(False, "draining", 0.0, 0.0)
        decision = sessions.forecast_admission(demand)
        estimate = decision.estimate
        return AdmissionAnswer(decision.admitted, decision.reason, estimate.utilization / CAPACITY,
                               estimate.need[PROBE_ID] / CAPACITY, decision.max_fps)

    @staticmethod
    def _demand(sessions: SessionManager, pipeline_name: str | None, params: dict[str, Any], slo: SloSpec) -> Demand:
        """The request as admission control counts it; StreamError when this worker could not take it at all."""
        worker = sessions.worker
        if not worker.ready.is_set():
            raise StreamError(ErrorCode.NOT_READY, f"loading the models failed ({worker.failed})" if worker.failed else "still loading")
        name = pipeline_name or sessions.default_pipeline or ""
        pipeline = worker.pipelines.get(name)
        if pipeline is None:
            raise StreamError(ErrorCode.UNKNOWN_PIPELINE, f"unknown pipeline {name!r}; the workers run {', '.join(worker.pipelines)}")
        if name in worker.failed_pipelines:
            raise StreamError(ErrorCode.PIPELINE_FAILED, f"pipeline {name} failed here: {worker.failed_pipelines[name]}")
        try:
            parsed = parse_params(pipeline.params_model, params)
        except ParamError as err:
            raise StreamError(ErrorCode.BAD_PARAMS, str(err), field=err.field) from None
        return session_demand(PROBE_ID, name, pipeline, parsed, resolve_slo(slo, pipeline))
