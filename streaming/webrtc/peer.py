"""One WebRTC connection serving one session, and the registry of a server's connections.

A peer receives (its remote tracks feed the session's inputs), sends (the session's output on
its own tracks), or both. It is bound to a session as the session's stream (the demo, a WHIP
publisher) or as one more watcher of its output (a WHEP player). Whatever ends it (the remote
side hanging up, ICE failing or never connecting, a DELETE, the session ending) releases the
session and the connection at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from typing import Any

from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from streaming.errors import ErrorCode, StreamError
from streaming.frames import VideoFrame
from streaming.protocol import SloSpec
from streaming.session import OutputAudio, OutputFrame, Session, SessionClosed, SessionEvent
from streaming.webrtc.codecs import configure_encoder_bounds
from streaming.webrtc.ingest import AudioIngest, VideoIngest, drain
from streaming.webrtc.jitter import release_frames_on_marker
from streaming.webrtc.offer import bad_sdp, check_offer
from streaming.webrtc.output import GeneratedAudioTrack, GeneratedVideoTrack

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 30.0   # an answered offer whose peer never connects is given up after this (the default)
SENDING = ("sendrecv", "recvonly")  # offer directions under which the remote side receives
RECEIVING = ("sendrecv", "sendonly")

configure_encoder_bounds()
release_frames_on_marker()  # received frames go to the decoder at their last packet, not a frame later


def new_peer_connection() -> RTCPeerConnection:
    """No ICE servers: the answer carries the server's host candidates, which clients reach
    directly (or through their own TURN); left empty, aiortc would ask a public STUN server."""
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


class SessionPeer:
    def __init__(self, role: str, *, receive: bool, send: bool, codec_pool: Executor, max_frame_size: tuple[int, int],
                 connect_timeout_s: float = CONNECT_TIMEOUT_S, owner: str | None = None):
        self.id = secrets.token_hex(8)
        self.role = role                      # "webrtc", "whip" or "whep": for logs and listings
        self.owner = owner                    # the short-lived token that made it: sessions it starts count against it
        self.connect_timeout_s = connect_timeout_s
        self.pc = new_peer_connection()
        self.session: Session | None = None
        self.streams_session = False          # bound as the session's stream (counts its output) or as a watcher
        self.video_in = VideoIngest(codec_pool, max_frame_size, self._on_decode_error) if receive else None
        self.audio_in = AudioIngest() if receive else None
        self.video_out: GeneratedVideoTrack | None = None
        self.audio_out: GeneratedAudioTrack | None = None
        self._send = send
        self._release: Callable[[], object] | None = None
        # Hooks for a control channel: non-media session events, and each video frame sent.
        self.on_session_event: Callable[[SessionEvent], None] | None = None
        self.on_frame_sent: Callable[[VideoFrame, int], None] | None = None
        self.on_close: list[Callable[[SessionPeer], object]] = []  # run once, when the peer ends
        self.connected = asyncio.Event()
        self.closed = False
        self._loop = asyncio.get_running_loop()
        self._tasks: set[asyncio.Task] = set()
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._on_connection_state)

    # --- negotiation ---------------------------------------------------------------------

    async def answer(self, offer_sdp: str) -> str:
        """Apply the remote offer and return our complete answer (aiortc gathers every
        candidate first: no trickle). StreamError (bad_sdp, unsupported_format) when the offer
        is unusable; the caller closes the peer then."""
        offer = check_offer(offer_sdp)
        if self._send:
            kinds = {media.kind for media in offer.media if media.direction in SENDING}
            if "video" in kinds:
                slo = SloSpec()  # until a session is bound
                self.video_out = GeneratedVideoTrack(slo.target_fps, slo.latency_budget_ms / 1000, self._frame_sent, self._frame_dropped)
            if "audio" in kinds:
                self.audio_out = GeneratedAudioTrack()
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
            for track in (self.video_out, self.audio_out):
                if track is not None:
                    self.pc.addTrack(track)
            await self.pc.setLocalDescription(await self.pc.createAnswer())
        except Exception as err:  # noqa: BLE001 - check_offer passed it, yet aiortc refused: still the offer's fault
            log.warning("%s peer %s: aiortc refused a checked offer: %s: %s", self.role, self.id, type(err).__name__, err)
            raise bad_sdp(f"the offer could not be applied ({type(err).__name__}: {err})") from None
        self._spawn(self._give_up_unless_connected())
        return self.pc.localDescription.sdp

    def _on_track(self, track: MediaStreamTrack) -> None:
        # Media nobody uses (a player that sends too) is still read, or aiortc would queue it forever.
        if track.kind == "video":
            self._spawn(drain(track, self.video_in.on_frame if self.video_in is not None else _discard))
        else:
            self._spawn(drain(track, self.audio_in.on_frame if self.audio_in is not None else _discard))

    async def _on_connection_state(self) -> None:
        state = self.pc.connectionState
        if state == "connected":
            self.connected.set()
        elif state in ("failed", "closed"):
            await self.close()

    async def _give_up_unless_connected(self) -> None:
        try:
            await asyncio.wait_for(self.connected.wait(), self.connect_timeout_s)
        except asyncio.TimeoutError:
            log.info("%s peer %s never connected; closing it", self.role, self.id)
            await self.close()

    # --- the session ---------------------------------------------------------------------

    def bind(self, session: Session, *, as_stream: bool, release: Callable[[], object]) -> None:
        """Serve `session`; `release` undoes the binding (close, detach or unwatch) when this
        peer ends."""
        self.session = session
        self.streams_session = as_stream
        self._release = release
        for ingest in (self.video_in, self.audio_in):
            if ingest is not None:
                ingest.session = session
        self.set_slo(session.slo.target_fps, session.slo.latency_budget_ms / 1000)
        self._spawn(self._end_with(session))

    def set_slo(self, target_fps: float, latency_budget_s: float) -> None:
        if self.video_out is not None:
            self.video_out.set_slo(target_fps, latency_budget_s)

    async def _end_with(self, session: Session) -> None:
        """A watcher is not told when the session's own client leaves: it looks."""
        while not session.closed:
            await asyncio.sleep(0.5)
        await self.close()

    def sink(self, event: SessionEvent) -> None:
        """What the session emits (called on the compute worker's thread)."""
        if not self.closed:
            self._loop.call_soon_threadsafe(self._on_event, event)

    def _on_event(self, event: SessionEvent) -> None:
        if self.closed:
            return
        if isinstance(event, OutputFrame):
            if self.video_out is not None:
                self.video_out.push(event.frame)
        elif isinstance(event, OutputAudio):
            if self.audio_out is not None:
                self.audio_out.push(event.chunk)
                if self.streams_session and self.session is not None:
                    self.session.count_audio_sent()
        else:
            if self.on_session_event is not None:
                self.on_session_event(event)
            if isinstance(event, SessionClosed):
                self._spawn(self.close())

    def _frame_sent(self, frame: VideoFrame, pts: int) -> None:
        if self.session is not None:
            if self.streams_session:
                frame.stamp("sent")
                self.session.record_sent(frame)
            else:
                self.session.record_sent_by_watcher(frame)
        if self.on_frame_sent is not None:
            self.on_frame_sent(frame, pts)

    def _frame_dropped(self) -> None:
        if self.streams_session and self.session is not None:
            self.session.count_dropped_output()

    def _on_decode_error(self, err: StreamError, frame_id: int) -> None:
        log.warning("%s peer %s: frame %d: %s", self.role, self.id, frame_id, err.message)

    # --- lifetime ------------------------------------------------------------------------

    async def close(self) -> None:
        """End everything this peer holds; safe to call more than once, from anywhere."""
        if self.closed:
            return
        self.closed = True
        if self._release is not None:
            self._release()
        if self.video_in is not None:
            self.video_in.close()
        for track in (self.video_out, self.audio_out):
            if track is not None:
                track.stop()
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        with contextlib.suppress(Exception):  # aiortc may complain about a half-negotiated connection
            await self.pc.close()
        for hook in self.on_close:
            hook(self)
        log.info("%s peer %s closed", self.role, self.id)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _discard(frame: object) -> None:
    pass


class PeerRegistry:
    """The open peers of a server, by id, so that routes can find them and shutdown closes them."""

    def __init__(self) -> None:
        self.peers: dict[str, SessionPeer] = {}

    def add(self, peer: SessionPeer) -> None:
        self.peers[peer.id] = peer
        peer.on_close.append(lambda p: self.peers.pop(p.id, None))

    def get(self, peer_id: str, role: str) -> SessionPeer:
        peer = self.peers.get(peer_id)
        if peer is None or peer.role != role:
            raise StreamError(ErrorCode.UNKNOWN_SESSION, f"no {role} resource {peer_id!r} (it may have ended)")
        return peer

    def watching(self, session_id: str) -> int:
        return sum(1 for p in self.peers.values() if p.role == "whep" and p.session is not None and p.session.id == session_id)

    async def close_all(self) -> None:
        await asyncio.gather(*(peer.close() for peer in list(self.peers.values())), return_exceptions=True)
