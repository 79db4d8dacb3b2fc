"""The sessions of a server: admission, creation, parameter updates, closing and idle reaping.

Lives on the event loop. Anything that touches pipeline state (building it, updating it,
dropping it) is handed to the compute worker, which runs it between ticks; callers await the
result, so an update is acknowledged only once it is in force.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, Field

from pipelines.base import ParamError, UpdateClass, merge_params, parse_params, update_class_of
from streaming.errors import ErrorCode, StreamError
from streaming.metrics import ServerMetrics, SessionSample
from streaming.protocol import SloSpec
from streaming.session import Session, SessionClosed, SessionEvent, needs_input
from streaming.worker import ComputeWorker

log = logging.getLogger(__name__)

_CLASS_ORDER = [UpdateClass.HOT, UpdateClass.RESET, UpdateClass.RELOAD]


class SessionInfo(BaseModel):
    id: str
    pipeline: str
    params: dict[str, Any]
    slo: SloSpec
    streaming: bool = Field(description="A stream connection is attached and carries its media.")
    created_at: float = Field(description="Unix time of creation.")


class UpdateReport(BaseModel):
    """What an accepted update did: the body of a WebSocket `ack` and of a REST PATCH reply."""

    applied: list[str] = Field(description="Parameters that changed.")
    update_class: UpdateClass | None = Field(
        description="hot: in force from the next frame, frames in flight kept; reset: frames in flight were discarded "
        "and the pipe warms up again. The strongest class among `applied`; null when only the SLO changed.")
    reset: bool
    discarded_frames: int
    params: dict[str, Any] = Field(description="The full parameter set now in force.")
    slo: SloSpec


class SessionManager:
    def __init__(self, worker: ComputeWorker, metrics: ServerMetrics, *, max_sessions: int, idle_timeout_s: float,
                 audio_buffer_s: float):
        self.worker = worker
        self.metrics = metrics
        self.max_sessions = max_sessions
        self.idle_timeout_s = idle_timeout_s
        self.audio_buffer_s = audio_buffer_s
        self.sessions: dict[str, Session] = {}
        self._admitting = 0  # sessions being created: counted so concurrent creates cannot overshoot

    @property
    def default_pipeline(self) -> str | None:
        return next(iter(self.worker.pipelines), None)

    def get(self, session_id: str) -> Session:
        try:
            return self.sessions[session_id]
        except KeyError:
            raise StreamError(ErrorCode.UNKNOWN_SESSION, f"no session {session_id!r} (it may have ended or timed out)") from None

    async def create(self, pipeline_name: str | None, params: Mapping[str, Any], slo: SloSpec) -> Session:
        if not self.worker.ready.is_set():
            state = f"loading the models failed ({self.worker.failed})" if self.worker.failed else "models are still loading"
            raise StreamError(ErrorCode.NOT_READY, f"{state}; see /health")
        name = pipeline_name or self.default_pipeline
        pipeline = self.worker.pipelines.get(name or "")
        if pipeline is None:
            raise StreamError(ErrorCode.UNKNOWN_PIPELINE, f"unknown pipeline {name!r}; this server runs {', '.join(self.worker.pipelines)}")
        if len(self.sessions) + self._admitting >= self.max_sessions:
            self.metrics.sessions_refused.labels("busy").inc()
            raise StreamError(ErrorCode.BUSY, f"server busy: all {self.max_sessions} session slots are in use; retry later")
        session_id = secrets.token_hex(8)

        def build() -> tuple[BaseModel, Any]:
            parsed = parse_params(pipeline.params_model, params)
            return parsed, pipeline.new_state(parsed, stream_id=session_id)

        self._admitting += 1
        try:
            parsed, state = await asyncio.wrap_future(self.worker.call(build))
        except ParamError as err:
            raise StreamError(ErrorCode.BAD_PARAMS, str(err), field=err.field) from None
        finally:
            self._admitting -= 1
        session = Session(session_id, name, pipeline, parsed, state, slo, self.metrics.for_pipeline(name),
                          self.audio_buffer_s, self.worker.wake)
        self.sessions[session_id] = session
        self.metrics.sessions_active.set(len(self.sessions))
        await asyncio.wrap_future(self.worker.attach(session))
        log.info("session %s opened on %s", session_id, name)
        return session

    def attach_stream(self, session_id: str, sink: Callable[[SessionEvent], None]) -> Session:
        """Connect a transport to a session created over REST."""
        session = self.get(session_id)
        if session.sink is not None:
            raise StreamError(ErrorCode.SESSION_ATTACHED, f"session {session_id} already has a stream connected")
        session.sink = sink
        session.touch()
        return session

    async def update(self, session: Session, changes: Mapping[str, Any], slo: SloSpec | None = None) -> UpdateReport:
        """Apply a partial parameter update between ticks; StreamError(bad_params) leaves the session as it was."""
        session.touch()
        pipeline = session.pipeline

        def apply():
            if session.closed:
                raise StreamError(ErrorCode.UNKNOWN_SESSION, f"session {session.id} has ended")
            result = pipeline.update(session.state, changes) if changes else None
            if changes:
                session.params = merge_params(session.params, changes)
                session.needs_input = needs_input(pipeline, session.params)
            if slo is not None:
                session.set_slo(slo)
                session.next_due = time.monotonic()
            return result

        try:
            result = await asyncio.wrap_future(self.worker.call(apply))
        except ParamError as err:
            raise StreamError(ErrorCode.BAD_PARAMS, str(err), field=err.field) from None
        classes = {update_class_of(pipeline.params_model, name) for name in result.applied} if result else set()
        return UpdateReport(
            applied=result.applied if result else [],
            update_class=max(classes, key=_CLASS_ORDER.index) if classes else None,
            reset=bool(result and result.reset),
            discarded_frames=result.discarded_frames if result else 0,
            params=session.params.model_dump(mode="json"),
            slo=session.slo,
        )

    def close(self, session_id: str, reason: str | None = None, message: str = "") -> bool:
        """End a session now: its inputs, outputs and pipeline state are released. `reason` is
        told to a connected stream when the server (not its client) ended it."""
        session = self.sessions.pop(session_id, None)
        if session is None:
            return False
        if reason is not None:
            session.emit(SessionClosed(reason, message))
        session.closed = True
        session.video_in.take()
        session.audio_in.drain()
        self.worker.detach(session_id)
        self.metrics.sessions_active.set(len(self.sessions))
        log.info("session %s closed (%s)", session_id, reason or "client left")
        return True

    def close_all(self, reason: str, message: str) -> None:
        for session_id in list(self.sessions):
            self.close(session_id, reason, message)

    def reap_idle(self, now: float) -> list[str]:
        """Close sessions nothing has come from for the idle timeout. A stream that needs no input
        (txt2img) counts as active while its connection is open: the socket's pings catch dead peers."""
        idle = [s.id for s in self.sessions.values()
                if now - s.last_activity > self.idle_timeout_s and not (s.sink is not None and not s.needs_input)]
        for session_id in idle:
            self.close(session_id, ErrorCode.IDLE_TIMEOUT.value, f"nothing received for {self.idle_timeout_s:g} s")
        return idle

    async def reap_forever(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.idle_timeout_s / 4))
            self.reap_idle(time.monotonic())

    def info(self, session: Session) -> SessionInfo:
        return SessionInfo(id=session.id, pipeline=session.pipeline_name, params=session.params.model_dump(mode="json"),
                           slo=session.slo, streaming=session.sink is not None, created_at=session.created_wall)

    def samples(self) -> list[SessionSample]:
        return [SessionSample(s.id, s.pipeline_name, s.stats.snapshot()) for s in list(self.sessions.values())]
