"""The control half of the stream protocol (docs/protocol.md), shared by every transport.

The WebSocket endpoint and the WebRTC `control` data channel carry the same JSON messages:
`start` (create or attach a session, possibly waiting in the admission queue), `update` (acked
once in force), `stats`, `stop`, and what the server says on its own (`quality`, `stopped`,
errors about frames). `ControlProtocol` answers all of them; a transport subclass only says how
bytes leave (`send_json`), how session events reach it (`sink`), what to set up once a session
is bound (`on_started`), and how to hang up (`close_transport`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from streaming.errors import ErrorCode, StreamError
from streaming.metrics import ServerMetrics
from streaming.protocol import PROTOCOL_VERSION, StartMessage, StatsRequest, StopMessage, UpdateMessage, parse_control, request_id_of
from streaming.session import QualityChanged, Session, SessionClosed, SessionEvent, StreamNotice
from streaming.sessions import QueuedCallback, SessionManager
from streaming.stats import StatCount

log = logging.getLogger(__name__)


class ControlProtocol:
    # Exceptions that mean the peer has gone: background sends then end quietly.
    GONE: tuple[type[BaseException], ...] = (RuntimeError, ConnectionError)

    def __init__(self, sessions: SessionManager, metrics: ServerMetrics, *, max_control_bytes: int, stats_interval_s: float,
                 owner: str | None = None):
        self.sessions = sessions
        self.owner = owner  # the short-lived token the connection came with: its sessions count against it
        self.metrics = metrics
        self.max_control_bytes = max_control_bytes
        self.stats_interval_s = stats_interval_s
        self.session: Session | None = None
        self._starting = False  # a start is being admitted (it may wait in line)
        self._tasks: set[asyncio.Task] = set()

    @property
    def started_session(self) -> Session:
        """The session, for what runs only once one started: handle_text answers NOT_STARTED to
        requests before `session` is set, and it is never cleared afterwards."""
        session = self.session
        assert session is not None, "a request that needs a session ran before one started"
        return session

    # --- what a transport provides -------------------------------------------------------------

    async def send_json(self, body: dict) -> None:
        raise NotImplementedError

    def sink(self, event: SessionEvent) -> None:
        """Where the session delivers its events (called from the compute worker's thread)."""
        raise NotImplementedError

    def on_started(self, session: Session, message: StartMessage) -> dict[str, Any]:
        """Set up the transport's media for a new session; returns extra fields for `started`."""
        return {}

    def on_slo_changed(self, session: Session) -> None:
        """The session's SLO changed (pacing follows the target fps)."""

    async def close_transport(self) -> None:
        raise NotImplementedError

    def transport_closed(self) -> bool:
        """True when the connection went away while a session was being made."""
        return False

    def sends_video(self) -> bool:
        """Whether this transport sends the session's generated video (and counts it)."""
        return True

    # --- requests ------------------------------------------------------------------------------

    async def handle_text(self, text: str) -> None:
        """Answer one control message; errors go back as `error` messages, never raised."""
        if len(text) > self.max_control_bytes or len(text.encode()) > self.max_control_bytes:
            await self.send_error(StreamError(ErrorCode.MESSAGE_TOO_LARGE, f"control message over {self.max_control_bytes} bytes"))
            return
        try:
            message = parse_control(text)
            if self.session is not None:
                self.session.touch()
            if isinstance(message, StartMessage) and message.queue:
                self.spawn(self._start_answering_errors(message))  # waiting in line must not block reading
            elif isinstance(message, StartMessage):
                await self._start(message)
            elif self.session is None:
                raise StreamError(ErrorCode.NOT_STARTED, f"send 'start' before '{message.type}'")
            elif isinstance(message, UpdateMessage):
                self.spawn(self._update(message))
            elif isinstance(message, StatsRequest):
                await self.send_json(self.stats_message(message.request_id))
            elif isinstance(message, StopMessage):
                await self._stop(message)
        except StreamError as err:
            await self.send_error(err, request_id=request_id_of(text))

    async def _start_answering_errors(self, message: StartMessage) -> None:
        try:
            await self._start(message)
        except StreamError as err:
            await self.send_error(err, request_id=message.request_id)

    async def _start(self, message: StartMessage) -> None:
        if self.session is not None:
            raise StreamError(ErrorCode.ALREADY_STARTED, f"this connection already streams session {self.session.id}")
        if self._starting:
            raise StreamError(ErrorCode.ALREADY_STARTED, "this connection is already waiting for a session to start")
        self._starting = True
        try:
            await self._open_session(message)
        finally:
            self._starting = False

    async def _open_session(self, message: StartMessage) -> None:
        if message.version != PROTOCOL_VERSION:
            raise StreamError(ErrorCode.UNSUPPORTED_VERSION, f"protocol version {message.version}; this server speaks {PROTOCOL_VERSION}")
        sessions = self.sessions
        if message.session_id is not None:
            session = sessions.attach_stream(message.session_id, self.sink, sends_video=self.sends_video())
            if message.params or "slo" in message.model_fields_set:
                try:
                    await sessions.update(session, message.params, message.slo if "slo" in message.model_fields_set else None)
                except StreamError:
                    session.sink = None
                    raise
        else:
            on_queued = self._queued_reporter(message.request_id) if message.queue else None
            session = await sessions.create(message.pipeline, message.params, message.slo, on_queued=on_queued, owner=self.owner)
            sessions.attach_stream(session.id, self.sink, sends_video=self.sends_video())
        if self.transport_closed():
            sessions.close(session.id)
            return
        self.session = session
        extra = self.on_started(session, message)
        self.spawn(self._push_stats())
        info = sessions.info(session)
        await self.send_json({"type": "started", "request_id": message.request_id, "session_id": session.id,
                              "pipeline": session.pipeline_name, "kind": session.pipeline.kind.value,
                              "needs_input": info.needs_input, "params": info.params, "slo": info.slo.model_dump(),
                              "slo_estimate": session.admitted_estimate, "notes": info.notes, **extra})

    def _queued_reporter(self, request_id: str | None) -> QueuedCallback:
        async def report(position: int, reason: str) -> None:
            await self.send_json({"type": "queued", "request_id": request_id, "position": position, "reason": reason})

        return report

    async def _update(self, message: UpdateMessage) -> None:
        session = self.started_session
        try:
            report = await self.sessions.update(session, message.params, message.slo)
        except StreamError as err:
            await self.send_error(err, request_id=message.request_id)
            return
        if message.slo is not None:
            self.on_slo_changed(session)
        await self.send_json({"type": "ack", "request_id": message.request_id, **report.model_dump(mode="json")})

    async def _stop(self, message: StopMessage) -> None:
        stats = self.stats_message(None)
        self.sessions.close(self.started_session.id)
        await self.send_json({"type": "stopped", "request_id": message.request_id, "reason": "client", "stats": stats})
        await self.close_transport()

    def stats_message(self, request_id: str | None) -> dict:
        session = self.started_session
        return {"type": "stats", "request_id": request_id, "session_id": session.id, "pipeline": session.pipeline_name,
                **session.stats_snapshot()}

    async def _push_stats(self) -> None:
        while True:
            await asyncio.sleep(self.stats_interval_s)
            await self.send_json(self.stats_message(None))

    # --- what the server says on its own -------------------------------------------------------

    async def on_control_event(self, event: SessionEvent) -> None:
        """Notices, quality changes and the end of the session, as control messages."""
        if isinstance(event, StreamNotice):
            await self.send_error(event.error, frame_id=event.frame_id)
        elif isinstance(event, QualityChanged):
            await self.send_json({"type": "quality", "direction": event.direction, "knob": event.knob, "level": event.level,
                                  "params": event.changes, "reason": event.reason, "discarded_frames": event.discarded_frames})
        elif isinstance(event, SessionClosed):
            await self.send_json({"type": "stopped", "request_id": None, "reason": event.reason, "message": event.message,
                                  "stats": self.stats_message(None)})
            await self.close_transport()

    async def send_error(self, err: StreamError, request_id: str | None = None, frame_id: int | None = None) -> None:
        self.metrics.errors.labels(err.code.value).inc()
        if self.session is not None:
            self.session.stats.count(StatCount.ERRORS)
        body = {"type": "error", **err.to_dict()}
        if request_id is not None:
            body["request_id"] = request_id
        if frame_id is not None:
            body["frame_id"] = frame_id
        await self.send_json(body)

    # --- tasks ---------------------------------------------------------------------------------

    def spawn(self, coroutine: Coroutine) -> None:
        task = asyncio.create_task(self._guarded(coroutine))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        # A task cancelled before it ran (the connection closed) never awaited `coroutine`: close it
        # so it is not reported as never awaited. Closing a finished coroutine does nothing.
        task.add_done_callback(lambda _: coroutine.close())

    async def _guarded(self, coroutine: Coroutine) -> None:
        """Background work ends quietly when the peer has gone; other failures are logged."""
        try:
            await coroutine
        except self.GONE + (asyncio.CancelledError,):
            pass
        except Exception:  # a bug in one background task must not end the stream
            log.exception("stream task failed")

    def cancel_tasks(self) -> None:
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
