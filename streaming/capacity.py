"""What a set of sessions asks of the compute worker, and what each one would get.

One worker runs one step at a time. The streams of a pipeline are served by shared steps at the
rate of the fastest of them (a slower stream joins every k-th step), so with the pipeline's cost
line `fixed + per_unit * work` a pipeline needs `fixed * max_fps + per_unit * sum(work_i * fps_i)`
seconds of compute per second. When the sessions together need more than the capacity, each gets
its max-min fair share (the scheduler enforces that: see `SloScheduler`): streams asking for less
than the fair level get all they ask, the others split the rest equally.

Admission control, degradation and the scheduler's fairness all read this one forecast.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from streaming.costs import CostModel, Shape, shape_work

CAPACITY = 0.9   # share of the worker's time the forecast may plan for: a margin for noisy estimates
FPS_TOLERANCE = 0.95  # a session served at 95% of its target rate still counts as meeting it


@dataclass(frozen=True, slots=True)
class Demand:
    session_id: str
    pipeline: str
    shape: Shape
    fps: float                # frames per second it needs: its target, or its input rate when lower
    latency_budget_s: float
    pipe_depth: int = 0       # ticks between an input and its output


@dataclass(frozen=True, slots=True)
class Forecast:
    utilization: float          # compute seconds per second the sessions need (1 = the whole worker)
    need: dict[str, float]      # per session: compute seconds per second it needs
    fps: dict[str, float]       # per session: the rate it would get
    latency_s: dict[str, float]
    meets: dict[str, bool]      # per session: rate and latency within its SLO

    def missing(self) -> list[str]:
        return [s for s, ok in self.meets.items() if not ok]


def forecast(demands: Sequence[Demand], costs: CostModel, capacity: float = CAPACITY) -> Forecast:
    by_pipeline: dict[str, list[Demand]] = defaultdict(list)
    for d in demands:
        by_pipeline[d.pipeline].append(d)
    need: dict[str, float] = {}
    step_s: dict[str, float] = {}
    busy: dict[str, float] = {}
    for pipeline, group in by_pipeline.items():
        line = costs.line(pipeline)
        step_s[pipeline] = costs.estimate(pipeline, [d.shape for d in group]) or 0.0
        if line is None:  # never measured: assume it costs nothing rather than refuse blindly
            need.update({d.session_id: 0.0 for d in group})
            busy[pipeline] = 0.0
            continue
        top = max(d.fps for d in group)
        total_fps = sum(d.fps for d in group)
        for d in group:  # the fixed part is shared in proportion to how often each stream joins
            need[d.session_id] = line.per_unit * shape_work(d.shape) * d.fps + line.fixed * top * d.fps / total_fps
        busy[pipeline] = sum(need[d.session_id] for d in group)
    shares = max_min_shares(need, capacity)
    fps, latency, meets = {}, {}, {}
    for d in demands:
        n = need[d.session_id]
        fps[d.session_id] = d.fps if n <= 0 else d.fps * min(1.0, shares[d.session_id] / n)
        # Waiting for the step another pipeline may be in (as likely as it is busy), its own
        # step, then the pipe's depth.
        others = sum(step_s[p] * min(1.0, busy[p]) for p in by_pipeline if p != d.pipeline)
        latency[d.session_id] = others + step_s[d.pipeline] + d.pipe_depth / max(fps[d.session_id], 1e-9)
        meets[d.session_id] = fps[d.session_id] >= FPS_TOLERANCE * d.fps and latency[d.session_id] <= d.latency_budget_s
    return Forecast(sum(need.values()), need, fps, latency, meets)


def max_min_shares(need: dict[str, float], capacity: float) -> dict[str, float]:
    """Water-filling: every session gets min(need, level), the level set so the total is the capacity."""
    if sum(need.values()) <= capacity:
        return dict(need)
    shares, left = {}, capacity
    pending = sorted(need.items(), key=lambda item: item[1])
    while pending:
        level = left / len(pending)
        session, amount = pending[0]
        if amount > level:
            shares.update({s: level for s, _ in pending})
            break
        shares[session] = amount
        left -= amount
        pending.pop(0)
    return shares
