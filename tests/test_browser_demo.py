"""The demo page in headless Chromium with a fake camera: it connects, generated frames arrive,
and a prompt change is acknowledged and shows in the picture.

Sync Playwright in its own module with a module-scoped browser (a session-scoped one breaks the
asyncio tests that run after it).
"""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from playwright import sync_api

from pipelines.passthrough import PassthroughPipeline

from browser import launch_chromium, open_page, write_y4m
from conftest import make_settings, serve_in_thread
from fake_pipelines import TintPipeline, prompt_color


@pytest.fixture(scope="module")
def base_url():
    pipelines = {"tint": TintPipeline(), "passthrough": PassthroughPipeline()}
    with serve_in_thread(make_settings(stats_interval_s=0.5), lambda: pipelines) as url:
        yield url


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    clip = write_y4m(tmp_path_factory.mktemp("camera") / "clip.y4m")
    with sync_api.sync_playwright() as playwright:
        browser = launch_chromium(playwright, f"--use-file-for-fake-video-capture={clip}")
        yield browser
        browser.close()


def test_demo_streams_the_camera_and_applies_a_prompt_change(base_url, browser):
    page, console_errors = open_page(browser, base_url + "/?transport=websocket")  # the WebSocket path (WebRTC is the default)
    page.wait_for_function("window.latentcast && window.latentcast.status === 'idle'", timeout=15_000)
    assert page.locator("#param-prompt").count() == 1 and page.locator("#param-strength").count() == 1

    page.click("#start")
    page.wait_for_function("window.latentcast.framesReceived > 5", timeout=15_000)
    assert page.evaluate("window.latentcast.status") == "streaming"

    page.fill("#param-prompt", "a lighthouse at dusk")
    page.wait_for_function("window.latentcast.lastAck && window.latentcast.lastAck.params.prompt === 'a lighthouse at dusk'",
                           timeout=10_000)
    assert page.evaluate("window.latentcast.lastAck.update_class") == "hot"
    received = page.evaluate("window.latentcast.framesReceived")
    page.wait_for_function(f"window.latentcast.framesReceived > {received + 3}", timeout=10_000)
    pixel = page.evaluate("Array.from(document.getElementById('output').getContext('2d').getImageData(32, 32, 1, 1).data)")
    assert np.allclose(pixel[:3], prompt_color("a lighthouse at dusk"), atol=12), pixel

    page.wait_for_function("window.latentcast.stats !== null", timeout=5_000)
    assert "fps" in page.inner_text("#stats") and "latency" in page.inner_text("#stats")
    # The temporal-consistency overlay: warp error and flicker against the input's, measured while streaming.
    page.wait_for_function("!document.getElementById('consistency').hidden", timeout=15_000)
    assert "warp error" in page.inner_text("#consistency") and "flicker" in page.inner_text("#consistency")

    # Another client changes a parameter over REST: the controls show what is in force (from the stats).
    session_id = page.evaluate("window.latentcast.sessionId")
    assert httpx.patch(f"{base_url}/v1/sessions/{session_id}", json={"params": {"strength": 0.25}}).status_code == 200
    page.wait_for_function("document.getElementById('param-strength').value === '0.25'", timeout=5_000)

    page.click("#stop")
    page.wait_for_function("window.latentcast.status === 'stopped'", timeout=5_000)
    assert console_errors == []
    page.close()
