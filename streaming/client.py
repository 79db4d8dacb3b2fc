"""Python client for the WebSocket stream API (docs/protocol.md).

    async with await StreamClient.connect("http://127.0.0.1:8000") as client:
        await client.start("stream-diffusion", {"prompt": "a watercolor fox"})
        await client.send_frame(rgb)                  # (H, W, 3) uint8
        frame = await client.receive_frame()          # same frame_id and pts as the input it came from
        await client.update({"prompt": "an oil painting"})   # returns once in force
        print((await client.stats())["latency_ms"])

Behind a cluster's front door (docs/cluster.md) the same code works: `start` follows the front door's `redirect`
to the worker the session was placed on, and if that worker dies the session ends with a `stopped` whose
reason is `worker_failed`, which the client learns from the front door once the connection drops.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
from websockets.asyncio.client import ClientConnection, connect

from streaming.codec import decode_image, encode_image
from streaming.protocol import AUDIO_FORMATS, FLAG_REUSED, PROTOCOL_VERSION, VIDEO_FORMATS, MediaHeader, MediaKind, pack_media, unpack_media


class StreamClientError(Exception):
    """An `error` message from the server."""

    def __init__(self, body: dict):
        super().__init__(f"{body.get('code')}: {body.get('message')}")
        self.code: str = body.get("code", "")
        self.message: str = body.get("message", "")
        self.field: str | None = body.get("field")
        self.frame_id: int | None = body.get("frame_id")
        self.body = body


@dataclass
class ReceivedFrame:
    frame_id: int
    pts: float | None
    width: int
    height: int
    format: str
    payload: bytes
    reused: bool
    received_at: float = field(default_factory=time.monotonic)

    @property
    def image(self) -> np.ndarray:
        return decode_image(self.format, self.payload, self.width, self.height)


@dataclass
class ReceivedAudio:
    chunk_id: int
    pts: float | None
    sample_rate: int
    samples: np.ndarray  # (frames, channels) int16


def stream_url(base: str) -> str:
    """ws(s)://host/v1/stream from an http(s) or ws(s) base URL (a query, such as ?token=, is kept)."""
    url = urlsplit(base)
    scheme = {"http": "ws", "https": "wss"}.get(url.scheme, url.scheme)
    path = url.path if url.path.rstrip("/").endswith("/v1/stream") else url.path.rstrip("/") + "/v1/stream"
    return urlunsplit((scheme, url.netloc, path, url.query, ""))


