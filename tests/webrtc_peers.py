"""Client-side WebRTC helpers for tests: synthetic camera and microphone tracks whose frames say
which they are, a demo client (HTTP offer/answer plus the `control` data channel), and frame
collection with arrival times. Everything on 127.0.0.1 (see streaming.webrtc.loopback)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from fractions import Fraction

import av
import httpx
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from media import noisy_tone

INDEX_BITS = 16
BAND = 16  # rows of the top band that carry the index


def paint_index(image: np.ndarray, index: int) -> np.ndarray:
    """Write `index` as black/white blocks across the top band (survives VP8 and H.264)."""
    width = image.shape[1]
    block = width // INDEX_BITS
    for bit in range(INDEX_BITS):
        image[:BAND, bit * block:(bit + 1) * block] = 255 if (index >> bit) & 1 else 0
    return image


def read_index(image: np.ndarray) -> int:
    width = image.shape[1]
    block = width // INDEX_BITS
    bits = [image[BAND // 4:3 * BAND // 4, bit * block + block // 4:(bit + 1) * block - block // 4].mean() > 128
            for bit in range(INDEX_BITS)]
    return sum(1 << bit for bit, on in enumerate(bits) if on)


class CountingCamera(MediaStreamTrack):
    """Frames at `fps` on the wall clock, numbered in their pixels; `captured[i]` is when frame i
    was handed to the encoder (time.monotonic())."""

    kind = "video"

    def __init__(self, width: int = 256, height: int = 144, fps: float = 30.0):
        super().__init__()
        self.width, self.height, self.fps = width, height, fps
        self.captured: dict[int, float] = {}
        self._start: float | None = None
        self._index = 0
        y, x = np.mgrid[0:height, 0:width]
        self._background = np.stack([x * 255 // width, y * 255 // height, np.full_like(x, 96)], -1).astype(np.uint8)

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        due = self._start + self._index / self.fps
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        index = self._index
        self._index += 1
        frame = av.VideoFrame.from_ndarray(paint_index(self._background.copy(), index), format="rgb24")
        frame.pts, frame.time_base = round(index * 90000 / self.fps), Fraction(1, 90000)
        self.captured[index] = time.monotonic()
        return frame


class ToneMicrophone(MediaStreamTrack):
    """A noisy 440 Hz tone, 48 kHz mono, 20 ms frames on the wall clock."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._tone = (noisy_tone(1.0) * 32767).astype(np.int16)
        self._start: float | None = None
        self._sent = 0

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        await asyncio.sleep(max(0.0, self._start + self._sent * 0.02 - time.monotonic()))
        start = (self._sent * 960) % (len(self._tone) - 960)
        frame = av.AudioFrame.from_ndarray(self._tone[start:start + 960].reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = 48000, self._sent * 960, Fraction(1, 48000)
        self._sent += 1
        return frame


@dataclass
class Received:
    """What arrived on a remote track: (arrival time, frame) pairs."""

    frames: list[tuple[float, av.VideoFrame | av.AudioFrame]] = field(default_factory=list)
    ended: bool = False
    task: asyncio.Future | None = None  # the collecting task, kept referenced while it runs

    async def collect(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                self.frames.append((time.monotonic(), frame))
        except MediaStreamError:
            self.ended = True

    def indices(self) -> list[tuple[float, int]]:
        return [(at, read_index(frame.to_ndarray(format="rgb24"))) for at, frame in self.frames]


def new_client_pc() -> RTCPeerConnection:
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


def prefer(transceiver, mime_type: str) -> None:
    codecs = RTCRtpSender.getCapabilities(transceiver.kind).codecs
    transceiver.setCodecPreferences([c for c in codecs if c.mimeType == mime_type] + [c for c in codecs if c.mimeType.endswith("/rtx")])


def received_on(pc: RTCPeerConnection) -> dict[str, Received]:
    """Start collecting every remote track `pc` gets, by kind."""
    received = {"video": Received(), "audio": Received()}

    @pc.on("track")
    def on_track(track) -> None:
        kept = received[track.kind]
        kept.task = asyncio.ensure_future(kept.collect(track))

    return received


class DemoClient:
    """What the browser demo does, from Python: offer over HTTP, control on the data channel."""

    def __init__(self, base_url: str, pc: RTCPeerConnection):
        self.base_url = base_url
        self.pc = pc
        self.channel = pc.createDataChannel("control")
        self.messages: asyncio.Queue[dict] = asyncio.Queue()
        self.opened = asyncio.Event()
        self.channel.on("open", self.opened.set)
        self.channel.on("message", lambda text: self.messages.put_nowait(json.loads(text)))
        self.peer_id: str | None = None

    async def connect(self, **offer_options) -> httpx.Response:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        async with httpx.AsyncClient(base_url=self.base_url) as http:
            response = await http.post("/v1/webrtc/offer", json={"sdp": self.pc.localDescription.sdp, "type": "offer", **offer_options})
        if response.status_code == 200:
            answer = response.json()
            self.peer_id = answer["peer_id"]
            await self.pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
            await asyncio.wait_for(self.opened.wait(), 10)
        return response

    def send(self, message: dict) -> None:
        self.channel.send(json.dumps(message))

    async def expect(self, kind: str, request_id: str | None = None, timeout: float = 10.0) -> dict:
        """The next message of `kind` (and `request_id`), skipping others (periodic stats, frame notes)."""
        async with asyncio.timeout(timeout):
            while True:
                message = await self.messages.get()
                if message["type"] in (kind, "error") and (request_id is None or message.get("request_id") == request_id):
                    if message["type"] == "error" and kind != "error":
                        raise AssertionError(f"expected {kind}, got {message}")
                    return message

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.pc.close()


async def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)


async def client_offer(video: str | None = "sendrecv", audio: str | None = "sendrecv", channel: bool = True) -> str:
    """A complete offer as an aiortc client makes it (candidates gathered), for tests that change
    it before posting it; the connection that made it is closed."""
    pc = new_client_pc()
    try:
        if video:
            pc.addTransceiver("video", direction=video)
        if audio:
            pc.addTransceiver("audio", direction=audio)
        if channel:
            pc.createDataChannel("control")
        await pc.setLocalDescription(await pc.createOffer())
        return pc.localDescription.sdp
    finally:
        await pc.close()
