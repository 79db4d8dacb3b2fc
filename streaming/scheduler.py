"""Scheduling policy: which streams run in the next tick, batched how.

Policy only: it sees plain views of the streams and returns a plain plan, so it is tested
without models, and the worker that executes the plan knows nothing of policy (the vLLM split).
Every stream of one pipeline that has work goes into the same batched step. The SLO-aware
policy (quality steps, admission by measured cost) replaces this one later.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class StreamView:
    session_id: str
    pipeline: str
    needs_input: bool     # driven by input frames (img2img) or by its own clock (txt2img)
    has_input: bool       # a frame waits in its slot
    next_due: float       # clock-driven streams: when the next frame is due (time.monotonic)


@dataclass(frozen=True, slots=True)
class Batch:
    pipeline: str
    session_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TickPlan:
    batches: tuple[Batch, ...]
    wake_at: float | None  # when a clock-driven stream next needs a tick, if no input comes first


def plan_tick(streams: Sequence[StreamView], now: float, max_batch: int) -> TickPlan:
    ready: dict[str, list[str]] = {}
    wake_at: float | None = None
    for s in streams:
        if s.has_input if s.needs_input else s.next_due <= now:
            ready.setdefault(s.pipeline, []).append(s.session_id)
        elif not s.needs_input:
            wake_at = s.next_due if wake_at is None else min(wake_at, s.next_due)
    batches = tuple(
        Batch(pipeline, tuple(ids[i:i + max_batch]))
        for pipeline, ids in ready.items()
        for i in range(0, len(ids), max_batch)
    )
    return TickPlan(batches, wake_at)
