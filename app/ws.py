"""The WebSocket stream endpoint: one connection carries one session (docs/protocol.md).

The event loop only moves bytes here: pictures are decoded and encoded on the codec pool, the
model runs on the compute worker, and this connection forwards what comes back, paced by pts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

import numpy as np
from fastapi import APIRouter, Depends, WebSocket, WebSocketDisconnect

from app import __version__
from app.auth import token_owner
from app.context import ServerContext, server_context
from streaming.codec import encode_image
from streaming.control import ControlProtocol
from streaming.errors import ErrorCode, StreamError
from streaming.frames import AudioChunk, EncodedFrame
from streaming.ingest import LatestDecoder
from streaming.output_queue import PacedOutput
from streaming.protocol import (
    FLAG_REUSED,
    PROTOCOL_VERSION,
    VIDEO_FORMATS,
    MediaFormat,
    MediaHeader,
    MediaKind,
    OutputSpec,
    SloSpec,
    StartMessage,
    pack_media,
    unpack_media,
)
from streaming.session import OutputAudio, OutputFrame, Session, SessionEvent

log = logging.getLogger(__name__)
router = APIRouter()

AUDIO_RATES = range(8000, 192001)
AUDIO_MAX_CHANNELS = 8


@router.websocket("/v1/stream")
async def stream(websocket: WebSocket, context: ServerContext = Depends(server_context)) -> None:
    await StreamConnection(websocket, context).run()


class StreamConnection(ControlProtocol):
    GONE = (WebSocketDisconnect, RuntimeError, ConnectionError)

    def __init__(self, websocket: WebSocket, context: ServerContext):
        s = context.settings
        super().__init__(context.sessions, context.metrics, max_control_bytes=s.max_control_bytes, stats_interval_s=s.stats_interval_s,
                         owner=token_owner(websocket))
        self.ws = websocket
        self.context = context
        self.settings = s
        self.output = OutputSpec()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._send_lock = asyncio.Lock()
        slo = SloSpec()  # until the session says its own
        self._output: PacedOutput[OutputFrame] = PacedOutput(lambda item: item.frame, slo.target_fps, slo.latency_budget_ms / 1000,
                                                             on_dropped=self._count_dropped_output)
        self._decoder: LatestDecoder | None = None
        self._closing = False

    async def run(self) -> None:
        await self.ws.accept()
        self._loop = asyncio.get_running_loop()
        try:
            await self.send_json(self._hello())
            while not self._closing:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                try:
                    if message.get("text") is not None:
                        await self.handle_text(message["text"])
                    elif message.get("bytes") is not None:
                        await self._on_bytes(message["bytes"])
                except Exception as err:  # a bug answering one message must not end the stream
                    log.exception("handling a stream message failed")
                    await self.send_error(StreamError(ErrorCode.INTERNAL, f"server error: {err}"))
        except self.GONE:
            pass  # the client went away; nothing left to tell it
        finally:
            self._teardown()

    def _hello(self) -> dict:
        s = self.settings
        return {
            "type": "hello", "protocol": PROTOCOL_VERSION, "server": f"latentcast {__version__}",
            "ready": self.context.worker.ready.is_set(),
            "pipelines": list(self.context.worker.pipelines), "default_pipeline": self.context.sessions.default_pipeline,
            "limits": {"max_message_bytes": s.max_message_bytes, "max_control_bytes": s.max_control_bytes,
                       "max_frame_width": s.max_frame_width, "max_frame_height": s.max_frame_height,
                       "formats": s.allowed_formats, "audio_buffer_s": s.audio_buffer_s},
        }

    # --- control (ControlProtocol hooks) ---------------------------------------------------

    def on_started(self, session: Session, message: StartMessage) -> dict:
        self.output = message.output
        self.on_slo_changed(session)
        self._decoder = LatestDecoder(self.context.codec_pool, session.push_video, self._on_decode_error, session.count_dropped_input)
        self.spawn(self._send_frames())
        return {"output": self.output.model_dump()}

    def on_slo_changed(self, session: Session) -> None:
        self._output.set_slo(session.slo.target_fps, session.slo.latency_budget_ms / 1000)

    async def close_transport(self) -> None:
        self._closing = True
        self._output.close()
        async with self._send_lock:
            with contextlib.suppress(RuntimeError, ConnectionError):
                await self.ws.close(1000)

    # --- media in --------------------------------------------------------------------------

    async def _on_bytes(self, data: bytes) -> None:
        frame_id = None
        try:
            if len(data) > self.settings.max_message_bytes:
                raise StreamError(ErrorCode.MESSAGE_TOO_LARGE, f"binary message of {len(data)} bytes; the limit is {self.settings.max_message_bytes}")
            header, payload = unpack_media(data)
            frame_id = header.frame_id
            if self.session is None:
                raise StreamError(ErrorCode.NOT_STARTED, "send 'start' before media")
            if header.kind is MediaKind.VIDEO:
                self._on_video(header, payload)
            else:
                self._on_audio(header, payload)
        except StreamError as err:
            await self.send_error(err, frame_id=frame_id)

    def _on_video(self, header: MediaHeader, payload: memoryview) -> None:
        s = self.settings
        fmt = header.format_name
        if fmt not in VIDEO_FORMATS:
            raise StreamError(ErrorCode.UNSUPPORTED_FORMAT, f"{fmt} is not a picture format; use one of {', '.join(s.allowed_formats)}")
        if fmt not in s.allowed_formats:
            raise StreamError(ErrorCode.UNSUPPORTED_FORMAT, f"{fmt} is not accepted here; use one of {', '.join(s.allowed_formats)}")
        if header.width == 0 or header.height == 0:
            raise StreamError(ErrorCode.BAD_HEADER, f"frame size {header.width}x{header.height} is empty")
        if header.width > s.max_frame_width or header.height > s.max_frame_height:
            raise StreamError(ErrorCode.FRAME_TOO_LARGE,
                              f"frame {header.width}x{header.height} is larger than {s.max_frame_width}x{s.max_frame_height}")
        if fmt == "rgb24" and len(payload) != header.width * header.height * 3:
            raise StreamError(ErrorCode.BAD_HEADER, f"rgb24 payload is {len(payload)} bytes; "
                              f"{header.width}x{header.height} needs {header.width * header.height * 3}")
        if not payload:
            raise StreamError(ErrorCode.BAD_IMAGE, "empty picture payload")
        now = time.monotonic()
        self.session.record_received(now)
        self._decoder.submit(EncodedFrame(payload, fmt, header.width, header.height, header.frame_id, header.pts,
                                          self.session.id, {"received": now}))

    def _on_audio(self, header: MediaHeader, payload: memoryview) -> None:
        rate, channels = header.width, header.height
        if header.format is not MediaFormat.PCM_S16LE:
            raise StreamError(ErrorCode.UNSUPPORTED_FORMAT, f"audio must be pcm_s16le, not {header.format_name}")
        if rate not in AUDIO_RATES or not 1 <= channels <= AUDIO_MAX_CHANNELS:
            raise StreamError(ErrorCode.BAD_HEADER, f"audio at {rate} Hz with {channels} channels is out of range")
        if not payload or len(payload) % (2 * channels):
            raise StreamError(ErrorCode.BAD_HEADER, f"audio payload of {len(payload)} bytes is not whole {channels}-channel pcm_s16le frames")
        samples = np.frombuffer(payload, dtype="<i2").reshape(-1, channels)
        self.session.touch()
        self.session.push_audio(AudioChunk(samples, rate, header.frame_id, header.pts, self.session.id, {"received": time.monotonic()}))

    def _on_decode_error(self, err: StreamError, frame_id: int) -> None:
        self.spawn(self.send_error(err, frame_id=frame_id))

    # --- media out -------------------------------------------------------------------------

    def sink(self, event: SessionEvent) -> None:
        """Called by the compute worker: hop onto the event loop."""
        self._loop.call_soon_threadsafe(self._on_event, event)

    def _on_event(self, event: SessionEvent) -> None:
        if self._closing:
            return
        if isinstance(event, OutputFrame):
            self._output.push(event)  # paced out by pts, or dropped if a slow client lets it go stale or fall behind
        elif isinstance(event, OutputAudio):
            chunk = event.chunk
            header = MediaHeader(MediaKind.AUDIO, MediaFormat.PCM_S16LE, chunk.chunk_id, chunk.pts, chunk.sample_rate, chunk.channels)
            self.spawn(self._send_bytes(pack_media(header, chunk.samples.astype("<i2").tobytes()), on_sent=self._count_audio_sent))
        else:
            self.spawn(self.on_control_event(event))

    def _count_audio_sent(self) -> None:
        self.session.count_audio_sent()

    def _count_dropped_output(self) -> None:
        self.session.count_dropped_output()

    async def _send_frames(self) -> None:
        fmt = self.output.format
        while (item := await self._output.take()) is not None:
            frame = item.frame
            payload = await self._loop.run_in_executor(self.context.codec_pool, encode_image, frame.image, fmt, self.output.quality)
            header = MediaHeader(MediaKind.VIDEO, VIDEO_FORMATS[fmt], frame.frame_id, frame.pts, frame.width, frame.height,
                                 FLAG_REUSED if item.reused else 0)
            await self._send_bytes(pack_media(header, payload))
            frame.stamp("sent")
            self.session.record_sent(frame)

    # --- plumbing --------------------------------------------------------------------------

    async def send_json(self, body: dict) -> None:
        async with self._send_lock:
            await self.ws.send_text(json.dumps(body))

    async def _send_bytes(self, data: bytes, on_sent=None) -> None:
        async with self._send_lock:
            await self.ws.send_bytes(data)
        if on_sent is not None:
            on_sent()

    def _teardown(self) -> None:
        """Whatever ended the connection, the session and everything it holds go now."""
        self._closing = True
        self._output.close()
        self.cancel_tasks()
        if self._decoder is not None:
            self._decoder.close()
        if self.session is not None:
            self.context.sessions.close(self.session.id)
