"""One thread per model, the critical path first.

On two cores, two models computing at once each take about twice as long, so the stage a turn is
waiting for would finish late. Each model therefore gets a lane: one thread that runs its calls
one at a time, critical ones (what the answer heard next waits for: the transcript at the pause,
the draft, the turn model's verdict, the voice of the first words) before background ones (partial
transcripts, reading the history ahead). A background call also waits while any lane has critical
work queued or running, so it never takes the other core from the part of the critical path that
runs in parallel (the transcript and the turn model, at the pause). Background calls are kept
short (a prompt is read ahead in slices), since a call that started is never interrupted.

Lanes are shared by every stream of the pipeline; within a priority, calls run in the order they
came.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any


class Priority(IntEnum):
    CRITICAL = 0
    BACKGROUND = 1


class _CriticalWork:
    """Critical calls queued or running on any lane of a group; background calls wait for none."""

    def __init__(self) -> None:
        self._count = 0
        self._idle = threading.Condition()

    def add(self, n: int) -> None:
        with self._idle:
            self._count += n
            self._idle.notify_all()   # idle now, or a lane holding a background call may have critical work of its own

    def wait_idle(self, stop: threading.Event, overtaken: Callable[[], bool]) -> None:
        """Until no critical call is queued or running, or the waiting lane has one of its own to run first."""
        with self._idle:
            while self._count and not stop.is_set() and not overtaken():
                self._idle.wait(0.5)


@dataclass(order=True)
class _Call:
    priority: int
    order: int
    fn: Callable[..., Any] = field(compare=False)
    args: tuple = field(compare=False)
    future: Future = field(compare=False)


class Lane:
    """A model's thread: `submit` queues a call, `call` waits for its result."""

    def __init__(self, name: str, critical: _CriticalWork):
        self.name = name
        self._critical = critical
        self._queue: list[_Call] = []
        self._order = itertools.count()
        self._ready = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"speech-{name}", daemon=True)
        self._thread.start()

    def submit(self, priority: Priority, fn: Callable[..., Any], *args: Any) -> Future:
        future: Future = Future()
        if priority is Priority.CRITICAL:
            self._critical.add(1)
        with self._ready:
            heapq.heappush(self._queue, _Call(int(priority), next(self._order), fn, args, future))
            self._ready.notify()
        return future

    def call(self, priority: Priority, fn: Callable[..., Any], *args: Any) -> Any:
        return self.submit(priority, fn, *args).result()

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._ready:
                while not self._queue and not self._stop.is_set():
                    self._ready.wait(0.5)
                if self._stop.is_set():
                    return
                job = self._queue[0]
                if job.priority == Priority.BACKGROUND:
                    self._ready.release()
                    try:
                        self._critical.wait_idle(self._stop, lambda held=job: self._queue[0] is not held)
                    finally:
                        self._ready.acquire()
                    if self._queue[0] is not job:
                        continue  # a critical call came in meanwhile: it goes first
                heapq.heappop(self._queue)
            try:
                if job.future.set_running_or_notify_cancel():
                    try:
                        job.future.set_result(job.fn(*job.args))
                    except BaseException as err:  # noqa: BLE001 - handed to whoever waits on the future
                        job.future.set_exception(err)
            finally:
                if job.priority == Priority.CRITICAL:
                    self._critical.add(-1)

    def close(self) -> None:
        self._stop.set()
        with self._ready:
            self._ready.notify_all()


class Lanes:
    """The relay's model lanes: speech recognition, language model, turn model, voice."""

    def __init__(self) -> None:
        critical = _CriticalWork()
        self.asr = Lane("asr", critical)
        self.llm = Lane("llm", critical)
        self.turn = Lane("turn", critical)
        self.tts = Lane("tts", critical)

    def close(self) -> None:
        for lane in (self.asr, self.llm, self.turn, self.tts):
            lane.close()
