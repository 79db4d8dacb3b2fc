"""What a new user meets in the demo, in headless Chromium with a fake camera and microphone:
the style picker (thumbnails rendered by the embedded style model itself), the model's warning
about a prompt outside its vocabulary, fps and latency on both transports (below 1 fps too), a
note when the machine cannot make the rate asked, the last frames kept after Stop, snapshot,
recording (with audio), full screen, the hint when the camera is denied, and /docs offline.

Sync Playwright in its own module with a module-scoped browser (as tests/test_browser_demo.py).
"""

from __future__ import annotations

import io
import re

import httpx
import numpy as np
import pytest
from PIL import Image
from playwright import sync_api

from pipelines.passthrough import PassthroughPipeline
from pipelines.registry import ModelOptions, load_pipeline

from browser import launch_chromium, open_page, write_y4m
from conftest import make_settings, serve_in_thread
from fake_pipelines import TintPipeline

SLOW_STEP_S = 2.5  # one step of the "slow" pipeline: 0.4 fps


@pytest.fixture(scope="module")
def base_url():
    style = load_pipeline("stream-diffusion", ModelOptions(preset="style", engine="eager"))
    pipelines = {"stream-diffusion": style, "tint": TintPipeline(), "slow": TintPipeline("slow", delay_s=SLOW_STEP_S),
                 "passthrough": PassthroughPipeline()}
    with serve_in_thread(make_settings(stats_interval_s=0.5), lambda: pipelines) as url:
        yield url


@pytest.fixture(scope="module")
def playwright():
    with sync_api.sync_playwright() as playwright:
        yield playwright


@pytest.fixture(scope="module")
def browser(playwright, tmp_path_factory):
    clip = write_y4m(tmp_path_factory.mktemp("camera") / "clip.y4m")
    browser = launch_chromium(playwright, f"--use-file-for-fake-video-capture={clip}")
    yield browser
    browser.close()


def open_demo(browser, url: str, pipeline: str, transport: str = "websocket"):
    page, errors = open_page(browser, url)
    page.wait_for_function("window.latentcast && window.latentcast.status === 'idle'", timeout=30_000)
    page.select_option("#pipeline", pipeline)
    page.select_option("#transport", transport)
    return page, errors


def png_pixels(data: bytes) -> np.ndarray:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float32)


def test_style_picker_shows_the_models_own_renderings_and_a_pick_becomes_the_prompt(base_url, browser):
    page, errors = open_demo(browser, base_url + "/", "stream-diffusion")
    assert page.is_visible("#styles")
    names = page.eval_on_selector_all("#style-list .style", "buttons => buttons.map(b => b.dataset.prompt)")
    assert names == ["pencil sketch", "thermal camera", "neon edges", "watercolor", "oil painting"]
    page.wait_for_function("[...document.querySelectorAll('#style-list img')].every(i => i.complete && i.naturalWidth === 128)",
                           timeout=60_000)
    # Each thumbnail is the model's own output on the sample picture: unlike the sample, and unlike each other.
    pipeline = httpx.get(base_url + "/v1/pipelines").json()["pipelines"][0]
    sample = png_pixels(httpx.get(f"{base_url}/{pipeline['sample_thumbnail']}").content)
    thumbnails = [png_pixels(httpx.get(f"{base_url}/{style['thumbnail']}").content) for style in pipeline["styles"]]
    for k, thumbnail in enumerate(thumbnails):
        assert np.abs(thumbnail - sample).mean() > 8, pipeline["styles"][k]["prompt"]
        for other in thumbnails[k + 1:]:
            assert np.abs(thumbnail - other).mean() > 8

    page.click("#start")
    page.wait_for_function("window.latentcast.framesReceived > 3", timeout=60_000)
    page.click("#style-list .style[data-prompt='thermal camera']")
    page.wait_for_function("window.latentcast.lastAck?.params.prompt === 'thermal camera'", timeout=15_000)
    assert page.input_value("#param-prompt") == "thermal camera"
    assert page.get_attribute("#style-list .style[data-prompt='thermal camera']", "class") == "style chosen"
    page.click("#stop")
    page.wait_for_function("window.latentcast.status === 'stopped'", timeout=10_000)
    assert errors == []
    page.close()


def test_a_prompt_outside_the_style_models_vocabulary_is_warned_and_the_warning_goes_with_it(base_url, browser):
    page, errors = open_demo(browser, base_url + "/", "stream-diffusion")
    page.click("#start")
    page.wait_for_function("window.latentcast.status === 'streaming'", timeout=60_000)
    assert page.is_hidden("#notes")  # the default prompt is a style the model knows
    page.fill("#param-prompt", "a cyberpunk city at night")
    page.wait_for_selector("#notes li", timeout=15_000)
    notes = page.inner_text("#notes")
    assert "does not know 'cyberpunk', 'at', 'night'" in notes and "none of the styles" in notes
    page.click("#style-list .style[data-prompt='neon edges']")
    page.wait_for_function("window.latentcast.lastAck?.params.prompt === 'neon edges'", timeout=15_000)
    assert page.is_hidden("#notes")
    page.click("#stop")
    assert errors == []
    page.close()


