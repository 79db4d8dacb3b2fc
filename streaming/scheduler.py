"""Scheduling policy: which streams run in the next tick, batched how.

Policy only: it sees plain views of the streams and returns a plain plan, so it is tested
without models, and the worker that executes the plan knows nothing of policy (the vLLM split).
Every stream of one pipeline that has work goes into the same batched step. The SLO-aware
policy (quality steps, admission by measured cost) replaces this one later.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class StreamView:
    session_id: str
    pipeline: str
    needs_input: bool            # driven by input frames (img2img) or by its own clock (txt2img)
    input_since: float | None    # when the frame waiting in its slot was queued (None: no frame)
    next_due: float              # clock-driven streams: when the next frame is due (time.monotonic)


@dataclass(frozen=True, slots=True)
class Batch:
    pipeline: str
    session_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TickPlan:
    batches: tuple[Batch, ...]
    wake_at: float | None  # when to plan again if no input comes first


def plan_tick(streams: Sequence[StreamView], now: float, max_batch: int,
              gather_s: Mapping[str, float] | None = None) -> TickPlan:
    """Batch the streams that have work, per pipeline.

    `gather_s` is how long a pipeline's ready inputs may wait for its other input-driven streams'
    next frames: streams served by one step send their next frames at nearly the same moment, and
    stepping on the first arrival would split them into two steps of half the batch.
    """
    ready: dict[str, list[StreamView]] = {}
    missing: dict[str, int] = {}
    wake_at: float | None = None

    def wake(at: float) -> None:
        nonlocal wake_at
        wake_at = at if wake_at is None else min(wake_at, at)

    for s in streams:
        if s.input_since is not None if s.needs_input else s.next_due <= now:
            ready.setdefault(s.pipeline, []).append(s)
        elif s.needs_input:
            missing[s.pipeline] = missing.get(s.pipeline, 0) + 1
        else:
            wake(s.next_due)
    batches = []
    for pipeline, views in ready.items():
        gather = (gather_s or {}).get(pipeline, 0.0)
        oldest = min((v.input_since for v in views if v.needs_input), default=now)
        if missing.get(pipeline) and now < oldest + gather:
            wake(oldest + gather)
            continue
        ids = [v.session_id for v in views]
        batches += [Batch(pipeline, tuple(ids[i:i + max_batch])) for i in range(0, len(ids), max_batch)]
    return TickPlan(tuple(batches), wake_at)
