"""The answer's audio on its way out: queued segments, released in real time.

Each step takes the audio due by `now + lead` in 20 ms chunks. The playout clock (`cursor`)
is when the next sample will play at the listener, assuming it plays what it gets at once:
segments queued back to back play back to back, and a segment that arrives after the queue ran
dry starts when it arrives (that wait is the gap the metrics report). Because only audio that is
due leaves, stopping (barge-in) is immediate: what was sent is what was played, plus at most
`lead` seconds, and the words heard are known.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

CHUNK_S = 0.02


@dataclass(eq=False)
class Segment:
    audio: np.ndarray        # (frames,) int16 at the playout's rate
    text: str                # the words it says
    role: str                # "prefix" or "continuation"
    turn: int
    sent: int = 0            # samples released so far
    started_at: float | None = None  # playout-clock time of its first sample
    ended_at: float | None = None    # ... and of the end of its last sample

    @property
    def done(self) -> bool:
        return self.sent >= self.audio.size


@dataclass
class Released:
    samples: np.ndarray      # (frames,) int16
    play_at: float           # playout-clock time of its first sample
    segments: list[Segment] = field(default_factory=list)  # segments that started in it


class Playout:
    def __init__(self, sample_rate: int):
        self.sample_rate = sample_rate
        self.cursor = 0.0            # when the next released sample plays (time.monotonic clock)
        self._queue: deque[Segment] = deque()
        self.history: list[Segment] = []  # released segments of the current turn, in order

    def enqueue(self, segment: Segment) -> None:
        self._queue.append(segment)

    @property
    def idle(self) -> bool:
        """Nothing queued."""
        return not self._queue

    def release(self, now: float, lead: float) -> list[Released]:
        """The chunks due by `now + lead`, each at most 20 ms long, in order."""
        out: list[Released] = []
        chunk = max(1, int(self.sample_rate * CHUNK_S))
        while self._queue:
            if self.cursor < now:
                self.cursor = now  # the queue had run dry: play from now
            if self.cursor >= now + lead:
                break
            segment = self._queue[0]
            if segment.started_at is None:
                segment.started_at = self.cursor
                self.history.append(segment)
            take = min(chunk, segment.audio.size - segment.sent)
            samples = segment.audio[segment.sent:segment.sent + take]
            started = [segment] if segment.sent == 0 else []
            out.append(Released(samples, self.cursor, started))
            segment.sent += take
            self.cursor += take / self.sample_rate
            if segment.done:
                segment.ended_at = self.cursor
                self._queue.popleft()
        return out

    def stop(self) -> None:
        """Drop everything not yet released; the segment cut short keeps its `sent` count."""
        for segment in self._queue:
            if segment.started_at is not None and segment.ended_at is None:
                segment.ended_at = self.cursor
        self._queue.clear()

    def heard_segments(self) -> list[tuple[Segment, float]]:
        """Released segments of the turn with the fraction of each that was released."""
        return [(s, s.sent / max(1, s.audio.size)) for s in self.history]

    def new_turn(self) -> None:
        self.history = []
