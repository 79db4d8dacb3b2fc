"""Scheduling policy: which streams the next step serves, batched how (the vLLM split).

Policy only: `schedule()` sees plain views of the streams and returns a plain plan; the worker
runs it and reports back through `update_from_output()`, which feeds the measured step time into
the cost model and the per-stream service accounting. Tested with a fake clock and no model.

One step at a time, each chosen as follows:
- Stale inputs are dropped: an input that has already waited longer than its stream's latency
  budget can only make a late frame, and the next one is fresher.
- Every ready stream has a deadline: the moment its step must finish so that its frame, after
  the pipe's depth, still leaves within the budget (clock-driven streams: before their next tick
  is due). The stream with the earliest deadline leads.
- Fairness comes first, though: when the streams together ask for more than the worker can do,
  a stream that has lately used more than its max-min fair share of compute (see
  `streaming.capacity`) ranks after every stream within its share, so a heavy session cannot
  starve light ones however early its deadlines are.
- The lead's batch takes the other ready streams of its pipeline, by rank, as long as the
  longer step makes no member late that would have been on time (a batch's cost comes from the
  measured cost model).
- A ready input may wait briefly for the rest of its pipeline's streams (their next frames
  usually come at the same moment, since one step served them all), never past its deadline.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from streaming.capacity import CAPACITY, Demand, forecast, max_min_shares
from streaming.costs import CostModel, Shape, shape_work

GATHER_SHARE = 0.25    # of the step's cost, that ready inputs may wait for their batch-mates
GATHER_CAP_S = 0.010
SERVICE_WINDOW_S = 2.0  # time constant of the per-stream service accounting
OVER_SHARE = 1.1        # service above 110% of the fair share ranks a stream last


@dataclass(frozen=True, slots=True)
class StreamView:
    session_id: str
    pipeline: str
    needs_input: bool = True     # driven by input frames (img2img) or by its own clock (txt2img)
    input_since: float | None = None  # when the frame waiting in its slot was queued (None: no frame)
    next_due: float = 0.0        # clock-driven streams: when the next frame is due
    shape: Shape = ()            # cost shape (pipelines.scheduling.SchedulingProfile.cost_shape)
    target_fps: float = 30.0
    latency_budget_s: float = 0.5
    pipe_depth: int = 0          # ticks between an input and its output
    input_fps: float = 0.0       # measured input rate; 0 when not known yet

    @property
    def fps(self) -> float:
        """The rate it needs served: its target, or its input's rate when that is lower."""
        if self.needs_input and self.input_fps > 0:
            return min(self.target_fps, self.input_fps)
        return self.target_fps

    def demand(self) -> Demand:
        return Demand(self.session_id, self.pipeline, self.shape, self.fps, self.latency_budget_s, self.pipe_depth)

    def deadline(self) -> float:
        """When this stream's next step must finish."""
        period = 1.0 / self.fps
        if not self.needs_input:
            return self.next_due + period
        budget = self.latency_budget_s
        since = self.input_since
        # The scheduler asks only ready streams: an input-driven one has a frame waiting.
        assert since is not None, "an input-driven stream has a deadline only while a frame waits"
        return since + max(budget - self.pipe_depth * period, budget / (self.pipe_depth + 1))


@dataclass(frozen=True, slots=True)
class Batch:
    pipeline: str
    session_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TickPlan:
    batches: tuple[Batch, ...]
    wake_at: float | None = None      # when to plan again if no input comes first
    stale: tuple[str, ...] = ()       # streams whose waiting input is past its budget: drop it


