"""A discrete-event simulation of the compute worker, in virtual time, under any scheduling policy.

Streams offer frames at their own rate (steady or in bursts), each pipeline's step costs
`fixed + per_work * total work` seconds, and the policy under test plans every step exactly as it
does in the server (same `StreamView`s, same `TickPlan`s, same feedback). Admission control and
degradation plug in the same way. No model, no sleeping: a minute of load simulates in well under
a second, and the result is the same on every run, so tests can assert on policy outcomes and
the benchmark can compare policies on one workload.

Semantics kept from the server: a latest-wins input slot per stream (a replaced input counts as
dropped), a pipe of `pipe_depth` ticks (stream batch: input k leaves with step k + depth), one
step at a time, and outputs delivered when their step finishes.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from streaming.capacity import Demand
from streaming.degradation import DegradationPolicy, QualityView
from streaming.scheduler import Batch, StreamView, TickPlan


class Policy(Protocol):
    def schedule(self, streams: Sequence[StreamView], now: float) -> TickPlan: ...
    def update_from_output(self, batch: Batch, shapes: dict, started: float, finished: float) -> None: ...
    def forget(self, session_id: str) -> None: ...


@dataclass(frozen=True)
class SimPipeline:
    fixed_s: float      # cost of a step whatever its size (a GPU's kernel launches, a pass over the weights)
    per_work_s: float   # cost per unit of work in the batch (a CPU's compute)

    def cost(self, works: Sequence[float]) -> float:
        return self.fixed_s + self.per_work_s * sum(works)


@dataclass(frozen=True)
class SimStream:
    name: str
    pipeline: str
    fps: float                      # frames it sends per second (clock-driven: frames it asks for)
    latency_budget_s: float = 0.5
    target_fps: float | None = None  # default: fps
    start_s: float = 0.0
    stop_s: float = math.inf
    work: float = 1.0               # relative cost of one of its frames (its shape's product)
    pipe_depth: int = 0
    needs_input: bool = True
    burst: tuple[float, float] | None = None  # (on, off) seconds: sends only while on
    levels: tuple[float, ...] = ()  # work at each quality level below the top, if it allows degradation

    @property
    def slo_fps(self) -> float:
        return self.target_fps or self.fps


@dataclass
class StreamResult:
    admitted: bool = True
    refusal: str = ""
    offered: int = 0        # frames it sent (or ticks it was due)
    expected: int = 0       # frames its SLO asks for over its lifetime
    dropped: int = 0        # replaced in the slot before a step took them
    stale: int = 0          # dropped by the scheduler as older than the budget
    outputs: int = 0
    on_time: int = 0
    latencies: list[float] = field(default_factory=list)
    compute_s: float = 0.0  # its share (by work) of the steps that served it
    level_changes: list[tuple[float, str]] = field(default_factory=list)

    @property
    def attainment(self) -> float:
        """Share of the frames its SLO asked for that came out within the budget."""
        return self.on_time / self.expected if self.expected else 1.0


@dataclass
class _Live:
    spec: SimStream
    arrivals: deque[float]
    slot: float | None = None
    pipe: deque[float] = field(default_factory=deque)
    next_due: float = 0.0
    level: int = 0          # 0: full quality; k: spec.levels[k - 1]

    @property
    def work(self) -> float:
        return self.spec.work if self.level == 0 else self.spec.levels[self.level - 1]


Admit = Callable[[Sequence[Demand], Demand], tuple[bool, str]]


def simulate(streams: Sequence[SimStream], pipelines: dict[str, SimPipeline], policy: Policy, duration_s: float,
             admit: Admit | None = None, degradation: DegradationPolicy | None = None, degrade_every_s: float = 0.25
             ) -> dict[str, StreamResult]:
    results = {s.name: StreamResult() for s in streams}
    pending = sorted(streams, key=lambda s: s.start_s)
    live: dict[str, _Live] = {}
    now, next_degrade = 0.0, 0.0

    def view(x: _Live) -> StreamView:
        s = x.spec
        return StreamView(s.name, s.pipeline, s.needs_input, x.slot, x.next_due, (x.work,), s.slo_fps, s.latency_budget_s,
                          s.pipe_depth, s.fps if s.needs_input else 0.0)

    def demand_at(x: _Live, level: int) -> Demand:
        s = x.spec
        work = s.work if level == 0 else s.levels[level - 1]
        return Demand(s.name, s.pipeline, (work,), min(s.fps, s.slo_fps), s.latency_budget_s, s.pipe_depth)

    while now < duration_s:
        while pending and pending[0].start_s <= now:  # sessions arriving
            spec = pending.pop(0)
            end = min(spec.stop_s, duration_s)
            arrivals = _arrivals(spec, now, end)
            # What its SLO asks for: the frames it sends (at most its target rate), or its ticks.
            results[spec.name].expected = int(len(arrivals) * min(1.0, spec.slo_fps / spec.fps) if spec.needs_input
                                              else (end - now) * spec.slo_fps)
            demand = Demand(spec.name, spec.pipeline, (spec.work,), min(spec.fps, spec.slo_fps), spec.latency_budget_s, spec.pipe_depth)
            ok, reason = admit([view(x).demand() for x in live.values()], demand) if admit else (True, "")
            if not ok:
                results[spec.name].admitted, results[spec.name].refusal = False, reason
                continue
            live[spec.name] = _Live(spec, deque(arrivals), next_due=now)
        for name in [n for n, x in live.items() if min(x.spec.stop_s, duration_s) <= now]:  # sessions leaving
            del live[name]
            policy.forget(name)
        for name, x in live.items():  # inputs that arrived by now: latest wins
            r = results[name]
            while x.arrivals and x.arrivals[0] <= now:
                arrived = x.arrivals.popleft()
                r.offered += 1
                if x.spec.needs_input:
                    r.dropped += x.slot is not None
                    x.slot = arrived
        if degradation is not None and now >= next_degrade:
            next_degrade = now + degrade_every_s
            _degrade(degradation, live, results, demand_at, now)
        plan = policy.schedule([view(x) for x in live.values()], now)
        for name in plan.stale:
            live[name].slot = None
            results[name].stale += 1
        if plan.batches:
            now = _run(plan.batches[0], live, results, pipelines, policy, now)
            continue
        upcoming = [x.arrivals[0] for x in live.values() if x.arrivals] + [s.start_s for s in pending]
        upcoming += [min(x.spec.stop_s, duration_s) for x in live.values()]
        if plan.wake_at is not None:
            upcoming.append(plan.wake_at)
        if degradation is not None:
            upcoming.append(next_degrade)
        later = [t for t in upcoming if t > now]
        now = min(later) if later else duration_s
    return results


def _arrivals(spec: SimStream, start: float, end: float) -> list[float]:
    """Frame times: every 1/fps from the start, skipping the off part of a burst pattern; a
    clock-driven stream's ticks are kept by the stream itself (`next_due`), not here."""
    times, t, period = [], start, 1.0 / spec.fps
    while t < end:
        if spec.burst is None or (t - start) % sum(spec.burst) < spec.burst[0]:
            times.append(t)
        t += period
    return times if spec.needs_input else []


