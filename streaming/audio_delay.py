"""Audio that comes with a video stream goes back out with the generated video, in sync.

A video pipeline does not transform audio, so its audio never waits on the compute worker (which
may be busy for a second or more with one step of a slow model, and then had the audio buffer
refuse a real-time sender's chunks). It is sent back out from the event loop as it arrives, held
for as long as the video is behind its input: the stream's measured latency (received to sent,
median of the last frames). The delay only grows the wait, never reorders: a chunk goes out no
earlier than the one before it.

Nothing is dropped: a chunk that does not fit is refused with `audio_overflow`, and only a sender
faster than real time gets there (what waits is the video's latency plus `max_ahead_s`).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from streaming.errors import ErrorCode, StreamError
from streaming.frames import AudioChunk


class AudioDelayLine:
    def __init__(self, emit: Callable[[AudioChunk], None], delay_s: Callable[[], float], max_ahead_s: float) -> None:
        self._emit = emit
        self._delay_s = delay_s
        self.max_ahead_s = max_ahead_s
        self._held: deque[tuple[float, AudioChunk]] = deque()  # (due on the loop's clock, chunk), due never decreasing
        self._held_s = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def held_s(self) -> float:
        return self._held_s

    def put(self, chunk: AudioChunk) -> None:
        """Hold `chunk` until the video has caught up with it (event loop only); StreamError(audio_overflow)
        when more audio waits than the video's delay explains."""
        delay = max(0.0, self._delay_s())
        if self._held_s + chunk.duration > delay + self.max_ahead_s:
            raise StreamError(ErrorCode.AUDIO_OVERFLOW,
                              f"{self._held_s:.2f} s of audio waits to go out with the video (which is {delay:.2f} s behind its "
                              f"input; {self.max_ahead_s:.2f} s more may wait); chunk {chunk.chunk_id} "
                              f"({chunk.duration * 1000:.0f} ms) refused: audio is arriving faster than real time")
        self._loop = self._loop or asyncio.get_running_loop()
        due = self._loop.time() + delay
        if self._held:
            due = max(due, self._held[-1][0])
        self._held.append((due, chunk))
        self._held_s += chunk.duration
        if self._timer is None:
            self._timer = self._loop.call_at(due, self._release)

    def _release(self) -> None:
        self._timer = None
        assert self._loop is not None
        now = self._loop.time()
        while self._held and self._held[0][0] <= now:
            _, chunk = self._held.popleft()
            self._held_s -= chunk.duration
            self._emit(chunk)
        if self._held:
            self._timer = self._loop.call_at(self._held[0][0], self._release)

    def close(self) -> None:
        """The stream ended: what still waits has nowhere to go."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._held.clear()
        self._held_s = 0.0
