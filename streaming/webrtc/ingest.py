"""Incoming WebRTC media into a session.

aiortc decodes each remote track on its own thread into an unbounded queue. A consumer that
reads it at the model's pace therefore builds seconds of latency, so each track gets a task
that drains it as fast as frames arrive: video goes through a latest-wins converter into the
session's input slot (replaced frames are counted as dropped), audio is resampled once to
48 kHz mono and queued in order.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TypeVar

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from streaming.errors import StreamError
from streaming.frames import AudioChunk, VideoFrame
from streaming.ingest import LatestDecoder
from streaming.session import Session

log = logging.getLogger(__name__)

AUDIO_RATE = 48000      # what incoming audio becomes: Opus's own rate, so WebRTC audio is not resampled twice
AUDIO_LAYOUT = "mono"

FrameT = TypeVar("FrameT", av.VideoFrame, av.AudioFrame)


@dataclass(slots=True)
class ReceivedPicture:
    """A decoded WebRTC frame waiting to become RGB (on the codec pool, newest first)."""

    frame: av.VideoFrame
    frame_id: int
    pts: float | None
    stream_id: str
    max_size: tuple[int, int]
    timestamps: dict[str, float] = field(default_factory=dict)


def to_video_frame(picture: ReceivedPicture) -> VideoFrame:
    """RGB at the frame's size, scaled down (aspect kept) when it is larger than the server's limit."""
    frame = picture.frame
    max_width, max_height = picture.max_size
    scale = min(1.0, max_width / frame.width, max_height / frame.height)
    width, height = (frame.width, frame.height) if scale == 1.0 else (max(2, round(frame.width * scale)), max(2, round(frame.height * scale)))
    image = frame.to_ndarray(format="rgb24", width=width, height=height)
    return VideoFrame(image, picture.frame_id, picture.pts, picture.stream_id, picture.timestamps)


def seconds(pts: int | None, time_base: Fraction | None) -> float | None:
    return None if pts is None or time_base is None else float(pts * time_base)


async def drain(track: MediaStreamTrack, on_frame: Callable[[FrameT], None]) -> None:
    """Read a remote track as fast as it delivers until the remote side ends it."""
    try:
        while True:
            # aiortc types recv() as Frame | Packet for every track; a remote track yields decoded frames of its kind
            on_frame(await track.recv())  # type: ignore[arg-type]
    except MediaStreamError:
        pass


class VideoIngest:
    """Received video into `session` (frames before one is set are discarded)."""

    def __init__(self, codec_pool: Executor, max_size: tuple[int, int], on_error: Callable[[StreamError, int], None]):
        self.session: Session | None = None
        self.max_size = max_size
        self.frames = 0
        self._converter: LatestDecoder | None = None
        self._codec_pool = codec_pool
        self._on_error = on_error

    def on_frame(self, frame: av.VideoFrame) -> None:
        session = self.session
        if session is None or session.closed:
            return
        if self._converter is None:
            self._converter = LatestDecoder(self._codec_pool, session.push_video, self._on_error,
                                            session.count_dropped_input, decode=to_video_frame)
        now = time.monotonic()
        session.record_received(now)
        self._converter.submit(ReceivedPicture(frame, self.frames, seconds(frame.pts, frame.time_base), session.id,
                                               self.max_size, {"received": now}))
        self.frames += 1

    def close(self) -> None:
        if self._converter is not None:
            self._converter.close()


class AudioIngest:
    """Received audio into `session`, resampled once, in order."""

    def __init__(self) -> None:
        self.session: Session | None = None
        self.chunks = 0
        self.refused = 0
        self._resampler = av.AudioResampler(format="s16", layout=AUDIO_LAYOUT, rate=AUDIO_RATE)

    def on_frame(self, frame: av.AudioFrame) -> None:
        session = self.session
        if session is None or session.closed:
            return
        for out in self._resampler.resample(frame):
            samples = out.to_ndarray().reshape(-1, 1)  # packed s16 mono: (1, n) -> (n, 1)
            chunk = AudioChunk(samples, AUDIO_RATE, self.chunks, seconds(out.pts, out.time_base), session.id,
                               {"received": time.monotonic()})
            self.chunks += 1
            session.touch()
            try:
                session.push_audio(chunk)
            except StreamError as err:
                # A sender that cannot be told to slow down: every refusal is counted (stats `audio.refused`),
                # the first is logged, and the log is not filled with the rest.
                if not self.refused:
                    log.warning("session %s: %s (further refusals are counted in its stats, not logged)", session.id, err.message)
                self.refused += 1
