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

from streaming.control import ControlProtocol
from streaming.errors import ErrorCode, StreamError
from streaming.frames import VideoFrame
from streaming.metrics import ServerMetrics
from streaming.protocol import StartMessage
from streaming.session import Session, SessionEvent
from streaming.sessions import SessionManager
from streaming.webrtc.peer import SessionPeer

log = logging.getLogger(__name__)

CHANNEL_LABEL = "control"


class ControlChannel(ControlProtocol):
    def __init__(self, peer: SessionPeer, channel: RTCDataChannel, sessions: SessionManager, metrics: ServerMetrics, *,
                 max_control_bytes: int, stats_interval_s: float, frame_info: bool = False):
        super().__init__(sessions, metrics, max_control_bytes=max_control_bytes, stats_interval_s=stats_interval_s, owner=peer.owner)
        self.peer = peer
        self.channel = channel
        self._inbox: asyncio.Queue[str | bytes] = asyncio.Queue()
        channel.on("message", self._inbox.put_nowait)
        peer.on_session_event = lambda event: self.spawn(self.on_control_event(event))
        peer.on_close.append(lambda _: self.cancel_tasks())
        if frame_info:
            peer.on_frame_sent = self._announce_frame
        self.spawn(self._serve())

    async def _serve(self) -> None:
        """Messages in order, as on the socket (a start that waits in line runs on its own)."""
        while True:
            text = await self._inbox.get()
            try:
                if isinstance(text, str):
                    await self.handle_text(text)
                else:
                    await self.send_error(StreamError(ErrorCode.BAD_MESSAGE, "control messages are JSON text; media goes on the tracks"))
            except Exception:  # a bug answering one message must not end the stream
                log.exception("control message failed")
                await self.send_error(StreamError(ErrorCode.INTERNAL, "server error handling a control message"))

    # --- ControlProtocol hooks -------------------------------------------------------------

    def sink(self, event: SessionEvent) -> None:
        self.peer.sink(event)

    def transport_closed(self) -> bool:
        return self.peer.closed

    def sends_video(self) -> bool:
        return self.peer.video_out is not None

    def on_started(self, session: Session, message: StartMessage) -> dict:
        sessions = self.sessions
        self.peer.bind(session, as_stream=True, release=lambda: sessions.close(session.id))
        return {}

    def on_slo_changed(self, session: Session) -> None:
        self.peer.set_slo(session.slo.target_fps, session.slo.latency_budget_ms / 1000)

    async def close_transport(self) -> None:
        await self.peer.close()

    async def send_json(self, body: dict) -> None:
        self._send_now(body)

    # --- plumbing --------------------------------------------------------------------------

    def _announce_frame(self, frame: VideoFrame, rtp_pts: int) -> None:
        self._send_now({"type": "frame", "frame_id": frame.frame_id, "pts": frame.pts, "rtp_pts": rtp_pts})

    def _send_now(self, body: dict) -> None:
        if self.channel.readyState == "open":
            self.channel.send(json.dumps(body))
