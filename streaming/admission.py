"""Admission control: admit a new session only if every running session that meets its SLO now
would still meet it.

Sessions that already miss their SLO (the server was overloaded before, or they ask for more than
the hardware can give) are not protected by refusing others: degradation and the fair scheduler
look after them. A new session whose own SLO is out of reach on this server is admitted when it
harms nobody, and told what to expect (`estimate`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from streaming.capacity import CAPACITY, Demand, Forecast, forecast
from streaming.costs import CostModel

_SEARCH_STEPS = 12


@dataclass(frozen=True, slots=True)
class AdmissionDecision:
    admitted: bool
    reason: str
    estimate: Forecast
    """The forecast with the new session in: its `fps`, `latency_s` and `meets` say what it would get."""
    max_fps: float | None = None
    """Refused: the highest target_fps at which it would be admitted now (None: none would)."""


def decide_admission(running: Sequence[Demand], new: Demand, costs: CostModel, capacity: float = CAPACITY) -> AdmissionDecision:
    before = forecast(running, costs, capacity)
    after = forecast([*running, new], costs, capacity)
    broken = _broken(before, after, running)
    if not broken:
        return AdmissionDecision(True, "", after)
    low, high = 0.0, new.fps
    for _ in range(_SEARCH_STEPS):  # the fastest rate that breaks nobody
        mid = (low + high) / 2
        trial = forecast([*running, replace(new, fps=mid)], costs, capacity)
        low, high = (mid, high) if not _broken(before, trial, running) else (low, mid)
    max_fps = round(low, 2) if low >= 0.5 else None
    hint = f"a target_fps of at most {max_fps:g} would fit now" if max_fps else "no frame rate would fit now"
    reason = (f"admitting this session would make {len(broken)} running session(s) miss their SLO: together they would need "
              f"{after.utilization / capacity:.0%} of the compute available ({before.utilization / capacity:.0%} now); "
              f"{hint}, or retry later")
    return AdmissionDecision(False, reason, after, max_fps)


def _broken(before: Forecast, after: Forecast, running: Sequence[Demand]) -> list[str]:
    return [d.session_id for d in running if before.meets[d.session_id] and not after.meets[d.session_id]]