def http_base(url: str) -> str:
    """http(s)://host from any of the URLs `stream_url` takes."""
    parts = urlsplit(url)
    return urlunsplit(({"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme), parts.netloc, "", "", ""))


MAX_REDIRECTS = 3  # a front door sends a start to one worker; more hops than this is a loop


class StreamClient:
    def __init__(self, connection: ClientConnection, token: str | None = None, base_url: str = ""):
        self._ws = connection
        self._token = token
        self._base_url = base_url
        self.placed_by: str | None = None  # the front door that sent this client to its worker (a cluster), if one did
        self._closing = False
        self._asking: set[asyncio.Task] = set()
        self._request_ids = itertools.count(1)
        self._frame_ids = itertools.count()
        self._pending: dict[str, asyncio.Future] = {}
        self.frames: asyncio.Queue[ReceivedFrame] = asyncio.Queue()
        self.audio: asyncio.Queue[ReceivedAudio] = asyncio.Queue()
        self.errors: asyncio.Queue[StreamClientError] = asyncio.Queue()  # errors not answering a request
        self.quality_events: asyncio.Queue[dict] = asyncio.Queue()  # `quality` messages: the server stepped quality down or up
        self.queue_positions: list[int] = []  # positions told by `queued` messages while a start waited in line
        self.hello: dict = {}
        self.latest_stats: dict | None = None
        self.session_id: str | None = None
        self.stopped: asyncio.Future[dict] = asyncio.get_running_loop().create_future()
        self._hello = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, base_url: str, token: str | None = None, *, open_timeout: float = 10.0) -> StreamClient:
        client = cls(await _open(stream_url(base_url), token, open_timeout), token, base_url)
        client.hello = await asyncio.wait_for(asyncio.shield(client._hello), open_timeout)
        return client

    async def __aenter__(self) -> StreamClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # --- control ---------------------------------------------------------------------------

    async def start(self, pipeline: str | None = None, params: dict[str, Any] | None = None, *, slo: dict | None = None,
                    output_format: str = "jpeg", quality: int = 85, session_id: str | None = None, queue: bool = False,
                    timeout: float = 60.0) -> dict:
        """Open (or attach to) a session; returns the `started` message. With `queue`, a server
        without room keeps the start waiting in line (positions in `queue_positions`) instead of
        refusing it; `timeout` then includes the wait."""
        body: dict[str, Any] = {"type": "start", "version": PROTOCOL_VERSION, "params": params or {},
                                "output": {"format": output_format, "quality": quality}}
        if queue:
            body["queue"] = True
        if pipeline is not None:
            body["pipeline"] = pipeline
        if slo is not None:
            body["slo"] = slo
        if session_id is not None:
            body["session_id"] = session_id
        started = await self.request(body, timeout)
        for _ in range(MAX_REDIRECTS):
            if started.get("type") != "redirect":
                break
            await self._follow(started["url"], timeout)
            started = await self.request(body, timeout)
        if started.get("type") == "redirect":
            raise ConnectionError(f"redirected more than {MAX_REDIRECTS} times, last to {started['url']}")
        self.session_id = started["session_id"]
        return started

    async def _follow(self, url: str, timeout: float) -> None:
        """A front door placed the session: reconnect to its worker (the caller sends the same start again)."""
        self.placed_by = self.placed_by or http_base(self._base_url)
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self._ws.close()
        self._ws = await _open(url, self._token, timeout)
        self._hello = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read())
        self.hello = await asyncio.wait_for(asyncio.shield(self._hello), timeout)

    async def update(self, params: dict[str, Any] | None = None, *, slo: dict | None = None, timeout: float = 30.0) -> dict:
        """Change parameters; returns the `ack` once they are in force, raises StreamClientError if refused."""
        body: dict[str, Any] = {"type": "update", "params": params or {}}
        if slo is not None:
            body["slo"] = slo
        return await self.request(body, timeout)

    async def stats(self, timeout: float = 10.0) -> dict:
        return await self.request({"type": "stats"}, timeout)

    async def stop(self, timeout: float = 10.0) -> dict:
        return await self.request({"type": "stop"}, timeout)

    async def request(self, body: dict, timeout: float) -> dict:
        """Send a control message with a fresh request id and wait for its answer."""
        request_id = f"r{next(self._request_ids)}"
        future = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            await self._ws.send(json.dumps({**body, "request_id": request_id}))
            return await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(request_id, None)

    # --- media -----------------------------------------------------------------------------

    async def send_frame(self, image: np.ndarray, *, frame_id: int | None = None, pts: float | None = None,
                         format: str = "jpeg", quality: int = 90) -> int:
        """Send one (H, W, 3) uint8 RGB picture; returns its frame id. `pts` defaults to now."""
        frame_id = next(self._frame_ids) if frame_id is None else frame_id
        pts = time.monotonic() if pts is None else pts
        payload = await asyncio.to_thread(encode_image, image, format, quality)
        await self.send_encoded(payload, image.shape[1], image.shape[0], frame_id=frame_id, pts=pts, format=format)
        return frame_id

    async def send_encoded(self, payload: bytes, width: int, height: int, *, frame_id: int, pts: float | None,
                           format: str = "jpeg") -> None:
        header = MediaHeader(MediaKind.VIDEO, VIDEO_FORMATS[format], frame_id, pts, width, height)
        await self._ws.send(pack_media(header, payload))

    async def send_audio(self, samples: np.ndarray, sample_rate: int, *, chunk_id: int, pts: float | None = None) -> None:
        """Send (frames, channels) int16 PCM."""
        samples = np.asarray(samples, dtype="<i2").reshape(len(samples), -1)
        header = MediaHeader(MediaKind.AUDIO, AUDIO_FORMATS["pcm_s16le"], chunk_id, pts, sample_rate, samples.shape[1])
        await self._ws.send(pack_media(header, samples.tobytes()))

    async def send_raw(self, message: bytes | str) -> None:
        """Send a message as is (to test how the server treats malformed input)."""
        await self._ws.send(message)

    async def receive_frame(self, timeout: float = 30.0) -> ReceivedFrame:
        return await asyncio.wait_for(self.frames.get(), timeout)

    async def next_error(self, timeout: float = 10.0) -> StreamClientError:
        return await asyncio.wait_for(self.errors.get(), timeout)

    async def close(self) -> None:
        self._closing = True
        await self._ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader

    # --- reading ---------------------------------------------------------------------------

    async def _read(self) -> None:
        try:
            async for message in self._ws:
                if isinstance(message, bytes):
                    self._on_media(message)
                else:
                    self._on_control(json.loads(message))
        except Exception:  # noqa: BLE001 - the connection ended; pending requests learn below
            pass
        finally:
            closed = ConnectionError("stream connection closed")
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(closed)
            if not self._hello.done():
                self._hello.set_exception(closed)
            if self.placed_by and self.session_id and not self.stopped.done() and not self._closing:
                task = asyncio.get_running_loop().create_task(self._ask_why_ended(self.placed_by, self.session_id))
                self._asking.add(task)
                task.add_done_callback(self._asking.discard)

    async def _ask_why_ended(self, front_door: str, session_id: str) -> None:
        """The connection to a cluster worker dropped without `stopped`: the front door knows whether the worker
        died, and then the session ends here with its reason (`worker_failed`) and message."""
        status, body = await asyncio.to_thread(_get_json, f"{front_door}/v1/sessions/{session_id}", self._token)
        error = body.get("error") or {}
        if status == 502 and error.get("code") == "worker_failed" and not self.stopped.done():
            self.stopped.set_result({"type": "stopped", "request_id": None, "reason": "worker_failed", "message": error.get("message", "")})

    def _on_media(self, message: bytes) -> None:
        header, payload = unpack_media(message)
        if header.kind is MediaKind.VIDEO:
            self.frames.put_nowait(ReceivedFrame(header.frame_id, header.pts, header.width, header.height,
                                                 header.format_name, bytes(payload), bool(header.flags & FLAG_REUSED)))
        else:
            samples = np.frombuffer(payload, dtype="<i2").reshape(-1, header.height)
            self.audio.put_nowait(ReceivedAudio(header.frame_id, header.pts, header.width, samples))

    def _on_control(self, body: dict) -> None:
        kind = body.get("type")
        if kind == "hello":
            if not self._hello.done():
                self._hello.set_result(body)
            return
        if kind == "stats":
            self.latest_stats = body
        if kind == "stopped" and not self.stopped.done():
            self.stopped.set_result(body)
        if kind == "queued":  # progress of a start, not its answer
            self.queue_positions.append(body["position"])
            return
        if kind == "quality":
            self.quality_events.put_nowait(body)
            return
        future = self._pending.get(body.get("request_id") or "")
        if future is not None and not future.done():
            if kind == "error":
                future.set_exception(StreamClientError(body))
            else:
                future.set_result(body)
        elif kind == "error":
            self.errors.put_nowait(StreamClientError(body))


async def _open(url: str, token: str | None, timeout: float) -> ClientConnection:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    return await connect(url, additional_headers=headers, max_size=None, compression=None, open_timeout=timeout)


def _get_json(url: str, token: str | None) -> tuple[int, dict]:
    """GET a JSON body (an error body too) with its status; (0, {}) when there is no answer."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as err:
        try:
            return err.code, json.loads(err.read() or b"{}")
        except ValueError:
            return err.code, {}
    except (OSError, ValueError):
        return 0, {}
