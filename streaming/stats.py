"""Per-session measurements, taken from the stage timestamps every frame carries.

Windows are short (the last few hundred frames, the last two seconds for rates) so a stats
message describes the stream as it is now, not averaged over its life.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from enum import Enum

import numpy as np

from streaming.consistency import ConsistencyMeter
from streaming.frames import VideoFrame

_WINDOW = 512          # frames kept for percentiles
_RATE_WINDOW_S = 2.0   # seconds over which fps is measured...
_RATE_SLOW_SPAN_S = 10.0  # ...or the last two events, when they are further apart (0.4 fps reads 0.4, not 0)


def _ms_percentiles(values: deque[float], quantiles: tuple[int, ...] = (50, 95, 99)) -> dict[str, float | None]:
    if not values:
        return {f"p{q}": None for q in quantiles}
    found = np.percentile(np.fromiter(values, float), quantiles)
    return {f"p{q}": round(float(v) * 1000, 2) for q, v in zip(quantiles, found)}


class _Rate:
    """Events per second over the last couple of seconds, or over the last two events when they are
    further apart; the rate decays once events stop coming."""

    def __init__(self) -> None:
        self._times: deque[float] = deque()

    def add(self, at: float) -> None:
        self._times.append(at)
        self._trim(at)

    def per_second(self, now: float) -> float:
        self._trim(now)
        if len(self._times) < 2:
            return 0.0
        span = max(self._times[-1] - self._times[0], now - self._times[-1])
        return (len(self._times) - 1) / max(span, 1e-6)

    def _trim(self, now: float) -> None:
        while len(self._times) > 2 and now - self._times[0] > _RATE_WINDOW_S:
            self._times.popleft()
        while self._times and now - self._times[0] > _RATE_SLOW_SPAN_S:
            self._times.popleft()


class StatCount(str, Enum):
    """The counters of a session that are bumped one event at a time (the value is the stats key)."""

    DROPPED_INPUT = "dropped_input"
    DROPPED_OUTPUT = "dropped_output"
    DROPPED_STALE = "dropped_stale"      # inputs the scheduler dropped as older than the latency budget
    SKIPPED = "skipped"                  # inputs the similarity filter answered with the previous output
    ERRORS = "errors"
    AUDIO_CHUNKS_IN = "audio_chunks_in"
    AUDIO_CHUNKS_OUT = "audio_chunks_out"
    AUDIO_REFUSED = "audio_refused"


class SessionStats:
    """Counters and latency windows of one session. Written by the event loop (arrivals, sends)
    and by the compute worker (queue wait, model time), hence the lock."""

    def __init__(self, latency_budget_s: float) -> None:
        self.latency_budget_s = latency_budget_s
        self.created_at = time.monotonic()
        self.first_output_at: float | None = None
        self.frames_in = 0
        self.frames_stepped = 0   # inputs the pipeline took (the rest were dropped or still wait)
        self.frames_out = 0
        self.deadline_misses = 0
        self.counts = dict.fromkeys(StatCount, 0)
        self._rate_in = _Rate()
        self._rate_out = _Rate()
        self._latency: deque[float] = deque(maxlen=_WINDOW)
        self._queue_wait: deque[float] = deque(maxlen=_WINDOW)
        self._model: deque[float] = deque(maxlen=_WINDOW)
        self._lock = threading.Lock()
        self.extra: Callable[[], dict] | None = None  # a pipeline's own sections of the snapshot
        self.consistency: ConsistencyMeter | None = None  # a video stream's temporal consistency (streaming.consistency)

    def record_input(self, at: float) -> None:
        with self._lock:
            self.frames_in += 1
            self._rate_in.add(at)

    def record_step(self, queue_wait: float | None, model_time: float) -> None:
        """One step served this session; `queue_wait` is None when it took no input (txt2img)."""
        with self._lock:
            if queue_wait is not None:
                self.frames_stepped += 1
                self._queue_wait.append(queue_wait)
            self._model.append(model_time)

    def record_sent(self, frame: VideoFrame) -> float | None:
        """Count a frame that left the server; returns its latency (received to sent) if known."""
        sent = frame.timestamps["sent"]
        with self._lock:
            self.frames_out += 1
            self._rate_out.add(sent)
            if self.first_output_at is None:
                self.first_output_at = sent
            received = frame.timestamps.get("received")
            if received is None:
                return None
            latency = sent - received
            self._latency.append(latency)
            if latency > self.latency_budget_s:
                self.deadline_misses += 1
            return latency

    def latency_median_s(self) -> float:
        """How far the output is behind its input (received to sent, median of the window); 0 before any output."""
        with self._lock:
            return float(np.median(self._latency)) if self._latency else 0.0

    def input_fps(self, now: float) -> float:
        with self._lock:
            return self._rate_in.per_second(now)

    def count(self, counter: StatCount, n: int = 1) -> None:
        with self._lock:
            self.counts[counter] += n

    def snapshot(self) -> dict:
        now = time.monotonic()
        extra = self.extra() if self.extra is not None else {}
        if self.consistency is not None:
            extra = {**extra, "consistency": self.consistency.snapshot()}
        with self._lock:
            counts = self.counts
            ttff = None if self.first_output_at is None else round((self.first_output_at - self.created_at) * 1000, 1)
            return {
                "uptime_s": round(now - self.created_at, 3),
                "time_to_first_frame_ms": ttff,
                "frames_in": self.frames_in,
                "frames_stepped": self.frames_stepped,
                "frames_out": self.frames_out,
                "fps_in": round(self._rate_in.per_second(now), 2),
                "fps_out": round(self._rate_out.per_second(now), 2),
                "dropped_input": counts[StatCount.DROPPED_INPUT],
                "dropped_output": counts[StatCount.DROPPED_OUTPUT],
                "dropped_stale": counts[StatCount.DROPPED_STALE],
                "deadline_misses": self.deadline_misses,
                "skipped": counts[StatCount.SKIPPED],
                "errors": counts[StatCount.ERRORS],
                "latency_ms": _ms_percentiles(self._latency),
                "queue_wait_ms": _ms_percentiles(self._queue_wait),
                "model_ms": _ms_percentiles(self._model),
                "audio": {"chunks_in": counts[StatCount.AUDIO_CHUNKS_IN], "chunks_out": counts[StatCount.AUDIO_CHUNKS_OUT],
                          "refused": counts[StatCount.AUDIO_REFUSED]},
                **extra,
            }
