"""A session's generated video into a virtual camera (Zoom, Meet, OBS see it as a webcam).

The bridge is a WHEP player: it watches the session's output over WebRTC, keeps the newest
frame, and writes it to the camera at the session's frame rate (a camera needs a steady rate,
so a frame is repeated while the next is late). When the stream ends or the server is away it
keeps trying; with the session id `latest` it follows whatever session runs next.

The camera sits behind `CameraBackend`: pyvirtualcam for real devices (v4l2loopback on Linux,
OBS's virtual camera driver on Windows and macOS), a fake that records for tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from streaming.webrtc.http_signaling import SignalingError, close_resource, open_resource
from streaming.webrtc.peer import new_peer_connection

if TYPE_CHECKING:
    import pyvirtualcam  # an optional extra: imported when a camera is made

log = logging.getLogger(__name__)

DEFAULT_FPS = 30.0
TRACK_TIMEOUT_S = 10.0


class VirtualCamUnavailable(RuntimeError):
    """No virtual camera to write to; the message says how to get one."""


class CameraBackend(Protocol):
    def open(self, width: int, height: int, fps: float) -> str:
        """Open (or reopen at a new size) the device; returns its name."""

    def send(self, image: np.ndarray) -> None:
        """Write one (height, width, 3) uint8 RGB frame."""

    def close(self) -> None: ...


class PyVirtualCam:
    """A real virtual camera through pyvirtualcam (the `virtualcam` extra)."""

    def __init__(self, device: str | None = None, backend: str | None = None):
        self.device = device
        self.backend = backend
        self._camera: pyvirtualcam.Camera | None = None
        try:
            import pyvirtualcam
        except ImportError:
            raise VirtualCamUnavailable("pyvirtualcam is not installed: pip install 'latentcast[virtualcam]'") from None
        self._module = pyvirtualcam

    def open(self, width: int, height: int, fps: float) -> str:
        self.close()
        try:
            self._camera = self._module.Camera(width, height, fps, fmt=self._module.PixelFormat.RGB,
                                               device=self.device, backend=self.backend)
        except RuntimeError as err:
            raise VirtualCamUnavailable(
                f"no virtual camera device to write to ({err}). Linux: sudo modprobe v4l2loopback exclusive_caps=1 "
                "card_label=latentcast; Windows or macOS: install OBS Studio and start its Virtual Camera once "
                "(or Unity Capture on Windows)") from None
        return self._camera.device

    def send(self, image: np.ndarray) -> None:
        camera = self._camera
        assert camera is not None, "send() before open()"  # the bridge opens the camera at the first frame's size
        camera.send(image)

    def close(self) -> None:
        if self._camera is not None:
            self._camera.close()
            self._camera = None


@dataclass
class FakeCamera:
    """Records what a camera would have shown."""

    opened: list[tuple[int, int, float]] = field(default_factory=list)
    frames: int = 0
    last: np.ndarray | None = None
    closed: bool = False

    def open(self, width: int, height: int, fps: float) -> str:
        self.opened.append((width, height, fps))
        return "fake"

    def send(self, image: np.ndarray) -> None:
        self.frames += 1
        self.last = image

    def close(self) -> None:
        self.closed = True


class VirtualCamBridge:
    def __init__(self, server_url: str, session_id: str, camera: CameraBackend, *, token: str | None = None,
                 fps: float | None = None, retry_s: float = 2.0, report: Callable[[str], None] = log.info):
        self.server_url = server_url.rstrip("/")
        self.session_id = session_id
        self.camera = camera
        self.token = token
        self.fps = fps
        self.retry_s = retry_s
        self.report = report
        self.connects = 0
        self._latest: np.ndarray | None = None
        self._camera_format: tuple[int, int, float] | None = None

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Watch, write, and reconnect until `stop` is set (or forever)."""
        stop = stop or asyncio.Event()
        try:
            while not stop.is_set():
                try:
                    await self._watch_once(stop)
                except SignalingError as err:
                    self.report(f"waiting for session {self.session_id}: {err.reason}")
                except (OSError, asyncio.TimeoutError) as err:
                    self.report(f"cannot reach {self.server_url}: {err}")
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.retry_s)
        finally:
            self.camera.close()

    async def _watch_once(self, stop: asyncio.Event) -> None:
        pc = new_peer_connection()
        pc.addTransceiver("video", direction="recvonly")
        track_ready: asyncio.Future = asyncio.get_running_loop().create_future()
        hung_up = asyncio.Event()

        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "video" and not track_ready.done():
                track_ready.set_result(track)

        def on_connection_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                hung_up.set()

        pc.on("track", on_track)
        pc.on("connectionstatechange", on_connection_state)
        resource = None
        try:
            resource = await open_resource(pc, f"{self.server_url}/v1/whep/{self.session_id}", self.token)
            session_id = resource.rstrip("/").split("/")[-2]
            # not `self.fps or ...`: mypy would solve to_thread's result type from the Optional on the left
            fps = self.fps if self.fps else await asyncio.to_thread(self._session_fps, session_id)
            track = await asyncio.wait_for(track_ready, TRACK_TIMEOUT_S)
            self.connects += 1
            self.report(f"watching session {session_id} at {fps:g} fps")
            ends = [asyncio.create_task(self._receive(track)), asyncio.create_task(stop.wait()),
                    asyncio.create_task(hung_up.wait())]
            try:
                await self._write(fps, ends)
            finally:
                for task in ends:
                    task.cancel()
            if not stop.is_set():
                self.report(f"session {session_id}'s stream ended")
        finally:
            if resource is not None:
                with contextlib.suppress(OSError):
                    await close_resource(resource, self.token)
            await pc.close()

    async def _receive(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                # aiortc types recv() as Frame | Packet for every track; a received video track yields av.VideoFrame
                self._latest = (await track.recv()).to_ndarray(format="rgb24")  # type: ignore[union-attr]

    async def _write(self, fps: float, ends: list[asyncio.Task]) -> None:
        """The newest frame at a steady `fps`, until any of `ends` is done (the track ended, the
        connection went, the bridge was stopped)."""
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while not any(task.done() for task in ends):
            image = self._latest
            if image is not None:
                height, width = image.shape[:2]
                if self._camera_format != (width, height, fps):
                    device = await asyncio.to_thread(self.camera.open, width, height, fps)
                    self._camera_format = (width, height, fps)
                    self.report(f"virtual camera {device}: {width}x{height} at {fps:g} fps")
                self.camera.send(image)
            next_at = max(next_at + 1 / fps, loop.time())
            await asyncio.wait(ends, timeout=max(0.0, next_at - loop.time()), return_when=asyncio.FIRST_COMPLETED)

    def _session_fps(self, session_id: str) -> float:
        """The session's target frame rate (its SLO), or 30 when it cannot be read."""
        request = urllib.request.Request(f"{self.server_url}/v1/sessions/{session_id}",
                                         headers={"Authorization": f"Bearer {self.token}"} if self.token else {})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return float(json.load(response)["slo"]["target_fps"])
        except (OSError, ValueError, KeyError):
            return DEFAULT_FPS
