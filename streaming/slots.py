"""The two input holders of a session: latest-wins for video, a bounded FIFO for audio.

Both are written by the event loop and read by the compute worker, hence the locks.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Generic, TypeVar

from streaming.errors import ErrorCode, StreamError
from streaming.frames import AudioChunk

T = TypeVar("T")


class LatestSlot(Generic[T]):
    """Holds one item; a new one replaces it. A slow consumer therefore sees the newest input and
    never a backlog, so latency stays bounded by one step. Every replaced item counts as dropped."""

    def __init__(self) -> None:
        self._item: T | None = None
        self._lock = threading.Lock()
        self.dropped = 0

    def put(self, item: T) -> bool:
        """Store `item`; True when it replaced one the consumer never took."""
        with self._lock:
            replaced = self._item is not None
            self._item = item
            self.dropped += replaced
            return replaced

    def put_back(self, item: T) -> None:
        """Return an item the consumer could not use yet, unless a newer one arrived meanwhile."""
        with self._lock:
            if self._item is None:
                self._item = item

    def peek(self) -> T | None:
        return self._item

    def take(self) -> T | None:
        with self._lock:
            item, self._item = self._item, None
            return item

    def __bool__(self) -> bool:
        return self._item is not None


class AudioFifo:
    """Audio chunks in order, up to `max_seconds`. A chunk that does not fit is refused with an
    error the sender sees (never dropped silently); `refused` counts them."""

    def __init__(self, max_seconds: float) -> None:
        self.max_seconds = max_seconds
        self._chunks: deque[AudioChunk] = deque()
        self._seconds = 0.0
        self._lock = threading.Lock()
        self.refused = 0

    def put(self, chunk: AudioChunk) -> None:
        with self._lock:
            if self._seconds + chunk.duration > self.max_seconds:
                self.refused += 1
                raise StreamError(ErrorCode.AUDIO_OVERFLOW, f"audio buffer holds {self._seconds:.2f} s of {self.max_seconds:.2f} s; "
                                  f"chunk {chunk.chunk_id} ({chunk.duration * 1000:.0f} ms) refused: send in real time")
            self._chunks.append(chunk)
            self._seconds += chunk.duration

    def drain(self) -> list[AudioChunk]:
        with self._lock:
            chunks = list(self._chunks)
            self._chunks.clear()
            self._seconds = 0.0
            return chunks

    @property
    def seconds(self) -> float:
        return self._seconds
