"""The output path every transport shares (streaming/output_queue.py), on a real event loop: which
frames are dropped and counted, how a burst is spaced by pts, and that closing ends a waiting sender."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from streaming.frames import VideoFrame
from streaming.output_queue import MAX_QUEUED_SPAN_S, OUTPUT_BACKLOG, PacedOutput

PICTURE = np.zeros((8, 8, 3), np.uint8)


def frame(frame_id: int, pts: float | None = None, finished_ago_s: float | None = 0.0) -> VideoFrame:
    stamps = {} if finished_ago_s is None else {"finished": time.monotonic() - finished_ago_s}
    return VideoFrame(PICTURE, frame_id, pts, timestamps=stamps)


def frames_queue(target_fps: float = 30.0, latency_budget_s: float = 0.5) -> tuple[PacedOutput[VideoFrame], list[int]]:
    dropped: list[int] = []
    return PacedOutput(lambda f: f, target_fps, latency_budget_s, on_dropped=lambda: dropped.append(1)), dropped


async def take_all(output: PacedOutput, count: int) -> list:
    return [await asyncio.wait_for(output.take(), 2) for _ in range(count)]


async def assert_empty(output: PacedOutput) -> None:
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(output.take(), 0.05)


async def test_a_full_backlog_drops_the_oldest_and_counts_each():
    dropped: list[int] = []
    # A transport may wrap its frames (the WebSocket keeps the similarity filter's flag with each).
    output: PacedOutput[tuple[VideoFrame, bool]] = PacedOutput(lambda item: item[0], 30.0, 5.0, on_dropped=lambda: dropped.append(1))
    extra = 8
    for i in range(OUTPUT_BACKLOG + extra):  # no pts: nothing to pace, nothing spans time
        output.push((frame(i), i % 2 == 0))
    assert len(dropped) == extra
    taken = await take_all(output, OUTPUT_BACKLOG)
    assert [item[0].frame_id for item in taken] == list(range(extra, OUTPUT_BACKLOG + extra))
    assert [flag for _, flag in taken] == [i % 2 == 0 for i in range(extra, OUTPUT_BACKLOG + extra)]
    await assert_empty(output)
    assert len(dropped) == extra


async def test_a_frame_older_than_the_latency_budget_is_dropped():
    output, dropped = frames_queue(latency_budget_s=0.5)
    output.push(frame(0, finished_ago_s=1.0))   # the client let it wait past the budget
    output.push(frame(1, finished_ago_s=0.1))
    assert dropped == [1]
    output.push(frame(2, finished_ago_s=None))  # nobody stamped it: it cannot be judged stale
    output.push(frame(3))
    assert dropped == [1]
    assert [f.frame_id for f in await take_all(output, 3)] == [1, 2, 3]


async def test_a_longer_budget_keeps_what_a_shorter_one_drops():
    output, dropped = frames_queue(latency_budget_s=0.5)
    output.set_slo(30.0, 2.0)
    output.push(frame(0, finished_ago_s=1.0))
    output.push(frame(1))
    assert dropped == []
    assert [f.frame_id for f in await take_all(output, 2)] == [0, 1]


async def test_frames_spanning_more_than_the_limit_supersede_the_oldest():
    output, dropped = frames_queue(target_fps=30.0, latency_budget_s=5.0)
    for i in range(20):  # the sender lags: 20 frames of 1/30 s queue up
        output.push(frame(i, pts=10 + i / 30))
    kept = int(MAX_QUEUED_SPAN_S * 30) + 1  # 8 frames span 7/30 s, within 0.25 s
    assert len(dropped) == 20 - kept
    first = await asyncio.wait_for(output.take(), 2)
    assert first.frame_id == 20 - kept


async def test_a_burst_within_the_span_is_kept_whole():
    output, dropped = frames_queue(target_fps=30.0)
    for i in range(6):  # one chunk from a chunked model: 5/30 s of capture time
        output.push(frame(i, pts=i / 30))
    assert dropped == []
    assert [f.frame_id for f in await take_all(output, 6)] == list(range(6))


async def test_one_steps_burst_longer_than_the_span_is_kept_whole_until_the_next_step():
    output, dropped = frames_queue(target_fps=16.0, latency_budget_s=5.0)
    finished = time.monotonic()
    # A video model's longest chunk: 16 pictures (1 s of capture time) from one step.
    burst = [VideoFrame(PICTURE, i, i / 16, timestamps={"finished": finished}) for i in range(16)]
    for f in burst:
        output.push(f)
    assert dropped == []
    await take_all(output, 4)  # the sender got through a quarter of it...
    output.push(VideoFrame(PICTURE, 16, 1.0, timestamps={"finished": finished + 1.0}))  # ...when the next step's came
    assert len(dropped) == 12 - int(MAX_QUEUED_SPAN_S * 16)  # leftovers more than the span older are superseded
    assert (await asyncio.wait_for(output.take(), 2)).frame_id == 16 - int(MAX_QUEUED_SPAN_S * 16)


async def test_a_burst_leaves_spaced_by_pts():
    output, dropped = frames_queue(target_fps=10.0)
    for i in range(3):  # three frames captured 100 ms apart arrive at once
        output.push(frame(i, pts=i / 10))
    taken_at = []
    for _ in range(3):
        await asyncio.wait_for(output.take(), 2)
        taken_at.append(time.monotonic())
    gaps = np.diff(taken_at)
    assert dropped == []
    # The pacer holds each frame a little under its pts gap (it drifts back 10 % a wait); unpaced, the gaps would be ~0.
    assert all(gap > 0.05 for gap in gaps), gaps
    assert taken_at[-1] - taken_at[0] < 1.0


async def test_close_ends_a_consumer_waiting_for_a_frame():
    output, dropped = frames_queue()
    waiting = asyncio.create_task(output.take())
    await asyncio.sleep(0.05)
    assert not waiting.done()
    output.close()
    assert await asyncio.wait_for(waiting, 1) is None
    output.push(frame(0))  # a transport that stopped takes nothing more
    assert await asyncio.wait_for(output.take(), 1) is None
    assert dropped == [] and output.closed


async def test_close_ends_a_paced_wait_at_once():
    output, _ = frames_queue(target_fps=0.5)  # a frame may be held up to 2 s
    output.push(frame(0, pts=0.0))
    assert (await asyncio.wait_for(output.take(), 1)).frame_id == 0
    output.push(frame(1, pts=1.0))  # paced ~0.9 s after the first
    started = time.monotonic()
    waiting = asyncio.create_task(output.take())
    await asyncio.sleep(0.05)
    output.close()
    assert await asyncio.wait_for(waiting, 1) is None
    assert time.monotonic() - started < 0.5
