"""The compute worker: the one thread that touches the device.

It loads and warms the pipelines (measuring a cost profile on the way), then loops: run the
commands queued by the event loop (create a stream's state, apply an update, drop a stream) at
the tick boundary, adjust quality where sessions allow it, ask the scheduler for a plan, run the
planned batch through its pipeline's `step`, and report the measured step back to the scheduler.
Results go back to the sessions through `Session.emit`; the event loop never waits on a model.

Policy lives elsewhere (streaming.scheduler, streaming.degradation): this file only executes.

Faults stay with the stream they hit. A step that raises is retried stream by stream, and the
stream it fails on is told (`internal`). Running out of device memory frees what the failed call
held, then lowers that stream's quality if its SLO allows it, or ends it (`out_of_memory`); a
stage process that dies ends the sessions of the pipelines split across it (`pipeline_failed`)
and new ones are refused. The session manager hears of both through `on_session_failed` and
`on_pipeline_failed` (called on the worker's or a monitor thread) and closes them on the loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

import numpy as np

from models.engines.component import BuildPolicy, build_for_streams, collect_engines
from pipelines.base import Pipeline, PipelineKind, StepInput, StepOutput, merge_params, parse_params
from streaming.capacity import Demand
from streaming.costs import CostModel
from streaming.degradation import DegradationPolicy, QualityMove, QualityView
from streaming.errors import ErrorCode, StreamError
from streaming.frames import AudioChunk, VideoFrame
from streaming.memory import is_out_of_memory, release_after_out_of_memory
from streaming.scheduler import Batch, SloScheduler, StreamView, TickPlan
from streaming.session import OutputAudio, OutputFrame, QualityChanged, QualityLevel, Session, StreamNotice, values_of
from streaming.stages.group import StageGroup
from streaming.stages.placement import place_stages
from streaming.stats import StatCount

log = logging.getLogger(__name__)

T = TypeVar("T")

_WARMUP_MAX_TICKS = 8
PROFILE_BATCHES = (1, 2)   # batch sizes measured at warm-up
PROFILE_TICKS = 3          # measured ticks per batch size, after the pipe has filled
QUALITY_EVERY_S = 0.25     # how often degradation is reconsidered
TEST_FRAME_SIZE = (64, 64)  # width, height of the warm-up input: pipelines resize inputs to their own size


class ComputeWorker:
    def __init__(self, load_pipelines: Callable[[], Mapping[str, Pipeline]], *, warmup: bool = True, max_batch: int = 16,
                 stage_devices: list[str] | None = None):
        self._load_pipelines = load_pipelines
        self._warmup = warmup
        self._stage_devices = stage_devices
        self.stage_group: StageGroup | None = None  # the processes of pipelines split across devices
        self.max_batch = max_batch
        self.pipelines: dict[str, Pipeline] = {}
        self.ready = threading.Event()
        self.failed: BaseException | None = None
        self.failed_pipelines: dict[str, str] = {}   # pipeline name -> why it can serve no stream any more
        # Set by the session manager: end one session (id, code, message), or every session of a pipeline (name, message).
        self.on_session_failed: Callable[[str, ErrorCode, str], None] | None = None
        self.on_pipeline_failed: Callable[[str, str], None] | None = None
        self.finished_loading = threading.Event()   # set on success and on failure
        self.costs = CostModel()                     # read by admission control on the event loop
        self.scheduler = SloScheduler(self.costs, max_batch)
        self.degradation = DegradationPolicy(self.costs)
        self._sessions: dict[str, Session] = {}      # worker thread only
        self._next_quality_check = 0.0
        self._commands: deque[tuple[Callable[[], Any], Future]] = deque()
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="compute-worker", daemon=True)

    # --- called from any thread ----------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def wake(self) -> None:
        self._wake.set()

    def call(self, fn: Callable[[], T]) -> Future[T]:
        """Run `fn` on the worker thread at the next tick boundary (never during a step)."""
        future: Future[T] = Future()
        self._commands.append((fn, future))
        self._wake.set()
        return future

    def attach(self, session: Session) -> Future[None]:
        return self.call(lambda: self._sessions.__setitem__(session.id, session))

    def detach(self, session_id: str) -> Future[None]:
        """Forget a stream; its state (and the device memory it holds) goes with the last reference."""
        return self.call(lambda: self._forget(session_id))

    # --- worker thread -------------------------------------------------------------------

    def _run(self) -> None:
        try:
            with collect_engines() as engines:  # the compiled engines of these pipelines' models
                self.pipelines = dict(self._load_pipelines())
            if self._stage_devices:
                self.stage_group = place_stages(self.pipelines, self._stage_devices)
                if self.stage_group is not None:
                    self.stage_group.watch(self._stage_process_died)
            if self._warmup:
                for name, pipeline in self.pipelines.items():
                    started = time.perf_counter()
                    warm_up(pipeline)
                    # Engines for the shapes warm-up used, for every batch of streams the scheduler may form.
                    build_for_streams(engines, self.max_batch)
                    profile_costs(name, pipeline, self.costs)
                    log.info("warmed %s in %.2f s; step costs (ms): %s", name, time.perf_counter() - started,
                             self.costs.snapshot().get(name))
            for engine in engines:  # from now on a shape without an engine runs eager while it is built: no stream stalls
                engine.build_policy = BuildPolicy.BACKGROUND
        except BaseException as err:  # reported through /health and `serve`
            if isinstance(err, ValueError):  # the loaders' own messages (missing weights, no network) say it all
                log.error("loading the pipelines failed: %s", err)
            else:
                log.exception("loading the pipelines failed")
            self.failed = err
            self._close_stages()
            self.finished_loading.set()
            return
        self.ready.set()
        self.finished_loading.set()
        while not self._stopping:
            self._wake.clear()
            try:
                plan = self._tick()
            except Exception:  # a bug in one tick must not stop every stream
                log.exception("compute tick failed")
                self._wake.wait(0.1)
                continue
            if not plan.batches:
                wake_at = plan.wake_at
                if any(s.quality or s.slo.degrade for s in self._sessions.values()):
                    wake_at = self._next_quality_check if wake_at is None else min(wake_at, self._next_quality_check)
                self._wake.wait(None if wake_at is None else max(0.0, wake_at - time.monotonic()))
        self._run_commands()  # let pending callers see a result rather than hang
        self._close_stages()

    def _close_stages(self) -> None:
        if self.stage_group is not None:
            self.stage_group.close()
            self.stage_group = None

    def _tick(self) -> TickPlan:
        self._run_commands()
        now = time.monotonic()
        if now >= self._next_quality_check:
            self._next_quality_check = now + QUALITY_EVERY_S
            self._adjust_quality(now)
        plan = self.scheduler.schedule([self._view(s, now) for s in self._sessions.values()], now)
        for session_id in plan.stale:
            session = self._sessions[session_id]
            if session.video_in.take() is not None:
                session.count_stale_input()
        for batch in plan.batches:
            self._run_batch(batch)
        return plan

    def _view(self, session: Session, now: float) -> StreamView:
        profile, params = session.pipeline.scheduling, session.params
        return StreamView(
            session.id, session.pipeline_name, session.needs_input, _queued_at(session.video_in.peek()), session.next_due,
            profile.cost_shape(params), session.slo.target_fps, session.slo.latency_budget_ms / 1000,
            profile.pipe_depth(params), session.stats.input_fps(now))

    def _forget(self, session_id: str) -> None:
        session = self._sessions.pop(session_id, None)
        self.scheduler.forget(session_id)
        if session is not None and session.state is not None:
            session.pipeline.close_state(session.state)  # background work of the stream stops with it
            session.release_state()

    def _run_commands(self) -> None:
        while self._commands:
            fn, future = self._commands.popleft()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as err:  # noqa: BLE001 - handed to the caller
                if is_out_of_memory(err):  # building a stream's state: the caller refuses the session
                    release_after_out_of_memory(err)
                future.set_exception(err)

    # --- quality ---------------------------------------------------------------------------

    def _adjust_quality(self, now: float) -> None:
        views = [self._quality_view(s, now) for s in self._sessions.values() if s.slo.degrade or s.quality]
        if not views:
            return
        others = [QualityView(self._view(s, now).demand(), None, None) for s in self._sessions.values()
                  if not (s.slo.degrade or s.quality)]
        move = self.degradation.decide([*views, *others], now)
        if move is not None:
            self._apply_quality(self._sessions[move.session_id], move)

    def _quality_view(self, session: Session, now: float) -> QualityView:
        current = self._view(session, now).demand()
        step = self._next_step_down(session)
        lower = None if step is None else self._demand_with(session, current, step[1])
        higher = self._demand_with(session, current, session.quality[-1].restore(session.params)) if session.quality else None
        return QualityView(current, lower, higher)

    def _next_step_down(self, session: Session) -> tuple[str, dict[str, Any]] | None:
        """The first knob the session allows that can still go down, and its changes."""
        for knob in session.slo.degrade:
            changes = session.pipeline.scheduling.lower_quality(session.params, knob)
            if changes:
                return knob, changes
        return None

    def _demand_with(self, session: Session, current: Demand, changes: Mapping[str, Any]) -> Demand:
        """The session's demand with `changes` applied (normalised as its update would)."""
        profile = session.pipeline.scheduling
        params = merge_params(session.params, changes)
        return Demand(current.session_id, current.pipeline, profile.cost_shape(params), current.fps, current.latency_budget_s,
                      profile.pipe_depth(params))

    def _apply_quality(self, session: Session, move: QualityMove) -> None:
        if move.direction == "down":
            step = self._next_step_down(session)
            if step is None:
                return
            knob, changes = step
        else:
            knob, changes = session.quality[-1].knob, session.quality[-1].restore(session.params)
        before = session.params
        try:
            result = session.pipeline.update(session.state, changes)
        except Exception as err:  # noqa: BLE001 - the stream keeps the quality it had
            log.warning("quality change of session %s failed: %s", session.id, err)
            return
        if move.direction == "down":
            session.quality.append(QualityLevel(knob, values_of(before, result.applied), values_of(result.params, result.applied)))
        else:
            session.quality.pop()
        log.info("session %s quality %s (%s): %s", session.id, move.direction, knob, move.reason)
        session.emit(QualityChanged(move.direction, knob, len(session.quality), values_of(result.params, result.applied), move.reason,
                                    result.discarded_frames))

    # --- steps -----------------------------------------------------------------------------

    def _run_batch(self, batch: Batch) -> None:
        pipeline = self.pipelines[batch.pipeline]
        started = time.monotonic()
        entries: list[tuple[Session, StepInput]] = []
        for session_id in batch.session_ids:
            session = self._sessions[session_id]
            frame: StepInput
            if session.needs_input:
                frame = session.video_in.take()
                if frame is None:
                    continue
                frame.stamp("started", started)
                if (meter := session.stats.consistency) is not None:
                    meter.note_input(frame)  # kept (a reference) until its output is measured
            else:
                # An audio pipeline gets the audio that arrived since its last tick.
                frame = session.audio_in.drain() if session.pipeline.kind is PipelineKind.AUDIO_TO_AUDIO else None
                period = 1.0 / session.slo.target_fps
                session.next_due = max(session.next_due + period, started - period)
            entries.append((session, frame))
        if not entries:
            return
        outputs = self._step(pipeline, entries)
        finished = time.monotonic()
        shapes = {s.id: s.pipeline.scheduling.cost_shape(s.params) for s, _ in entries}
        self.scheduler.update_from_output(batch, shapes, started, finished)
        pipeline_metrics = entries[0][0].metrics
        pipeline_metrics.model_time.observe(finished - started)
        pipeline_metrics.batch_size.observe(len(entries))
        for (session, frame), output in zip(entries, outputs):
            if output is None:
                continue
            if output.error is not None:
                session.stats.count(StatCount.ERRORS)
                frame_id = frame.frame_id if isinstance(frame, VideoFrame) else None
                session.emit(StreamNotice(StreamError(ErrorCode.INPUT_REJECTED, output.error), frame_id))
            queue_wait = started - frame.timestamps.get("queued", started) if isinstance(frame, VideoFrame) else None
            session.stats.record_step(queue_wait, finished - started)
            if queue_wait is not None:
                session.metrics.queue_wait.observe(queue_wait)
            if output.skipped:
                session.stats.count(StatCount.SKIPPED)
            if isinstance(frame, VideoFrame) and not output.consumed:
                session.video_in.put_back(frame)
            if frame is None and len(output.frames) > 1:
                # A chunk of frames covers several ticks of the stream's clock: skip those ticks.
                session.next_due += (len(output.frames) - 1) / session.slo.target_fps
            for index, out in enumerate(output.frames):
                if isinstance(out, AudioChunk):
                    out.stream_id = session.id
                    session.emit(OutputAudio(out))
                    continue
                self._deliver(session, out, frame is None, output.skipped, index, started, finished)

    def _step(self, pipeline: Pipeline, entries: list[tuple[Session, StepInput]]) -> Sequence[StepOutput | None]:
        """One batched step; if it fails, each stream is retried alone so that one stream's bad
        input (or one batch too large for the device's memory) costs only that stream its frame."""
        try:
            return pipeline.step([(s.state, f) for s, f in entries])
        except Exception as err:  # reported to the stream, the server goes on
            out_of_memory = is_out_of_memory(err)
            if out_of_memory:
                release_after_out_of_memory(err)
            if len(entries) == 1:
                session, frame = entries[0]
                session.stats.count(StatCount.ERRORS)
                if out_of_memory:
                    self._out_of_memory(session, str(err))
                    return [None]
                log.warning("pipeline %s failed on session %s: %s", pipeline.name, session.id, err, exc_info=True)
                session.emit(StreamNotice(StreamError(ErrorCode.INTERNAL, f"{pipeline.name} failed on this frame: {err}"),
                                          frame.frame_id if isinstance(frame, VideoFrame) else None))
                return [None]
            return [self._step(pipeline, [entry])[0] for entry in entries]

    def _out_of_memory(self, session: Session, error: str) -> None:
        """One stream alone does not fit in the device's memory: step its quality down if its SLO
        allows it (the `quality` message says why), else end it and free its state."""
        reason = f"the device ran out of memory for this stream ({error.splitlines()[0] if error else 'no details'})"
        if self._next_step_down(session) is not None:
            levels = len(session.quality)
            self._apply_quality(session, QualityMove(session.id, "down", reason))
            if len(session.quality) > levels:
                return
        log.warning("session %s ended: %s", session.id, reason)
        self._forget(session.id)
        if self.on_session_failed is not None:
            self.on_session_failed(session.id, ErrorCode.OUT_OF_MEMORY, f"{reason}; start it again with a smaller size or fewer steps")

    def _stage_process_died(self, process: str, exitcode: int | None) -> None:
        """A stage process exited while serving (its monitor thread calls this): the pipelines split
        across it can serve nobody now; their sessions end and new ones are refused."""
        for name, pipeline in self.pipelines.items():
            if pipeline.scheduling.stages is None:
                continue
            reason = f"stage process {process} of pipeline {name} exited (code {exitcode})"
            log.error("%s; its sessions end, and it takes no new ones until the server restarts", reason)
            self.failed_pipelines[name] = reason
            if self.on_pipeline_failed is not None:
                self.on_pipeline_failed(name, reason)

    @staticmethod
    def _deliver(session: Session, out: VideoFrame, generated: bool, reused: bool, index: int, started: float,
                 finished: float) -> None:
        out.stream_id = session.id
        if generated:
            # Frames made without input get their identity here: ids count up, pts is the tick time
            # (the frames of a chunk one frame interval apart, so they are paced out).
            out.frame_id = session.generated
            out.pts = started - session.stats.created_at + index / session.slo.target_fps
            session.generated += 1
            out.timestamps.setdefault("received", started)
            out.stamp("started", started)
        out.stamp("finished", finished)
        if (meter := session.stats.consistency) is not None:
            meter.observe_output(out, finished)  # sampled; measured off this thread
        session.emit(OutputFrame(out, reused))


