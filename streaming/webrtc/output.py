"""A session's generated media as outgoing WebRTC tracks.

aiortc's sender pulls: it awaits `recv()`, encodes what it gets and sends it, so the output
rate is whatever these tracks hand over. The video track hands over each generated frame as it
comes (a burst from a chunked model is spaced out by pts), stamped from a monotonic clock; the
audio track plays a jitter buffer in real time, 20 ms at a time, with silence when it runs dry.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from fractions import Fraction

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from streaming.frames import AudioChunk, VideoFrame
from streaming.output_queue import PacedOutput
from streaming.webrtc.codecs import use_start_bitrate
from streaming.webrtc.ingest import AUDIO_LAYOUT, AUDIO_RATE

VIDEO_CLOCK = 90000
VIDEO_TIME_BASE = Fraction(1, VIDEO_CLOCK)
# Output pts are whole multiples of 100 us (9 ticks of the 90 kHz clock). aiortc's VP8 encoder
# goes through PyAV, which moves a frame's pts to the codec's microsecond time base (rounded) and
# aiortc back to 90 kHz (truncated): any other pts can lose a tick on the way, and then the RTP
# timestamp a receiver sees is not the pts announced in `frame` messages.
PTS_STEP = 9
AUDIO_PTIME = 0.020
AUDIO_FRAME_SAMPLES = round(AUDIO_RATE * AUDIO_PTIME)
AUDIO_TIME_BASE = Fraction(1, AUDIO_RATE)
AUDIO_JITTER_S = 0.060     # buffered before playing starts (and again after running dry)
AUDIO_MAX_LAG_S = 0.200    # a pacing clock this far behind (a stalled loop) restarts instead of bursting


class GeneratedVideoTrack(MediaStreamTrack):
    """`recv()` waits for the next generated frame, paced and dropped by the rule every
    transport shares (`PacedOutput`: dropped frames call `on_dropped`); `on_sent(frame, pts)`
    hears about each frame handed to the encoder with the RTP pts it got."""

    kind = "video"

    def __init__(self, target_fps: float, latency_budget_s: float,
                 on_sent: Callable[[VideoFrame, int], None] | None = None, on_dropped: Callable[[], None] | None = None):
        super().__init__()
        self._output: PacedOutput[VideoFrame] = PacedOutput(lambda frame: frame, target_fps, latency_budget_s, on_dropped)
        self._on_sent = on_sent
        self._clock_start: float | None = None
        self._last_pts = -PTS_STEP

    def set_slo(self, target_fps: float, latency_budget_s: float) -> None:
        self._output.set_slo(target_fps, latency_budget_s)

    def push(self, frame: VideoFrame) -> None:
        """Queue a generated frame (event loop only)."""
        self._output.push(frame)

    async def recv(self) -> av.VideoFrame:
        frame = await self._output.take()
        if frame is None:
            raise MediaStreamError
        now = time.monotonic()
        if self._clock_start is None:
            self._clock_start = now
            use_start_bitrate(frame.width, frame.height, self._output.target_fps)
        pts = max(self._last_pts + PTS_STEP, -(-round((now - self._clock_start) * VIDEO_CLOCK) // PTS_STEP) * PTS_STEP)
        self._last_pts = pts
        out = av.VideoFrame.from_ndarray(frame.image, format="rgb24")
        out.pts, out.time_base = pts, VIDEO_TIME_BASE
        if self._on_sent is not None:
            self._on_sent(frame, pts)
        return out

    def stop(self) -> None:
        super().stop()
        self._output.close()  # a recv() waiting for a frame ends


class GeneratedAudioTrack(MediaStreamTrack):
    """The session's output audio, 48 kHz mono, never dropped: chunks queue up in order and are
    played in real time; silence fills the gaps so the receiver's clock keeps running."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._buffer = np.zeros(0, np.int16)
        self._playing = False
        self._resamplers: dict[tuple[int, int], av.AudioResampler] = {}
        self._clock_start: float | None = None
        self._frames_sent = 0

    @property
    def buffered_s(self) -> float:
        return len(self._buffer) / AUDIO_RATE

    def push(self, chunk: AudioChunk) -> None:
        """Append a chunk (event loop only), converted to 48 kHz mono if it is not already."""
        samples = chunk.samples[:, 0] if chunk.channels == 1 else None
        if chunk.sample_rate != AUDIO_RATE or samples is None:
            samples = self._resample(chunk)
        self._buffer = np.concatenate([self._buffer, samples.astype(np.int16, copy=False)])

    def _resample(self, chunk: AudioChunk) -> np.ndarray:
        key = (chunk.sample_rate, chunk.channels)
        if key not in self._resamplers:
            self._resamplers[key] = av.AudioResampler(format="s16", layout=AUDIO_LAYOUT, rate=AUDIO_RATE)
        # "<n>c": FFmpeg's default layout for n channels (av.AudioLayout no longer takes a count: TypeError)
        layout = "mono" if chunk.channels == 1 else "stereo" if chunk.channels == 2 else f"{chunk.channels}c"
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk.samples, np.int16).reshape(1, -1), format="s16", layout=layout)
        frame.sample_rate = chunk.sample_rate
        return np.concatenate([out.to_ndarray().reshape(-1) for out in self._resamplers[key].resample(frame)] or [np.zeros(0, np.int16)])

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._clock_start is None or now - (self._clock_start + self._frames_sent * AUDIO_PTIME) > AUDIO_MAX_LAG_S:
            self._clock_start = now - self._frames_sent * AUDIO_PTIME
        wait = self._clock_start + self._frames_sent * AUDIO_PTIME - now
        if wait > 0:
            await asyncio.sleep(wait)
        samples = self._next_samples()
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout=AUDIO_LAYOUT)
        frame.sample_rate = AUDIO_RATE
        frame.pts, frame.time_base = self._frames_sent * AUDIO_FRAME_SAMPLES, AUDIO_TIME_BASE
        self._frames_sent += 1
        return frame

    def _next_samples(self) -> np.ndarray:
        if not self._playing and self.buffered_s >= AUDIO_JITTER_S:
            self._playing = True
        if not self._playing or len(self._buffer) < AUDIO_FRAME_SAMPLES:
            self._playing = False  # ran dry: refill to the jitter target before playing again
            return np.zeros(AUDIO_FRAME_SAMPLES, np.int16)
        samples, self._buffer = self._buffer[:AUDIO_FRAME_SAMPLES], self._buffer[AUDIO_FRAME_SAMPLES:]
        return samples
