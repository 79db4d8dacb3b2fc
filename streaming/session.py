"""One stream: its pipeline, per-stream pipeline state, SLO, input holders and stats.

The event loop writes inputs into the holders; the compute worker owns `state` and reports back
through `emit`, which the transport attached to the session turns into messages. The parameters
in force are the state's (`Session.params` reads them): the pipeline's `update` is the only
thing that changes them, so every reader sees the same values.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from pipelines.base import Pipeline, PipelineKind, PipelineState
from streaming.audio_delay import AudioDelayLine
from streaming.consistency import ConsistencyMeter
from streaming.errors import StreamError
from streaming.frames import AudioChunk, VideoFrame
from streaming.metrics import PipelineMetrics
from streaming.protocol import SloSpec
from streaming.slots import AudioFifo, LatestSlot
from streaming.stats import SessionStats, StatCount


@dataclass(frozen=True, slots=True)
class OutputFrame:
    frame: VideoFrame
    reused: bool = False  # the similarity filter returned the previous output


@dataclass(frozen=True, slots=True)
class OutputAudio:
    chunk: AudioChunk


@dataclass(frozen=True, slots=True)
class StreamNotice:
    """An error about one input (a frame the pipeline failed on); the session goes on."""

    error: StreamError
    frame_id: int | None = None


@dataclass(frozen=True, slots=True)
class QualityChanged:
    """The server lowered (or restored) the stream's quality under load, as its SLO allows:
    `changes` are the values now in force of the parameters that changed, `level` how many steps
    below what it asked for."""

    direction: str      # "down" or "up"
    knob: str           # "steps", "resolution" or "chunk"
    level: int
    changes: dict[str, Any]
    reason: str
    discarded_frames: int = 0


@dataclass(frozen=True, slots=True)
class QualityLevel:
    """One applied step down: the knob, the values in force before it of the parameters it
    changed (restored on the way up), and the values it set (a parameter the stream has changed
    since is not restored)."""

    knob: str
    previous: dict[str, Any]
    lowered: dict[str, Any]

    def restore(self, params: BaseModel) -> dict[str, Any]:
        """The changes that undo this level now: the previous values of what it still holds."""
        now = values_of(params, self.previous)
        return {name: value for name, value in self.previous.items() if now[name] == self.lowered[name]}


def values_of(params: BaseModel, names: Iterable[str]) -> dict[str, Any]:
    """The values of `names` in `params`, as JSON data (what events and quality levels carry)."""
    return params.model_dump(mode="json", include=set(names))


@dataclass(frozen=True, slots=True)
class SessionClosed:
    """The server ended the session (idle timeout, REST delete, shutdown); `reason` says which."""

    reason: str
    message: str


SessionEvent = OutputFrame | OutputAudio | StreamNotice | QualityChanged | SessionClosed


class Session:
    def __init__(self, session_id: str, pipeline_name: str, pipeline: Pipeline, state: PipelineState,
                 slo: SloSpec, metrics: PipelineMetrics, audio_buffer_s: float, wake: Callable[[], None]):
        self.id = session_id
        self.pipeline_name = pipeline_name
        self.pipeline = pipeline
        self.state: PipelineState | None = state  # owned by the worker once attached; None once released
        self._final_params: BaseModel = state.params
        self.slo = slo
        self.metrics = metrics
        self.video_in: LatestSlot[VideoFrame] = LatestSlot()
        self.audio_in = AudioFifo(audio_buffer_s)   # audio a pipeline takes (audio-to-audio)
        self.stats = SessionStats(slo.latency_budget_ms / 1000)
        self.stats.extra = self._pipeline_stats
        # Audio beside a video stream: back out with the generated video, never through the worker.
        self.audio_delay: AudioDelayLine | None = None
        if pipeline.kind is not PipelineKind.AUDIO_TO_AUDIO:
            self.stats.consistency = ConsistencyMeter()
            self.audio_delay = AudioDelayLine(lambda chunk: self.emit(OutputAudio(chunk)), self.stats.latency_median_s, audio_buffer_s)
        self.created_wall = time.time()
        self.last_activity = time.monotonic()
        self.sink: Callable[[SessionEvent], None] | None = None  # set by the transport streaming it
        self.stream_sends_video = False   # that transport sends (and counts) the generated video itself
        self.owner: str | None = None     # the short-lived token it counts against (None: bounded by max_sessions only)
        # Extra viewers of the output (WHEP players). A tuple, replaced whole, so the worker can
        # iterate it while the event loop adds or removes one.
        self.watchers: tuple[Callable[[SessionEvent], None], ...] = ()
        self.closed = False
        self.next_due = time.monotonic()  # next tick of a stream that needs no input
        self.quality: list[QualityLevel] = []  # steps down applied under load, the latest last
        self.admitted_estimate: dict[str, Any] | None = None  # what admission control forecast for it
        self.generated = 0                # frame ids of frames made without input
        self._wake = wake

    @property
    def params(self) -> Any:
        """The parameters in force: the pipeline state's (the last ones once the state is released)."""
        state = self.state
        return self._final_params if state is None else state.params

    @property
    def needs_input(self) -> bool:
        """Whether the stream advances on its input frames or on its own clock."""
        return self.pipeline.needs_input(self.params)

    def stats_snapshot(self) -> dict[str, Any]:
        """The body of a stats message: the measurements, the parameters in force and how many
        quality levels the server has stepped down (a client that did not make a change, or
        missed its message, stays in sync from here)."""
        return {**self.stats.snapshot(), "params": self.params.model_dump(mode="json"),
                "quality_level": len(self.quality)}

    def release_state(self) -> None:
        """The stream has ended: drop its state (and the device memory it holds) now, though a
        transport may still hold the session object for a moment."""
        if self.state is not None:
            self._final_params = self.state.params
            self.state = None

    def _pipeline_stats(self) -> dict:
        """The pipeline's own figures for this stream (read off the worker thread: the pipeline
        keeps them behind its own lock)."""
        state = self.state
        return {} if state is None else self.pipeline.stream_stats(state)

    def touch(self) -> None:
        self.last_activity = time.monotonic()

    def set_slo(self, slo: SloSpec) -> None:
        self.slo = slo
        self.stats.latency_budget_s = slo.latency_budget_ms / 1000

    # --- event loop side -----------------------------------------------------------------

    def record_received(self, at: float) -> None:
        self.touch()
        self.stats.record_input(at)
        self.metrics.frames_received.inc()

    def record_sent(self, frame: VideoFrame) -> None:
        """Account for an output frame the transport just sent (stamped `sent`)."""
        first = self.stats.first_output_at is None
        latency = self.stats.record_sent(frame)
        self.metrics.frames_sent.inc()
        if first:
            self.metrics.time_to_first_frame.observe(frame.timestamps["sent"] - self.stats.created_at)
        if latency is not None:
            self.metrics.latency.observe(latency)
            if latency > self.stats.latency_budget_s:
                self.metrics.deadline_misses.inc()

    def record_sent_by_watcher(self, frame: VideoFrame) -> None:
        """A watcher (a WHEP player) sent `frame`. It is the session's output when its stream sends
        no video of its own (a WHIP publisher, or no stream at all), counted once however many watch:
        the first player to send a frame stamps it (watchers share the frame object)."""
        if (self.sink is not None and self.stream_sends_video) or "sent" in frame.timestamps:
            return
        frame.stamp("sent")
        self.record_sent(frame)

    def count_dropped_output(self) -> None:
        self.stats.count(StatCount.DROPPED_OUTPUT)
        self.metrics.dropped_output.inc()

    def count_audio_sent(self) -> None:
        self.stats.count(StatCount.AUDIO_CHUNKS_OUT)

    def push_video(self, frame: VideoFrame) -> None:
        """Hand a decoded input to the worker; an input it has not taken yet is dropped."""
        frame.stream_id = self.id
        frame.stamp("queued")
        if self.video_in.put(frame):
            self.count_dropped_input()
        self._wake()

    def count_dropped_input(self) -> None:
        self.stats.count(StatCount.DROPPED_INPUT)
        self.metrics.dropped_input.inc()

    def count_stale_input(self) -> None:
        """The scheduler dropped the waiting input: it was already older than the latency budget."""
        self.stats.count(StatCount.DROPPED_STALE)
        self.metrics.dropped_stale.inc()

    def push_audio(self, chunk: AudioChunk) -> None:
        """Queue audio in order, for the pipeline or (a video stream) to go back out with the video;
        StreamError(audio_overflow) when the buffer is full."""
        chunk.stream_id = self.id
        chunk.stamp("queued")
        try:
            (self.audio_in if self.audio_delay is None else self.audio_delay).put(chunk)
        except StreamError:
            self.stats.count(StatCount.AUDIO_REFUSED)
            raise
        self.stats.count(StatCount.AUDIO_CHUNKS_IN)
        if self.audio_delay is None:
            self._wake()

    # --- worker side ---------------------------------------------------------------------

    def emit(self, event: SessionEvent) -> None:
        if self.closed:
            return
        if self.sink is not None:
            self.sink(event)
        for watcher in self.watchers:
            watcher(event)

    def watch(self, watcher: Callable[[SessionEvent], None]) -> None:
        self.watchers = (*self.watchers, watcher)

    def unwatch(self, watcher: Callable[[SessionEvent], None]) -> None:
        self.watchers = tuple(w for w in self.watchers if w is not watcher)
