"""The sessions of a server: admission, creation, parameter updates, closing and idle reaping.

Lives on the event loop. Anything that touches pipeline state (building it, updating it,
dropping it) is handed to the compute worker, which runs it between ticks; callers await the
result, so an update is acknowledged only once it is in force.

Admission: a session is refused (`busy`, with the reason) when all `max_sessions` slots are taken
or when the measured costs say it would make running sessions miss their SLOs
(`streaming.admission`). A client that asked to queue waits in line instead, told its position
whenever it changes; only the head of the line is considered, so nobody is overtaken. A session
may belong to an owner (the short-lived token that asked for it), who holds at most
`max_sessions_per_owner` at once (`too_many_sessions`).

A session is made only from a request that has been checked whole (pipeline, parameters, SLO,
owner's room), and a create that fails or is cancelled after that leaves nothing behind. Running
out of device memory while building its state refuses it (`out_of_memory`), after the worker has
freed what the attempt held. The worker ends a session itself (out of memory mid-stream, a dead
stage process) through `on_session_failed`/`on_pipeline_failed`, which hop onto the loop here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from pydantic import BaseModel, Field

from pipelines.base import ParamError, Pipeline, UpdateClass, UpdateResult, parse_params, strongest_class
from streaming.admission import AdmissionDecision, decide_admission
from streaming.capacity import Demand
from streaming.errors import ErrorCode, StreamError
from streaming.memory import is_out_of_memory
from streaming.metrics import ServerMetrics, SessionSample
from streaming.protocol import SloSpec
from streaming.session import Session, SessionClosed, SessionEvent
from streaming.worker import ComputeWorker

log = logging.getLogger(__name__)

QUEUE_RECHECK_S = 0.5  # a queued start looks again this often (costs and input rates change)

# Called with (position in line, why it waits) whenever a queued start's position changes.
QueuedCallback = Callable[[int, str], Awaitable[None]]


class SessionInfo(BaseModel):
    id: str
    pipeline: str
    params: dict[str, Any] = Field(description="The full parameter set in force.")
    needs_input: bool = Field(description="The stream advances on input frames (false: on its own clock, generating).")
    slo: SloSpec
    streaming: bool = Field(description="A stream connection is attached and carries its media.")
    created_at: float = Field(description="Unix time of creation.")
    notes: list[str] = Field(default_factory=list, description="What the model will not do with these parameters, in plain "
                             "words (a prompt outside its vocabulary, txt2img on a model that only restyles); empty when nothing.")


class UpdateReport(BaseModel):
    """What an accepted update did: the body of a WebSocket `ack` and of a REST PATCH reply."""

    applied: list[str] = Field(description="Parameters that changed.")
    update_class: UpdateClass | None = Field(
        description="hot: in force from the next frame, frames in flight kept; reset: frames in flight were discarded "
        "and the pipe warms up again. The strongest class among `applied`; null when only the SLO changed.")
    reset: bool
    discarded_frames: int
    params: dict[str, Any] = Field(description="The full parameter set now in force.")
    needs_input: bool = Field(description="The stream advances on input frames (false: on its own clock, generating).")
    slo: SloSpec
    notes: list[str] = Field(default_factory=list, description="What the model will not do with these parameters, in plain "
                             "words (a prompt outside its vocabulary, txt2img on a model that only restyles); empty when nothing.")


class SessionManager:
    def __init__(self, worker: ComputeWorker, metrics: ServerMetrics, *, max_sessions: int, idle_timeout_s: float,
                 audio_buffer_s: float, max_queue: int = 16, max_sessions_per_owner: int | None = None):
        self.worker = worker
        self.metrics = metrics
        self.max_sessions = max_sessions
        self.max_sessions_per_owner = max_sessions_per_owner
        self.idle_timeout_s = idle_timeout_s
        self.audio_buffer_s = audio_buffer_s
        self.max_queue = max_queue
        self.sessions: dict[str, Session] = {}
        # Sessions being created: counted so concurrent creates cannot overshoot.
        self._admitting: dict[str, Demand] = {}
        self._queue: list[asyncio.Event] = []  # queued starts, in order; each woken when room may have appeared
        self._creating: Counter[str] = Counter()  # creates under way (queued included), by owner
        self.loop: asyncio.AbstractEventLoop | None = None  # the loop sessions live on, once one is made
        worker.on_session_failed = self._session_failed
        worker.on_pipeline_failed = self._pipeline_failed

    @property
    def default_pipeline(self) -> str | None:
        return next(iter(self.worker.pipelines), None)

    def get(self, session_id: str) -> Session:
        try:
            return self.sessions[session_id]
        except KeyError:
            raise StreamError(ErrorCode.UNKNOWN_SESSION, f"no session {session_id!r} (it may have ended or timed out)") from None

    async def create(self, pipeline_name: str | None, params: Mapping[str, Any], slo: SloSpec, *,
                     on_queued: QueuedCallback | None = None, owner: str | None = None) -> Session:
        """Admit and build a session. With `on_queued`, a start that does not fit waits in line
        (told its position through the callback) instead of being refused. `owner` (a short-lived
        token) holds at most `max_sessions_per_owner` sessions."""
        self.loop = asyncio.get_running_loop()
        if not self.worker.ready.is_set():
            why = f"loading the models failed ({self.worker.failed})" if self.worker.failed else "models are still loading"
            raise StreamError(ErrorCode.NOT_READY, f"{why}; see /health")
        name = pipeline_name or self.default_pipeline
        pipeline = self.worker.pipelines.get(name) if name is not None else None
        if name is None or pipeline is None:
            raise StreamError(ErrorCode.UNKNOWN_PIPELINE, f"unknown pipeline {name!r}; this server runs {', '.join(self.worker.pipelines)}")
        if name in self.worker.failed_pipelines:
            raise StreamError(ErrorCode.PIPELINE_FAILED, f"{self.worker.failed_pipelines[name]}; it takes no sessions until the server restarts")
        try:
            parsed = parse_params(pipeline.params_model, params)
        except ParamError as err:
            raise StreamError(ErrorCode.BAD_PARAMS, str(err), field=err.field) from None
        slo = resolve_slo(slo, pipeline)
        self._check_owner_room(owner)
        session_id = secrets.token_hex(8)
        demand = session_demand(session_id, name, pipeline, parsed, slo)
        if owner is not None:
            self._creating[owner] += 1
        try:
            decision = await self._admit(demand, on_queued)
            state = await self._build_state(session_id, demand, lambda: pipeline.new_state(parsed, stream_id=session_id))
        finally:
            if owner is not None:
                self._creating[owner] -= 1
                if not self._creating[owner]:
                    del self._creating[owner]
        session = Session(session_id, name, pipeline, state, slo, self.metrics.for_pipeline(name), self.audio_buffer_s, self.worker.wake)
        session.owner = owner
        session.admitted_estimate = {"fps": round(decision.estimate.fps[session_id], 2),
                                     "latency_ms": round(decision.estimate.latency_s[session_id] * 1000, 1),
                                     "meets_slo": decision.estimate.meets[session_id]}
        self.sessions[session_id] = session
        self.metrics.sessions_active.set(len(self.sessions))
        try:
            await asyncio.wrap_future(self.worker.attach(session))
        except BaseException:  # cancelled (the client left) or the worker stopped: the session goes with it
            self.close(session_id)
            raise
        log.info("session %s opened on %s", session_id, name)
        return session

    def _check_owner_room(self, owner: str | None) -> None:
        if owner is None or self.max_sessions_per_owner is None:
            return
        held = sum(1 for s in self.sessions.values() if s.owner == owner) + self._creating[owner]
        if held >= self.max_sessions_per_owner:
            raise StreamError(ErrorCode.TOO_MANY_SESSIONS, f"this token already holds {held} session(s), as many as one token may "
                              f"({self.max_sessions_per_owner}); end one first")

    async def _build_state(self, session_id: str, demand: Demand, build: Callable[[], Any]) -> Any:
        """The stream's pipeline state, built on the worker while the session holds its admission slot."""
        self._admitting[session_id] = demand
        try:
            return await asyncio.wrap_future(self.worker.call(build))
        except ParamError as err:
            raise StreamError(ErrorCode.BAD_PARAMS, str(err), field=err.field) from None
        except Exception as err:
            if not is_out_of_memory(err):
                raise
            log.warning("session %s refused: out of device memory building its state: %s", session_id, err)
            raise StreamError(ErrorCode.OUT_OF_MEMORY, f"the device ran out of memory building this session ({err}); "
                              "retry later, or with a smaller size or fewer steps") from None
        finally:
            del self._admitting[session_id]
            self._wake_queue()

    async def _admit(self, demand: Demand, on_queued: QueuedCallback | None) -> AdmissionDecision:
        """Admit now, refuse (StreamError busy), or wait in line until admitted."""
        decision, refusal = self._decide(demand)
        if decision.admitted and not self._queue:
            return decision
        reason = decision.reason if not decision.admitted else f"{len(self._queue)} queued session(s) wait ahead of it"
        if on_queued is None:
            self.metrics.sessions_refused.labels(refusal).inc()
            raise StreamError(ErrorCode.BUSY, f"server busy: {reason}")
        if len(self._queue) >= self.max_queue:
            self.metrics.sessions_refused.labels("queue_full").inc()
            raise StreamError(ErrorCode.BUSY, f"server busy and its queue is full ({self.max_queue} waiting): {reason}")
        turn = asyncio.Event()
        self._queue.append(turn)
        told = 0
        try:
            while True:
                position = self._queue.index(turn) + 1
                if position == 1:
                    decision, _ = self._decide(demand)
                    if decision.admitted:
                        return decision
                if position != told:
                    told = position
                    await on_queued(position, decision.reason or "waiting for the sessions ahead in line")
                turn.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(turn.wait(), QUEUE_RECHECK_S)
        finally:
            self._queue.remove(turn)
            self._wake_queue()

    def _decide(self, demand: Demand) -> tuple[AdmissionDecision, str]:
        """The admission decision and, when it refuses, the metrics label of why."""
        running = [session_demand(s.id, s.pipeline_name, s.pipeline, s.params, s.slo, s.stats.input_fps(time.monotonic()))
                   for s in list(self.sessions.values())]
        decision = decide_admission([*running, *self._admitting.values()], demand, self.worker.costs)
        if len(self.sessions) + len(self._admitting) >= self.max_sessions:
            reason = f"all {self.max_sessions} session slots are in use; retry later"
            return AdmissionDecision(False, reason, decision.estimate), "busy"
        return decision, "slo"

    def forecast_admission(self, demand: Demand) -> AdmissionDecision:
        """What admission control would decide now on a session asking for `demand`, changing nothing: a cluster's
        front door asks every worker before it places a session (app/cluster, docs/cluster.md)."""
        return self._decide(demand)[0]

    def _wake_queue(self) -> None:
        for turn in self._queue:
            turn.set()

    @property
    def queued(self) -> int:
        return len(self._queue)

    def check_attachable(self, session_id: str) -> Session:
        """The session, if a stream may attach to it now; StreamError (unknown_session, session_attached) if not."""
        session = self.get(session_id)
        if session.sink is not None:
            raise StreamError(ErrorCode.SESSION_ATTACHED, f"session {session_id} already has a stream connected")
        return session

    def attach_stream(self, session_id: str, sink: Callable[[SessionEvent], None], *, sends_video: bool = True) -> Session:
        """Connect a transport to a session; `sends_video`: the transport sends the generated video
        itself (a WHIP publisher does not: its players' output counts then)."""
        session = self.check_attachable(session_id)
        session.sink = sink
        session.stream_sends_video = sends_video
        session.touch()
        return session

    async def update(self, session: Session, changes: Mapping[str, Any], slo: SloSpec | None = None) -> UpdateReport:
        """Apply a partial parameter update between ticks; StreamError(bad_params) leaves the session as it was.
        The report carries the parameters in force as the pipeline normalised them."""
        session.touch()
        pipeline = session.pipeline
        resolved = None if slo is None else resolve_slo(slo, pipeline)

        def apply() -> UpdateResult | None:
            if session.closed or session.state is None:
                raise StreamError(ErrorCode.UNKNOWN_SESSION, f"session {session.id} has ended")
            result = pipeline.update(session.state, changes) if changes else None
            if changes:
                # The client's own values win over a quality step that had replaced them.
                session.quality = [level for level in session.quality if not set(level.previous) & set(changes)]
            if resolved is not None:
                session.set_slo(resolved)
                session.next_due = time.monotonic()
            return result

        try:
            result = await asyncio.wrap_future(self.worker.call(apply))
        except ParamError as err:
            raise StreamError(ErrorCode.BAD_PARAMS, str(err), field=err.field) from None
        except Exception as err:
            if not is_out_of_memory(err):
                raise
            raise StreamError(ErrorCode.OUT_OF_MEMORY, f"the device ran out of memory applying this update ({err}); "
                              "the session goes on as it was") from None
        applied = result.applied if result else []
        return UpdateReport(
            applied=applied,
            update_class=strongest_class(pipeline.params_model, applied),
            reset=bool(result and result.reset),
            discarded_frames=result.discarded_frames if result else 0,
            params=(result.params if result else session.params).model_dump(mode="json"),
            needs_input=pipeline.needs_input(result.params) if result else session.needs_input,
            slo=session.slo,
            notes=pipeline.prompt_notes(result.params if result else session.params),
        )

    def close(self, session_id: str, reason: str | None = None, message: str = "") -> bool:
        """End a session now: its inputs, outputs and pipeline state are released. `reason` is
        told to a connected stream when the server (not its client) ended it."""
        session = self.sessions.pop(session_id, None)
        if session is None:
            return False
        if reason is not None:
            session.emit(SessionClosed(reason, message))
        session.closed = True
        session.video_in.take()
        session.audio_in.drain()
        if session.audio_delay is not None:
            session.audio_delay.close()
        self.worker.detach(session_id)
        self.metrics.sessions_active.set(len(self.sessions))
        self._wake_queue()
        log.info("session %s closed (%s)", session_id, reason or "client left")
        return True

    def close_all(self, reason: str, message: str) -> None:
        for session_id in list(self.sessions):
            self.close(session_id, reason, message)

    def _session_failed(self, session_id: str, code: ErrorCode, message: str) -> None:
        """The worker ended a session (any thread): tell its client and free it on the loop."""
        self._on_loop(lambda: self.close(session_id, code.value, message))

    def _pipeline_failed(self, pipeline_name: str, message: str) -> None:
        """A pipeline can serve nobody any more (any thread): end its sessions on the loop."""

        def close_its_sessions() -> None:
            for session in [s for s in self.sessions.values() if s.pipeline_name == pipeline_name]:
                self.close(session.id, ErrorCode.PIPELINE_FAILED.value, message)

        self._on_loop(close_its_sessions)

    def _on_loop(self, fn: Callable[[], object]) -> None:
        if self.loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: the server is gone, and its sessions with it
                self.loop.call_soon_threadsafe(fn)

    def reap_idle(self, now: float) -> list[str]:
        """Close sessions nothing has come from for the idle timeout. A stream that needs no input
        (txt2img) counts as active while its connection is open: the socket's pings catch dead peers."""
        idle = [s.id for s in self.sessions.values()
                if now - s.last_activity > self.idle_timeout_s and not (s.sink is not None and not s.needs_input)]
        for session_id in idle:
            self.close(session_id, ErrorCode.IDLE_TIMEOUT.value, f"nothing received for {self.idle_timeout_s:g} s")
        return idle

    async def reap_forever(self) -> None:
        self.loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(1.0, self.idle_timeout_s / 4))
            self.reap_idle(time.monotonic())

    def info(self, session: Session) -> SessionInfo:
        params = session.params
        return SessionInfo(id=session.id, pipeline=session.pipeline_name, params=params.model_dump(mode="json"),
                           needs_input=session.pipeline.needs_input(params), slo=session.slo, streaming=session.sink is not None,
                           created_at=session.created_wall, notes=session.pipeline.prompt_notes(params))

    def samples(self) -> list[SessionSample]:
        return [SessionSample(s.id, s.pipeline_name, s.stats.snapshot()) for s in list(self.sessions.values())]


def resolve_slo(slo: SloSpec, pipeline: Pipeline) -> SloSpec:
    """The SLO with the pipeline's defaults where the client left a value out."""
    defaults = pipeline.scheduling.slo_defaults
    return slo.model_copy(update={k: v for k, v in defaults.items() if k not in slo.model_fields_set})


def session_demand(session_id: str, pipeline_name: str, pipeline: Pipeline, params: BaseModel, slo: SloSpec,
                   input_fps: float = 0.0) -> Demand:
    """What a session asks of the worker: its SLO's rate (or its input's, when lower and known)."""
    profile = pipeline.scheduling
    fps = min(slo.target_fps, input_fps) if input_fps > 0 and pipeline.needs_input(params) else slo.target_fps
    return Demand(session_id, pipeline_name, profile.cost_shape(params), fps, slo.latency_budget_ms / 1000,
                  profile.pipe_depth(params))
