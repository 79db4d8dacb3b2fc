"""The demo shows the OSC address of the session it streams, and a change sent there shows in its controls.

Sync Playwright in its own module with a module-scoped browser (as tests/test_browser_demo.py explains).
"""

from __future__ import annotations

import socket

import httpx
import pytest
from playwright import sync_api
from pythonosc.osc_message_builder import OscMessageBuilder

from browser import launch_chromium, open_page
from conftest import make_settings, serve_in_thread
from fake_pipelines import TintPipeline


@pytest.fixture(scope="module")
def base_url():
    with serve_in_thread(make_settings(osc_port=0, stats_interval_s=0.3), lambda: {"tint": TintPipeline()}) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = launch_chromium(playwright)  # Chromium's own fake camera: any picture will do here
        yield browser
        browser.close()


def test_the_demo_shows_the_sessions_osc_address_and_follows_what_is_sent_there(base_url, browser):
    port = httpx.get(f"{base_url}/v1/live-control").json()["osc"]["port"]
    page, console_errors = open_page(browser, base_url + "/?transport=websocket")
    page.wait_for_function("window.latentcast && window.latentcast.status === 'idle'", timeout=15_000)
    assert page.locator("#osc-address").is_hidden()

    page.click("#start")
    page.wait_for_function("!document.getElementById('osc-address').hidden", timeout=15_000)
    session_id = page.evaluate("window.latentcast.sessionId")
    address = f"/latentcast/session/{session_id}"
    assert page.get_attribute("#osc-address", "data-address") == address
    assert f"udp://127.0.0.1:{port}" in page.inner_text("#osc-address") and address in page.inner_text("#osc-address")

    builder = OscMessageBuilder(f"{address}/prompt")
    builder.add_arg("sent over OSC")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as controller:
        controller.sendto(builder.build().dgram, ("127.0.0.1", port))
    page.wait_for_function("document.getElementById('param-prompt').value === 'sent over OSC'", timeout=10_000)

    page.click("#stop")
    page.wait_for_function("document.getElementById('osc-address').hidden", timeout=5_000)
    assert console_errors == []
    page.close()