def _run(batch: Batch, live: dict[str, _Live], results: dict[str, StreamResult], pipelines: dict[str, SimPipeline],
         policy: Policy, now: float) -> float:
    members = [live[n] for n in batch.session_ids]
    works = [x.work for x in members]
    finished = now + pipelines[batch.pipeline].cost(works)
    for x, work in zip(members, works):
        r, s = results[x.spec.name], x.spec
        r.compute_s += (finished - now) * work / sum(works)
        if s.needs_input:
            # the policy batches an input-driven stream only while a frame waits in its slot
            assert x.slot is not None, f"{s.name} was batched with an empty slot"
            arrived, x.slot = x.slot, None
        else:
            r.offered += 1
            arrived = x.next_due  # a generated frame's latency counts from when it was due
            period = 1.0 / s.slo_fps
            x.next_due = max(x.next_due + period, now - period)
        x.pipe.append(arrived)
        if len(x.pipe) > s.pipe_depth:
            latency = finished - x.pipe.popleft()
            r.outputs += 1
            r.latencies.append(latency)
            r.on_time += latency <= s.latency_budget_s
    policy.update_from_output(batch, {x.spec.name: (w,) for x, w in zip(members, works)}, now, finished)
    return finished


def _degrade(policy: DegradationPolicy, live: dict[str, _Live], results: dict[str, StreamResult],
             demand_at: Callable[[_Live, int], Demand], now: float) -> None:
    views = [QualityView(demand_at(x, x.level),
                         demand_at(x, x.level + 1) if x.level < len(x.spec.levels) else None,
                         demand_at(x, x.level - 1) if x.level > 0 else None) for x in live.values()]
    move = policy.decide(views, now)
    if move is None:
        return
    x = live[move.session_id]
    x.level += 1 if move.direction == "down" else -1
    x.pipe.clear()  # a quality change resets the pipe, as a reset-class update does
    results[move.session_id].level_changes.append((now, move.direction))
