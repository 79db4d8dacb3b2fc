"""Plain scheduling policies the SLO scheduler is measured against (benchmarks, tests).

They have the scheduler's interface (`schedule`, `update_from_output`, `forget`) and know nothing
of deadlines or costs: FIFO serves the pipeline of the oldest input, round-robin takes turns
between pipelines. Each batches every ready stream of the pipeline it picks.
"""

from __future__ import annotations

from streaming.scheduler import Batch, TickPlan


def _ready(streams, now):
    return [s for s in streams if (s.input_since is not None if s.needs_input else s.next_due <= now)]


def _batch_of(pipeline: str, ready) -> TickPlan:
    return TickPlan((Batch(pipeline, tuple(s.session_id for s in ready if s.pipeline == pipeline)),))


class Fifo:
    """The oldest input first, with every ready stream of its pipeline."""

    def schedule(self, streams, now):
        ready = _ready(streams, now)
        if not ready:
            due = [s.next_due for s in streams if not s.needs_input]
            return TickPlan((), min(due) if due else None)
        lead = min(ready, key=lambda s: s.input_since if s.needs_input else s.next_due)
        return _batch_of(lead.pipeline, ready)

    def update_from_output(self, *args):
        pass

    def forget(self, session_id):
        pass


class RoundRobin(Fifo):
    """Pipelines take turns, whatever their inputs' age."""

    def __init__(self):
        self._last: str | None = None

    def schedule(self, streams, now):
        ready = _ready(streams, now)
        if not ready:
            return super().schedule(streams, now)
        pipelines = sorted({s.pipeline for s in ready})
        after = [p for p in pipelines if self._last is None or p > self._last]
        self._last = (after or pipelines)[0]
        return _batch_of(self._last, ready)
