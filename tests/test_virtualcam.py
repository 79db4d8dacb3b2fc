"""`latentcast virtualcam`: the bridge writes a session's output to a (fake) camera at the
session's frame rate, follows `latest` across a restart, and says clearly what is missing when
pyvirtualcam or its device is not there."""

from __future__ import annotations

import asyncio
import sys
import types

import numpy as np
import pytest

from app.cli import main
from streaming.client import StreamClient
from streaming.virtualcam import FakeCamera, PyVirtualCam, VirtualCamBridge, VirtualCamUnavailable

from fake_pipelines import TintPipeline
from webrtc_peers import wait_until

FPS = 12


pytestmark = pytest.mark.usefixtures("loopback_ice")


async def stream_session(url: str, grey: int, stop: asyncio.Event) -> None:
    """A WebSocket client whose session outputs flat `grey` pictures until `stop`."""
    async with await StreamClient.connect(url) as client:
        await client.start("tint", {"strength": 0.0}, slo={"target_fps": FPS, "latency_budget_ms": 500})
        while not stop.is_set():
            await client.send_frame(np.full((64, 96, 3), grey, np.uint8), format="rgb24")
            await asyncio.sleep(1 / 20)
        await client.stop()


async def test_bridge_writes_at_the_session_rate_and_follows_a_restart(server_factory):
    url = server_factory({"tint": TintPipeline()})
    camera = FakeCamera()
    reports: list[str] = []
    bridge = VirtualCamBridge(url, "latest", camera, retry_s=0.2, report=reports.append)
    stop_bridge, stop_first, stop_second = asyncio.Event(), asyncio.Event(), asyncio.Event()
    first = asyncio.create_task(stream_session(url, 40, stop_first))
    running = asyncio.create_task(bridge.run(stop_bridge))
    try:
        await wait_until(lambda: camera.frames >= 5, timeout=15)
        assert camera.opened[0] == (96, 64, FPS)
        written, started = camera.frames, asyncio.get_running_loop().time()
        await asyncio.sleep(1.0)
        rate = (camera.frames - written) / (asyncio.get_running_loop().time() - started)
        assert FPS * 0.6 < rate < FPS * 1.3, rate  # at the session's rate, not the 20 fps the frames come at
        assert abs(int(camera.last.mean()) - 40) < 6

        # The stream restarts as a new session: the bridge finds it and the camera goes on.
        stop_first.set()
        await first
        second = asyncio.create_task(stream_session(url, 200, stop_second))
        await wait_until(lambda: bridge.connects == 2 and camera.last is not None and camera.last.mean() > 150, timeout=20)
        assert len(camera.opened) == 1  # same size: the device was not reopened
        stop_second.set()
        await second
    finally:
        stop_first.set()
        stop_second.set()
        stop_bridge.set()
        await asyncio.wait_for(running, 10)
    assert camera.closed
    assert any("ended" in line for line in reports)


async def test_waits_for_a_session_that_is_not_there(server_factory):
    url = server_factory({"tint": TintPipeline()})
    reports: list[str] = []
    bridge = VirtualCamBridge(url, "nope", FakeCamera(), retry_s=0.1, report=reports.append)
    stop = asyncio.Event()
    running = asyncio.create_task(bridge.run(stop))
    await wait_until(lambda: len(reports) >= 2)
    stop.set()
    await running
    assert "waiting for session nope" in reports[0] and "no session" in reports[0]


def test_missing_pyvirtualcam_is_explained(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pyvirtualcam", None)  # as if not installed
    with pytest.raises(VirtualCamUnavailable, match=r"pip install 'latentcast\[virtualcam\]'"):
        PyVirtualCam()
    assert main(["virtualcam", "--session", "latest", "--url", "http://127.0.0.1:9"]) == 2
    assert "pip install" in capsys.readouterr().err


def test_missing_device_is_explained(monkeypatch):
    def no_device(*args, **kwargs):
        raise RuntimeError("'v4l2loopback' backend: No v4l2 loopback device found at /dev/video[0-99]")

    fake = types.SimpleNamespace(Camera=no_device, PixelFormat=types.SimpleNamespace(RGB="RGB"))
    monkeypatch.setitem(sys.modules, "pyvirtualcam", fake)
    with pytest.raises(VirtualCamUnavailable, match="modprobe v4l2loopback") as err:
        PyVirtualCam().open(64, 64, 30)
    assert "No v4l2 loopback device" in str(err.value) and "OBS" in str(err.value)
