"""Generated frames on their way out of a transport: queued, dropped once they are of no use, paced by pts.

Every transport (the WebSocket, the WebRTC and WHEP video tracks) sends a session's frames the
same way, so the backlog, the drop rule and the pacing live here, once. The session's events push
frames (on the event loop); the transport's sender takes each at its paced time, encodes it its
own way and sends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from streaming.frames import VideoFrame
from streaming.pacing import PtsPacer

OUTPUT_BACKLOG = 32  # most generated frames waiting to be sent
# Queued frames of earlier steps may span this much capture time. A longer queue means the sender
# (encoder, link or client) is slower than the model, and then the oldest frames are superseded:
# sending them would only add latency. One step's burst (a chunk of a video model, which may
# cover a second of video) is paced out whole.
MAX_QUEUED_SPAN_S = 0.25

Item = TypeVar("Item")


class PacedOutput(Generic[Item]):
    """The frames one transport has yet to send (event loop only; one consumer).

    An item is a frame or whatever the transport wraps it in; `frame_of` finds its frame. `push`
    queues an item and first drops the oldest queued ones that should no longer be sent, calling
    `on_dropped` once for each. For every transport that is when
    - the backlog is full (OUTPUT_BACKLOG): memory stays bounded whatever the sender does;
    - the frame finished longer ago than the latency budget: that late, it is of no use to a live viewer;
    - the queue spans more than MAX_QUEUED_SPAN_S of capture time and the oldest frame came from an
      earlier step than the newest: the sender lags behind the model, and newer frames supersede
      the oldest long before those turn stale.

    `take` waits for the next item and returns it at its paced time (a burst leaves at the rhythm
    its frames were captured at, see PtsPacer). `close` ends a waiting `take`, and every later one,
    with None.
    """

    def __init__(self, frame_of: Callable[[Item], VideoFrame], target_fps: float, latency_budget_s: float,
                 on_dropped: Callable[[], None] | None = None):
        self._frame_of = frame_of
        self._on_dropped = on_dropped
        self._items: deque[Item] = deque()
        self._ready = asyncio.Event()
        self._closed = asyncio.Event()
        self._pacer = PtsPacer(max_wait=1 / target_fps)
        self._target_fps = target_fps
        self._latency_budget_s = latency_budget_s

    @property
    def target_fps(self) -> float:
        return self._target_fps

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def set_slo(self, target_fps: float, latency_budget_s: float) -> None:
        """Follow the session's SLO: a frame is held at most one interval of `target_fps`."""
        self._target_fps = target_fps
        self._latency_budget_s = latency_budget_s
        self._pacer.max_wait = 1 / target_fps

    def push(self, item: Item) -> None:
        """Queue a generated frame, dropping (and counting) the queued ones it makes useless."""
        if self.closed:
            return
        newest = self._frame_of(item)
        stale_before = time.monotonic() - self._latency_budget_s
        while self._items and self._outdated(self._frame_of(self._items[0]), newest, stale_before):
            self._items.popleft()
            if self._on_dropped is not None:
                self._on_dropped()
        self._items.append(item)
        self._ready.set()

    def _outdated(self, oldest: VideoFrame, newest: VideoFrame, stale_before: float) -> bool:
        finished = oldest.timestamps.get("finished")  # a frame nobody stamped cannot be judged stale
        same_step = finished is not None and finished == newest.timestamps.get("finished")
        return (len(self._items) >= OUTPUT_BACKLOG or (finished is not None and finished < stale_before)
                or (_span(oldest, newest) > MAX_QUEUED_SPAN_S and not same_step))

    async def take(self) -> Item | None:
        """The next item, at its paced time; None once closed."""
        while not self._items:
            if self.closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        item = self._items.popleft()
        delay = self._pacer.delay(self._frame_of(item).pts, time.monotonic())
        if delay > 0:
            with contextlib.suppress(asyncio.TimeoutError):  # the usual case: paced, not closed
                await asyncio.wait_for(self._closed.wait(), delay)
        return None if self.closed else item

    def close(self) -> None:
        """The transport stopped: forget what is queued and end the consumer's wait."""
        self._closed.set()
        self._items.clear()
        self._ready.set()


def _span(older: VideoFrame, newer: VideoFrame) -> float:
    return 0.0 if older.pts is None or newer.pts is None else newer.pts - older.pts
