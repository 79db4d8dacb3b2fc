"""Where a new session goes: the front door's placement policy, a plain function over what each worker said.

Each worker answers for itself with its own admission control (`SessionManager.forecast_admission`: its slots,
its queue, its measured costs); this module only chooses among the answers. Rules, in order:

1. A worker that is down (not answering, restarting, still loading) or draining takes nothing.
2. Among the workers that admit the session, the least loaded wins: the smallest share of its compute it would
   need with the session in, counting the sessions sent there moments ago that may not have started yet as
   costing what this one does. Loads within `LOAD_RESOLUTION` of each other count as equal (measured costs are
   noisy): then the fewest sessions per slot wins, then the name (stable).
3. None admits: refused, `busy` (503, Retry-After) with every worker's reason, or `not_ready` when no worker
   is up at all. A start that asked to wait in line (`queue`) goes instead to the least loaded worker that is
   up and not draining, whose own queue holds it.

No Ray and no server here, so every rule has a unit test (tests/test_cluster_placement.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from streaming.errors import ErrorCode

LOAD_RESOLUTION = 0.02  # 2% of a worker's compute: closer loads are equal, and the session count decides


@dataclass(frozen=True, slots=True)
class WorkerView:
    """One worker as placement sees it, for one session request."""

    name: str
    up: bool                      # answering, models loaded
    draining: bool
    admits: bool                  # its admission control would take this session now
    reason: str                   # why it would not (or why it is down), in a person's words
    load_after: float             # share of its plannable compute its sessions would need with this one in (1: all of it)
    need: float                   # the share this session alone adds
    sessions: int
    max_sessions: int
    pending: int = 0              # sessions sent there in the last seconds, perhaps not started yet
    max_fps: float | None = None  # refused: the highest target_fps it would admit now

    @property
    def expected_load(self) -> float:
        """Its load with this session and the pending ones, each costing what this one adds."""
        return self.load_after + self.pending * self.need

    @property
    def slot_share(self) -> float:
        return (self.sessions + self.pending + 1) / max(self.max_sessions, 1)


@dataclass(frozen=True, slots=True)
class Placement:
    worker: str | None            # None: refused
    reason: str
    code: ErrorCode | None = None  # refused: busy or not_ready


def place(workers: Sequence[WorkerView], *, queue: bool = False) -> Placement:
    open_ = [w for w in workers if w.up and not w.draining]
    admitting = [w for w in open_ if w.admits]
    if admitting:
        best = min(admitting, key=_least_loaded)
        return Placement(best.name, f"{len(admitting)} of {len(workers)} worker(s) admit it; {best.name} is the least loaded "
                                    f"({best.expected_load:.0%} of its compute with it, {best.sessions} session(s) running)")
    if not open_:
        why = "; ".join(f"{w.name}: {_why_not(w)}" for w in workers) or "none has joined"
        return Placement(None, f"no worker is up to take a session ({why}); retry later", ErrorCode.NOT_READY)
    if queue:
        best = min(open_, key=_least_loaded)
        return Placement(best.name, f"no worker admits it now; it waits in line on {best.name}, the least loaded")
    why = "; ".join(f"{w.name}: {_why_not(w)}" for w in workers)
    fitting = [w for w in open_ if w.max_fps]
    hint = ""
    if fitting:
        roomiest = max(fitting, key=lambda w: w.max_fps or 0.0)
        hint = f"; a target_fps of at most {roomiest.max_fps:g} would fit on {roomiest.name}"
    return Placement(None, f"no worker admits this session ({why}){hint}; retry later", ErrorCode.BUSY)


def _least_loaded(worker: WorkerView) -> tuple[int, float, str]:
    return round(worker.expected_load / LOAD_RESOLUTION), worker.slot_share, worker.name


def _why_not(worker: WorkerView) -> str:
    if not worker.up:
        return worker.reason or "down"
    if worker.draining:
        return "draining"
    return worker.reason