def _queued_at(frame: VideoFrame | None) -> float | None:
    return None if frame is None else frame.timestamps.get("queued", 0.0)


def _test_frame(pipeline: Pipeline, params: Any) -> VideoFrame | None:
    """An input for warm-up and profiling (a small grey picture), or None for a stream that needs
    no input."""
    if not pipeline.needs_input(params):
        return None
    return VideoFrame(np.full((TEST_FRAME_SIZE[1], TEST_FRAME_SIZE[0], 3), 127, np.uint8), frame_id=0, pts=0.0, stream_id="warmup")


def warm_up(pipeline: Pipeline) -> None:
    """Run one throwaway stream until it produces a frame, so the first real client does not pay
    for lazy initialisation (kernel selection, allocator growth, compiled graphs)."""
    params = parse_params(pipeline.params_model, None)
    state = pipeline.new_state(params, stream_id="warmup")
    frame = _test_frame(pipeline, params)
    for _ in range(_WARMUP_MAX_TICKS):
        if pipeline.step([(state, frame)])[0].frames:
            return


def profile_costs(name: str, pipeline: Pipeline, costs: CostModel) -> None:
    """Measure steps of 1 and 2 streams at the default parameters, once their pipes are full, so
    admission control and the scheduler have costs before the first client arrives."""
    profile = pipeline.scheduling
    params = parse_params(pipeline.params_model, None)
    frame = _test_frame(pipeline, params)
    fill = profile.pipe_depth(params) + 1
    for size in PROFILE_BATCHES:
        batch = [(pipeline.new_state(params, stream_id=f"profile{i}"), frame) for i in range(size)]
        for _ in range(fill):
            pipeline.step(batch)
        started = time.perf_counter()
        for _ in range(PROFILE_TICKS):
            pipeline.step(batch)
        costs.observe(name, [profile.cost_shape(params)] * size, (time.perf_counter() - started) / PROFILE_TICKS)