class SloScheduler:
    def __init__(self, costs: CostModel, max_batch: int = 16, capacity: float = CAPACITY):
        self.costs = costs
        self.max_batch = max_batch
        self.capacity = capacity
        self._service: dict[str, tuple[float, float]] = {}  # session -> (decayed compute seconds, at)

    # ---- planning ------------------------------------------------------------------------------

    def schedule(self, streams: Sequence[StreamView], now: float) -> TickPlan:
        ready: list[StreamView] = []
        stale: list[str] = []
        missing: dict[str, int] = {}  # input-driven streams per pipeline with no frame yet
        wake_at: float | None = None
        for s in streams:
            if not s.needs_input:
                if s.next_due <= now:
                    ready.append(s)
                else:
                    wake_at = _earliest(wake_at, s.next_due)
            elif s.input_since is None:
                missing[s.pipeline] = missing.get(s.pipeline, 0) + 1
            elif now - s.input_since > s.latency_budget_s:
                stale.append(s.session_id)
            else:
                ready.append(s)
        if not ready:
            return TickPlan((), wake_at, tuple(stale))
        over = self.over_share(streams, now)
        ready.sort(key=lambda s: (s.session_id in over, s.deadline()))
        tried: set[str] = set()
        for lead in ready:
            if lead.pipeline in tried:
                continue
            tried.add(lead.pipeline)
            peers = [s for s in ready if s.pipeline == lead.pipeline]
            until = self._gather_until(lead, peers, missing.get(lead.pipeline, 0))
            if lead.session_id in over:
                until = max(until, self._yield_until(streams, over, now + self._cost(peers), now))
            if until > now:
                wake_at = _earliest(wake_at, until)
                continue
            return TickPlan((Batch(lead.pipeline, self._batch(peers, now)),), wake_at, tuple(stale))
        return TickPlan((), wake_at, tuple(stale))

    @staticmethod
    def _yield_until(streams: Sequence[StreamView], over: set[str], finish: float, now: float) -> float:
        """An over-share stream's step waits while it would still run when a stream within its
        share expects its next frame: steps are not preemptible, so yielding is the only way a
        long step cannot hold light streams back."""
        expected = [s.next_due if not s.needs_input else now + 1.0 / s.input_fps
                    for s in streams if s.session_id not in over and (not s.needs_input or (s.input_since is None and s.input_fps > 0))]
        soon = [t for t in expected if t < finish]
        return min(soon) if soon else -math.inf

    def _batch(self, ranked: list[StreamView], now: float) -> tuple[str, ...]:
        """The lead plus every peer whose joining makes no member late that was on time."""
        members = [ranked[0]]
        finish = now + self._cost(members)
        for s in ranked[1:]:
            if len(members) == self.max_batch:
                break
            longer = now + self._cost([*members, s])
            if all(longer <= m.deadline() or finish > m.deadline() for m in members):
                members.append(s)
                finish = longer
        return tuple(m.session_id for m in members)

    def _gather_until(self, lead: StreamView, peers: list[StreamView], missing: int) -> float:
        """Until when the lead's pipeline waits for its streams that have no frame yet."""
        if not missing or not lead.needs_input:
            return -math.inf
        step = self._cost(peers)
        # peers are ready streams: every input-driven one has a frame waiting (input_since set)
        oldest = min(s.input_since for s in peers if s.needs_input and s.input_since is not None)
        return min(oldest + min(GATHER_CAP_S, GATHER_SHARE * step), lead.deadline() - step)

    def _cost(self, streams: Sequence[StreamView]) -> float:
        return self.costs.estimate(streams[0].pipeline, [s.shape for s in streams]) or 0.0

    # ---- fairness ------------------------------------------------------------------------------

    def over_share(self, streams: Sequence[StreamView], now: float) -> set[str]:
        """Streams using more than their max-min fair share, when the worker is oversubscribed."""
        plan = forecast([s.demand() for s in streams], self.costs, self.capacity)
        if plan.utilization <= self.capacity:
            return set()
        shares = max_min_shares(plan.need, self.capacity)
        return {s for s, share in shares.items() if self.service_rate(s, now) > OVER_SHARE * share}

    def service_rate(self, session_id: str, now: float) -> float:
        """Compute seconds per second this stream used lately (exponentially weighted)."""
        amount, at = self._service.get(session_id, (0.0, now))
        return amount * math.exp(-(now - at) / SERVICE_WINDOW_S) / SERVICE_WINDOW_S

    # ---- feedback ------------------------------------------------------------------------------

    def update_from_output(self, batch: Batch, shapes: Mapping[str, Shape], started: float, finished: float) -> None:
        """A step ran: record its cost, and charge each member its share (by work) of it."""
        seconds = finished - started
        served = [shapes[s] for s in batch.session_ids if s in shapes]
        if not served:
            return
        self.costs.observe(batch.pipeline, served, seconds)
        total = sum(shape_work(shape) for shape in served)
        for session_id in batch.session_ids:
            if session_id in shapes:
                amount = self.service_rate(session_id, finished) * SERVICE_WINDOW_S
                self._service[session_id] = (amount + seconds * shape_work(shapes[session_id]) / total, finished)

    def forget(self, session_id: str) -> None:
        self._service.pop(session_id, None)


def _earliest(a: float | None, b: float) -> float:
    return b if a is None else min(a, b)
