"""The demo's creative controls in headless Chromium with a fake camera, against the real
stream-diffusion pipeline (tiny preset) with a random ControlNet, LoRA and IP-Adapter loaded:
a preprocessor chosen before Start reaches the session and its control image shows beside the
input; a LoRA slider and an uploaded image prompt reach the parameters in force.

Sync Playwright, in its own module (as tests/test_browser_demo.py); one test, one browser.
"""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
from PIL import Image
from playwright import sync_api

from browser import launch_chromium, open_page, write_y4m
from conftest import make_settings, serve_in_thread


@pytest.fixture(scope="module")
def base_url():
    settings = make_settings(preset="tiny", device="cpu", engine="eager", pipelines=["stream-diffusion", "passthrough"],
                             controlnet=["edges=random"], lora=["ink=random"], ip_adapter="random", stats_interval_s=0.5)
    with serve_in_thread(settings) as url:
        yield url


def params_in_force(base_url: str, session_id: str) -> dict:
    return httpx.get(f"{base_url}/v1/sessions/{session_id}").json()["params"]


def test_creative_controls_reach_the_session_and_show_the_control_image(base_url, tmp_path):
    camera = write_y4m(tmp_path / "clip.y4m")
    with sync_api.sync_playwright() as playwright:
        browser = launch_chromium(playwright, f"--use-file-for-fake-video-capture={camera}")
        try:
            check_the_creative_controls(base_url, browser, tmp_path)
        finally:
            browser.close()


def check_the_creative_controls(base_url: str, browser, tmp_path) -> None:
    page, console_errors = open_page(browser, base_url + "/?transport=websocket")
    page.wait_for_function("window.latentcast && window.latentcast.status === 'idle'", timeout=15_000)
    page.wait_for_selector("#creative:not([hidden]) #controlnet-edges", timeout=15_000)
    assert page.locator("#creative .lora input[type=range]").count() == 1 and page.locator("#image-prompt-file").count() == 1

    page.select_option("#controlnet-edges", "canny")  # before Start: sent once the session runs
    page.evaluate("document.querySelector('#params details').open = true")  # the size is among 'more parameters'
    page.fill("#param-width", "64")
    page.fill("#param-height", "64")
    page.click("#start")
    page.wait_for_function("window.latentcast.framesReceived > 2", timeout=30_000)
    session_id = page.evaluate("window.latentcast.sessionId")
    page.wait_for_function("window.latentcast.creative.applied.length > 0", timeout=10_000)
    assert params_in_force(base_url, session_id)["controlnets"][0]["preprocessor"] == "canny"

    page.wait_for_function("window.latentcast.creative.previews > 1 && document.getElementById('control-image').naturalWidth > 0",
                           timeout=15_000)
    assert page.is_visible("#control-figure")
    assert page.evaluate("document.getElementById('control-figure').previousElementSibling.contains(document.getElementById('input'))")

    page.evaluate("""() => { const range = document.querySelector('#creative .lora input[type=range]');
                             range.value = '0.75'; range.dispatchEvent(new Event('input')); }""")
    page.wait_for_function("window.latentcast.creative.applied.some(r => r.params.loras.ink === 0.75)", timeout=10_000)
    assert params_in_force(base_url, session_id)["loras"] == {"ink": 0.75}

    picture = tmp_path / "prompt.png"
    pixels = np.zeros((600, 400, 3), np.uint8)
    pixels[::8] = (255, 128, 0)
    Image.fromarray(pixels).save(picture)
    page.set_input_files("#image-prompt-file", str(picture))
    page.wait_for_function("window.latentcast.creative.applied.some(r => (r.params.image_prompt || '').startsWith('sha256:'))",
                           timeout=10_000)
    assert params_in_force(base_url, session_id)["image_prompt"].startswith("sha256:")
    received = page.evaluate("window.latentcast.framesReceived")
    page.wait_for_function(f"window.latentcast.framesReceived > {received + 2}", timeout=15_000)  # still streaming
    assert page.evaluate("window.latentcast.creative.errors") == []
    assert console_errors == []
    preview = httpx.get(f"{base_url}/v1/sessions/{session_id}/pictures/control-0")
    assert Image.open(io.BytesIO(preview.content)).size == (64, 64)
