"""The `control` data channel of a WebRTC peer: the WebSocket API's JSON control messages
(docs/protocol.md) over a reliable, ordered data channel.

`start` creates the session (or attaches to one made over REST) that the peer's media then
feeds; `update` is acknowledged once in force; `stats` come every interval and on request;
`stop` ends the session and the connection. With `frame_info`, each generated frame sent is
announced with the RTP pts it went out with, so a client can tell which input it came from.
"""

from __future__ import annotations

import asyncio
import json
import logging

from aiortc import RTCDataChannel

from streaming.errors import ErrorCode, StreamError
from streaming.frames import VideoFrame
from streaming.metrics import ServerMetrics
from streaming.protocol import (
    PROTOCOL_VERSION, StartMessage, StatsRequest, StopMessage, UpdateMessage, parse_control, request_id_of,
)
from streaming.session import QualityChanged, SessionClosed, SessionEvent, StreamNotice
from streaming.sessions import SessionManager
from streaming.webrtc.peer import SessionPeer

log = logging.getLogger(__name__)

CHANNEL_LABEL = "control"


class ControlChannel:
    def __init__(self, peer: SessionPeer, channel: RTCDataChannel, sessions: SessionManager, metrics: ServerMetrics, *,
                 max_control_bytes: int, stats_interval_s: float, frame_info: bool = False):
        self.peer = peer
        self.channel = channel
        self.sessions = sessions
        self.metrics = metrics
        self.max_control_bytes = max_control_bytes
        self.stats_interval_s = stats_interval_s
        self._inbox: asyncio.Queue[str | bytes] = asyncio.Queue()
        self._tasks: set[asyncio.Task] = set()
        self._starting = False
        channel.on("message", self._inbox.put_nowait)
        peer.on_session_event = self._on_session_event
        peer.on_close.append(lambda _: self._cancel_tasks())
        if frame_info:
            peer.on_frame_sent = self._announce_frame
        self._spawn(self._serve())

    # --- requests ------------------------------------------------------------------------

    async def _serve(self) -> None:
        """Messages in order; a start (which may wait in the admission queue) and updates run on
        their own, as on the socket, so that a stop or a stats request is never held up."""
        while True:
            text = await self._inbox.get()
            try:
                await self._handle(text)
            except Exception:  # noqa: BLE001 - a bug answering one message must not end the stream
                log.exception("control message failed")
                self._send_error(StreamError(ErrorCode.INTERNAL, "server error handling a control message"))

    async def _handle(self, text: str | bytes) -> None:
        if not isinstance(text, str):
            self._send_error(StreamError(ErrorCode.BAD_MESSAGE, "control messages are JSON text; media goes on the tracks"))
            return
        if len(text.encode()) > self.max_control_bytes:
            self._send_error(StreamError(ErrorCode.MESSAGE_TOO_LARGE, f"control message over {self.max_control_bytes} bytes"))
            return
        try:
            message = parse_control(text)
            session = self.peer.session
            if session is not None:
                session.touch()
            if isinstance(message, StartMessage):
                if self._starting or session is not None:
                    raise StreamError(ErrorCode.ALREADY_STARTED, "this connection already streams (or is starting) a session")
                self._starting = True
                self._spawn(self._start(message))
            elif session is None:
                raise StreamError(ErrorCode.NOT_STARTED, f"send 'start' before '{message.type}'")
            elif isinstance(message, UpdateMessage):
                self._spawn(self._update(message))
            elif isinstance(message, StatsRequest):
                self._send(self._stats(message.request_id))
            elif isinstance(message, StopMessage):
                await self._stop(message)
        except StreamError as err:
            self._send_error(err, request_id=request_id_of(text))

    async def _start(self, message: StartMessage) -> None:
        try:
            await self._open_session(message)
        except StreamError as err:
            self._send_error(err, request_id=message.request_id)
        finally:
            self._starting = False

    async def _open_session(self, message: StartMessage) -> None:
        peer = self.peer
        if message.version != PROTOCOL_VERSION:
            raise StreamError(ErrorCode.UNSUPPORTED_VERSION, f"protocol version {message.version}; this server speaks {PROTOCOL_VERSION}")
        sessions = self.sessions
        if message.session_id is not None:
            session = sessions.attach_stream(message.session_id, peer.sink)
            if message.params or "slo" in message.model_fields_set:
                try:
                    await sessions.update(session, message.params, message.slo if "slo" in message.model_fields_set else None)
                except StreamError:
                    session.sink = None
                    raise
        else:
            on_queued = self._report_queued(message.request_id) if message.queue else None
            session = await sessions.create(message.pipeline, message.params, message.slo, on_queued=on_queued)
            sessions.attach_stream(session.id, peer.sink)
        if peer.closed:  # the connection went away while the session was being made
            sessions.close(session.id)
            return
        peer.bind(session, as_stream=True, release=lambda: sessions.close(session.id))
        self._spawn(self._push_stats())
        info = sessions.info(session)
        self._send({"type": "started", "request_id": message.request_id, "session_id": session.id,
                    "pipeline": session.pipeline_name, "kind": session.pipeline.kind.value,
                    "needs_input": session.needs_input, "params": info.params, "slo": info.slo.model_dump(),
                    "slo_estimate": session.admitted_estimate})

    def _report_queued(self, request_id: str | None):
        async def report(position: int, reason: str) -> None:
            self._send({"type": "queued", "request_id": request_id, "position": position, "reason": reason})

        return report

    async def _update(self, message: UpdateMessage) -> None:
        try:
            report = await self.sessions.update(self.peer.session, message.params, message.slo)
        except StreamError as err:
            self._send_error(err, request_id=message.request_id)
            return
        if message.slo is not None:
            self.peer.set_slo(message.slo.target_fps, message.slo.latency_budget_ms / 1000)
        self._send({"type": "ack", "request_id": message.request_id, **report.model_dump(mode="json")})

    async def _stop(self, message: StopMessage) -> None:
        stats = self._stats(None)
        self.sessions.close(self.peer.session.id)
        self._send({"type": "stopped", "request_id": message.request_id, "reason": "client", "stats": stats})
        await self.peer.close()

    # --- what the server says on its own -------------------------------------------------

    def _on_session_event(self, event: SessionEvent) -> None:
        if isinstance(event, StreamNotice):
            self._send_error(event.error, frame_id=event.frame_id)
        elif isinstance(event, QualityChanged):
            self._send({"type": "quality", "direction": event.direction, "knob": event.knob, "level": event.level,
                        "params": event.changes, "reason": event.reason, "discarded_frames": event.discarded_frames})
        elif isinstance(event, SessionClosed):
            self._send({"type": "stopped", "request_id": None, "reason": event.reason, "message": event.message,
                        "stats": self._stats(None)})

    def _announce_frame(self, frame: VideoFrame, rtp_pts: int) -> None:
        self._send({"type": "frame", "frame_id": frame.frame_id, "pts": frame.pts, "rtp_pts": rtp_pts})

    async def _push_stats(self) -> None:
        while True:
            await asyncio.sleep(self.stats_interval_s)
            self._send(self._stats(None))

    def _stats(self, request_id: str | None) -> dict:
        session = self.peer.session
        return {"type": "stats", "request_id": request_id, "session_id": session.id, "pipeline": session.pipeline_name,
                **session.stats.snapshot()}

    # --- plumbing ------------------------------------------------------------------------

    def _send(self, body: dict) -> None:
        if self.channel.readyState == "open":
            self.channel.send(json.dumps(body))

    def _send_error(self, err: StreamError, request_id: str | None = None, frame_id: int | None = None) -> None:
        self.metrics.errors.labels(err.code.value).inc()
        if self.peer.session is not None:
            self.peer.session.stats.count("errors")
        body = {"type": "error", **err.to_dict()}
        if request_id is not None:
            body["request_id"] = request_id
        if frame_id is not None:
            body["frame_id"] = frame_id
        self._send(body)

    def _spawn(self, coroutine) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _cancel_tasks(self) -> None:
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
