"""The demo over WebRTC and the player page, in headless Chromium with a fake camera and
microphone, against the real server on 127.0.0.1 (reference/testing-verified.md: aioice and
Chromium both kept on loopback, nothing reaches the network).

Sync Playwright in its own module with a module-scoped browser (a session-scoped one breaks the
asyncio tests that run after it)."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from playwright import sync_api

from pipelines.passthrough import PassthroughPipeline

from browser import launch_chromium, open_page, write_y4m
from conftest import make_settings, serve_in_thread
from fake_pipelines import TintPipeline, prompt_color
from media import make_tone_file

pytestmark = pytest.mark.usefixtures("loopback_ice")


@pytest.fixture(scope="module")
def base_url():
    pipelines = {"tint": TintPipeline(), "passthrough": PassthroughPipeline()}
    with serve_in_thread(make_settings(stats_interval_s=0.5), lambda: pipelines) as url:
        yield url


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    folder = tmp_path_factory.mktemp("media")
    clip = write_y4m(folder / "clip.y4m")
    tone = make_tone_file(folder / "tone.wav", seconds=2.0)
    with sync_api.sync_playwright() as playwright:
        browser = launch_chromium(playwright, f"--use-file-for-fake-video-capture={clip}", f"--use-file-for-fake-audio-capture={tone}")
        yield browser
        browser.close()


def output_pixel(page) -> list[int]:
    """The centre pixel of the generated video as the page shows it."""
    return page.evaluate("""() => {
        const video = document.getElementById('output-video');
        const canvas = Object.assign(document.createElement('canvas'), {width: video.videoWidth, height: video.videoHeight});
        const context = canvas.getContext('2d');
        context.drawImage(video, 0, 0);
        return Array.from(context.getImageData(video.videoWidth >> 1, video.videoHeight >> 1, 1, 1).data);
    }""")


def test_demo_streams_over_webrtc_with_control_on_the_data_channel(base_url, browser):
    page, errors = open_page(browser, base_url + "/")
    page.wait_for_function("window.latentcast && window.latentcast.status === 'idle'", timeout=15_000)
    assert page.input_value("#transport") == "webrtc"
    page.check("#microphone")
    page.click("#start")
    page.wait_for_function("window.latentcast.framesReceived > 10", timeout=20_000)
    assert page.evaluate("window.latentcast.transport") == "webrtc"
    assert page.evaluate("window.latentcast.status") == "streaming"
    assert page.evaluate("window.latentcast.framesSent") == 0  # the camera goes on the track, not the socket

    page.fill("#param-prompt", "a lighthouse at dusk")
    page.wait_for_function("window.latentcast.lastAck && window.latentcast.lastAck.params.prompt === 'a lighthouse at dusk'",
                           timeout=10_000)
    received = page.evaluate("window.latentcast.framesReceived")
    page.wait_for_function(f"window.latentcast.framesReceived > {received + 10}", timeout=10_000)
    assert np.allclose(output_pixel(page)[:3], prompt_color("a lighthouse at dusk"), atol=16)

    # The microphone's tone comes back on the audio track.
    page.wait_for_function("""async () => {
        const stats = await window.latentcast.peer.getStats();
        return [...stats.values()].some(s => s.type === 'inbound-rtp' && s.kind === 'audio' && s.totalAudioEnergy > 0);
    }""", timeout=10_000)
    page.wait_for_function("window.latentcast.stats !== null", timeout=5_000)
    assert "fps" in page.inner_text("#stats")

    session_id = page.evaluate("window.latentcast.sessionId")
    player, player_errors = open_page(browser, f"{base_url}/player/{session_id}?background=transparent")
    player.wait_for_function("window.player.status === 'playing' && window.player.framesDecoded > 5", timeout=15_000)
    assert player.evaluate("getComputedStyle(document.body).backgroundColor") == "rgba(0, 0, 0, 0)"
    latest, _ = open_page(browser, f"{base_url}/player/latest")
    latest.wait_for_function(f"window.player.sessionId === '{session_id}' && window.player.framesDecoded > 3", timeout=15_000)

    assert errors == [] and player_errors == []

    page.click("#stop")
    page.wait_for_function("window.latentcast.status === 'stopped'", timeout=5_000)
    assert httpx.get(f"{base_url}/v1/sessions").json() == []
    player.wait_for_function("window.player.status === 'waiting'", timeout=10_000)  # and it keeps retrying
    for p in (page, player, latest):
        p.close()


def test_demo_falls_back_to_the_websocket(base_url, browser):
    page = browser.new_page()
    page.route("**/v1/webrtc/offer", lambda route: route.fulfill(status=503, json={"error": {"code": "busy", "message": "busy"}}))
    page.goto(base_url + "/")
    page.wait_for_function("window.latentcast && window.latentcast.status === 'idle'", timeout=15_000)
    page.click("#start")
    page.wait_for_function("window.latentcast.framesReceived > 5", timeout=20_000)
    assert page.evaluate("window.latentcast.transport") == "websocket"
    assert "WebRTC did not connect" in page.evaluate("window.latentcast.errors")[0]
    page.click("#stop")
    page.wait_for_function("window.latentcast.status === 'stopped'", timeout=5_000)
    page.close()
