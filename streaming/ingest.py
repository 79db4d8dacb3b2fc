"""Decoding a stream's incoming pictures off the event loop, newest first."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from streaming.codec import decode_image
from streaming.errors import ErrorCode, StreamError
from streaming.frames import EncodedFrame, VideoFrame


def decode_frame(encoded: EncodedFrame) -> VideoFrame:
    image = decode_image(encoded.format, encoded.payload, encoded.width, encoded.height)
    return VideoFrame(image, encoded.frame_id, encoded.pts, encoded.stream_id, encoded.timestamps)


class LatestDecoder:
    """Decodes one stream's pictures on a thread pool.

    At most one decode runs per stream; a picture that arrives meanwhile waits in a one-slot
    holder, replacing (and counting as dropped) an older waiting one. A client that sends faster
    than we decode therefore builds no backlog, and decoding overlaps the model's step.
    Callbacks run on the event loop. `decode` turns what `submit` was given (anything with a
    `frame_id`: an EncodedFrame by default, a received WebRTC picture for that transport) into
    a VideoFrame.
    """

    def __init__(self, executor: Executor, on_frame: Callable[[VideoFrame], None],
                 on_error: Callable[[StreamError, int], None], on_drop: Callable[[], None],
                 decode: Callable[[Any], VideoFrame] = decode_frame):
        self._executor = executor
        self._decode = decode
        self._on_frame = on_frame
        self._on_error = on_error
        self._on_drop = on_drop
        self._busy = False
        self._waiting: Any = None
        self._closed = False

    def submit(self, encoded: Any) -> None:
        if not self._busy:
            self._start(encoded)
            return
        if self._waiting is not None:
            self._on_drop()
        self._waiting = encoded

    def close(self) -> None:
        self._closed = True
        self._waiting = None

    def _start(self, encoded: Any) -> None:
        self._busy = True
        future = asyncio.get_running_loop().run_in_executor(self._executor, self._decode, encoded)
        future.add_done_callback(lambda f: self._done(f, encoded.frame_id))

    def _done(self, future: asyncio.Future, frame_id: int) -> None:
        self._busy = False
        if self._closed or future.cancelled():
            return
        err = future.exception()
        if isinstance(err, StreamError):
            self._on_error(err, frame_id)
        elif err is not None:
            self._on_error(StreamError(ErrorCode.BAD_IMAGE, f"picture does not decode: {err}"), frame_id)
        else:
            self._on_frame(future.result())
        if self._waiting is not None:
            encoded, self._waiting = self._waiting, None
            self._start(encoded)