def test_webrtc_shows_latency_and_after_stop_both_panels_keep_their_last_frame(base_url, browser):
    page, errors = open_demo(browser, base_url + "/", "tint", transport="webrtc")
    page.click("#start")
    page.wait_for_function("window.latentcast.transport === 'webrtc' && window.latentcast.latencyMs.length > 10", timeout=30_000)
    latencies = page.evaluate("window.latentcast.latencyMs")
    assert 0 < np.median(latencies) < 5000, latencies
    page.wait_for_function("/latency \\d+ ms/.test(document.getElementById('stats').textContent)", timeout=5_000)

    page.click("#stop")
    page.wait_for_function("window.latentcast.status === 'stopped'", timeout=10_000)
    page.wait_for_timeout(500)  # the tracks have ended: a <video> would be black by now
    for video, still in (("#output-video", "#output"), ("#input", "#input-still")):
        assert page.is_hidden(video) and page.is_visible(still)
        pixels = page.evaluate(f"""(() => {{ const c = document.querySelector('{still}');
            return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data); }})()""")
        assert np.asarray(pixels).reshape(-1, 4)[:, :3].mean() > 20, still  # a picture, not black
    assert errors == []
    page.close()


def test_snapshot_record_with_audio_and_fullscreen(base_url, browser):
    page, errors = open_demo(browser, base_url + "/", "tint", transport="webrtc")
    page.check("#microphone")  # Chromium's fake microphone beeps: the server sends the audio back with the video
    page.click("#start")
    page.wait_for_function("window.latentcast.framesReceived > 10", timeout=30_000)

    with page.expect_download() as snapshot:
        page.click("#snapshot")
    picture = png_pixels(open(snapshot.value.path(), "rb").read())
    assert picture.shape[0] > 0 and picture.mean() > 20 and snapshot.value.suggested_filename.endswith(".png")

    page.wait_for_function("document.getElementById('output-video').srcObject?.getAudioTracks().length === 1", timeout=10_000)
    page.click("#record")
    assert page.inner_text("#record") == "Stop recording"
    page.wait_for_timeout(2500)
    with page.expect_download() as recording:
        page.click("#record")
    data = open(recording.value.path(), "rb").read()
    assert data[:4] == b"\x1a\x45\xdf\xa3" and len(data) > 5000  # a WebM (EBML) file with something in it
    assert sorted(page.evaluate("window.latentcast.recording.tracks")) == ["audio", "video"]
    assert "opus" in page.evaluate("window.latentcast.recording.mimeType")

    page.click("#fullscreen")
    page.wait_for_function("document.fullscreenElement?.id === 'output-figure'", timeout=5_000)
    page.keyboard.press("Escape")
    page.evaluate("document.fullscreenElement && document.exitFullscreen()")
    page.click("#stop")
    assert errors == []
    page.close()


def test_a_slow_machine_shows_fps_below_one_and_says_the_rate_cannot_be_met(base_url, browser):
    page, errors = open_demo(browser, base_url + "/", "slow")
    page.fill("#fps", "30")
    page.click("#start")
    page.wait_for_function("window.latentcast.framesReceived >= 3", timeout=30_000)
    page.wait_for_function("window.latentcast.speedNote !== null", timeout=15_000)
    assert re.search(r"out 0\.[2-6]\d fps", page.inner_text("#stats")), page.inner_text("#stats")
    assert 0.25 < page.evaluate("window.latentcast.fpsOut") < 0.6
    note = page.inner_text("#speed-note")
    assert note.startswith("This machine makes about 0.") and re.search(r"below the \d+\.\d fps (asked|the input brings)", note), note
    assert "lower the size or the steps" in note
    page.click("#stop")
    assert errors == []
    page.close()


def test_a_denied_camera_gets_a_hint_that_says_how_to_allow_it(base_url, playwright):
    denying = launch_chromium(playwright, allow_media=False)  # no one answers the permission prompt: denied
    try:
        page, _ = open_demo(denying, base_url + "/", "tint")
        page.click("#start")
        page.wait_for_function("window.latentcast.status === 'error'", timeout=15_000)
        assert page.is_visible("#capture-hint")
        hint = page.inner_text("#capture-hint")
        assert "blocked the camera" in hint and "press Start again" in hint and "screen" in hint
    finally:
        denying.close()


def test_api_docs_work_offline_from_the_servers_own_files(base_url, browser):
    html = httpx.get(base_url + "/docs").text
    assert not re.search(r"(src|href)=\"https?://", html), html
    page = browser.new_page()
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(base_url + "/docs")
    page.wait_for_selector(".swagger-ui .info .title", timeout=15_000)
    assert "latentcast" in page.inner_text(".swagger-ui .info .title")
    page.wait_for_selector(".opblock-summary-path[data-path='/v1/sessions']", timeout=5_000)
    assert [url for url in requests if not url.startswith(base_url) and not url.startswith("data:")] == []
    page.close()
