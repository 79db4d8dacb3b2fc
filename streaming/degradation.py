"""Graceful degradation: step quality down when the sessions need more compute than there is,
and back up when load falls, only for sessions that allow it (SloSpec.degrade).

Policy only, one move at a time: down when the forecast (measured costs, current levels) needs
more than the capacity, taking the session that needs the most compute; up when the load has
stayed below `low` for `hold_s` and restoring one level keeps it clearly below the down
threshold. The gap between the two thresholds, the hold time and a cool-down after every move
keep it from oscillating. What a level is (fewer steps, smaller size, longer chunks) is the
pipeline's business (`SchedulingProfile.lower_quality`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from streaming.capacity import CAPACITY, Demand, forecast
from streaming.costs import CostModel


@dataclass(frozen=True, slots=True)
class QualityView:
    demand: Demand            # at its current level
    lower: Demand | None      # one level down; None when not allowed or at the floor
    higher: Demand | None     # one level up; None at the quality it asked for


@dataclass(frozen=True, slots=True)
class QualityMove:
    session_id: str
    direction: Literal["down", "up"]
    reason: str


class DegradationPolicy:
    def __init__(self, costs: CostModel, high: float = CAPACITY, low: float = 0.6 * CAPACITY, hold_s: float = 3.0,
                 cooldown_s: float = 1.0):
        self.costs = costs
        self.high, self.low = high, low
        self.hold_s, self.cooldown_s = hold_s, cooldown_s
        self._last_move = -float("inf")
        self._calm_since: float | None = None

    def decide(self, views: Sequence[QualityView], now: float) -> QualityMove | None:
        current = [v.demand for v in views]
        load = forecast(current, self.costs, capacity=1.0)
        if load.utilization > self.low:
            self._calm_since = None
        elif self._calm_since is None:
            self._calm_since = now
        if now - self._last_move < self.cooldown_s:
            return None
        if load.utilization > self.high:
            lowerable = [v for v in views if v.lower is not None]
            if not lowerable:
                return None
            heaviest = max(lowerable, key=lambda v: load.need[v.demand.session_id])
            return self._move(heaviest.demand.session_id, "down", now,
                              f"the sessions need {load.utilization:.0%} of the compute; stepping down the heaviest")
        if self._calm_since is None or now - self._calm_since < self.hold_s:
            return None
        margin = (self.high - self.low) / 2
        raisable = [(v, v.higher) for v in views if v.higher is not None]
        for view, higher in sorted(raisable, key=lambda pair: _cost_of(self.costs, pair[1]) - _cost_of(self.costs, pair[0].demand)):
            trial = forecast([higher if d.session_id == view.demand.session_id else d for d in current], self.costs, capacity=1.0)
            if trial.utilization <= self.high - margin:
                return self._move(view.demand.session_id, "up", now,
                                  f"load fell to {load.utilization:.0%}; one level up needs {trial.utilization:.0%}")
        return None

    def _move(self, session_id: str, direction: Literal["down", "up"], now: float, reason: str) -> QualityMove:
        self._last_move = now
        self._calm_since = None
        return QualityMove(session_id, direction, reason)


def _cost_of(costs: CostModel, demand: Demand) -> float:
    return (costs.estimate(demand.pipeline, [demand.shape]) or 0.0) * demand.fps
