"""docs/first-app.md's two clients, run as the page shows them, against a real server with the
embedded style model: the Python one in a subprocess, the browser one in Chromium with a fake
camera. Only the server's address is changed (the page says 127.0.0.1:8000).
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright import sync_api

from models.training.scenes import procedural_scene
from pipelines.registry import ModelOptions, load_pipeline

from browser import launch_chromium, write_y4m
from conftest import make_settings, serve_in_thread

ROOT = Path(__file__).parent.parent
PAGE = (ROOT / "docs" / "first-app.md").read_text()
DOC_ADDRESS = "127.0.0.1:8000"


def code_block(language: str) -> str:
    (block,) = re.findall(rf"```{language}\n(.*?)```", PAGE, re.S)
    return block


@pytest.fixture(scope="module")
def base_url():
    style = load_pipeline("stream-diffusion", ModelOptions(preset="style", engine="eager"))
    with serve_in_thread(make_settings(), lambda: {"stream-diffusion": style}) as url:
        yield url


def test_the_pages_clients_are_as_short_as_it_says():
    assert len(code_block("python").strip().splitlines()) <= 13  # ten lines of code, plus blank lines
    script = code_block("html").split("<script", 1)[1].split("\n", 1)[1].split("</script>")[0]
    assert len(script.strip().splitlines()) <= 20  # twenty lines of script between the tags


def test_the_python_client_restyles_a_photo(base_url, tmp_path):
    source = code_block("python")
    assert DOC_ADDRESS in source
    (tmp_path / "first_app.py").write_text(source.replace(DOC_ADDRESS, base_url.removeprefix("http://")))
    photo = (procedural_scene(np.random.default_rng(1), 320) * 255).astype(np.uint8)
    Image.fromarray(photo).save(tmp_path / "photo.jpg")
    result = subprocess.run([sys.executable, "first_app.py"], cwd=tmp_path, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    sketch = np.asarray(Image.open(tmp_path / "sketch.png").convert("RGB"), dtype=np.float32)
    assert sketch.shape == (256, 256, 3)
    photo_at_size = np.asarray(Image.fromarray(photo).resize((256, 256)), dtype=np.float32)
    assert np.abs(sketch - photo_at_size).mean() > 10  # restyled, not handed back


def test_the_browser_client_restyles_the_camera(base_url, tmp_path):
    (tmp_path / "first-app.html").write_text(code_block("html").replace(DOC_ADDRESS, base_url.removeprefix("http://")))
    clip = write_y4m(tmp_path / "clip.y4m")
    # The page comes from a local web server of its own, as the doc says (`python3 -m http.server`).
    files = ThreadingHTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(tmp_path)))
    threading.Thread(target=files.serve_forever, daemon=True).start()
    page_url = f"http://127.0.0.1:{files.server_address[1]}/first-app.html"
    with files, sync_api.sync_playwright() as playwright:
        browser = launch_chromium(playwright, f"--use-file-for-fake-video-capture={clip}")
        try:
            page = browser.new_page()
            messages: list[str] = []
            errors: list[str] = []
            page.on("console", lambda message: messages.append(f"{message.type}: {message.text}"))
            page.on("pageerror", lambda error: errors.append(str(error)))
            failed: list[str] = []  # the file server has no favicon, which the browser asks for: not the page's fault
            page.on("response", lambda response: failed.append(response.url) if response.status >= 400 and
                    not response.url.endswith("/favicon.ico") else None)
            page.goto(page_url)
            sources = set()
            for _ in range(40):
                page.wait_for_timeout(250)
                sources.add(page.get_attribute("#out", "src"))
                if len(sources - {None}) >= 4:
                    break
            assert len(sources - {None}) >= 4, messages  # generated pictures keep coming
            assert page.evaluate("document.getElementById('out').naturalWidth") == 256
            assert any('"type": "started"' in m or '"type":"started"' in m for m in messages), messages
            assert errors == [] and failed == []
            assert not [m for m in messages if m.startswith("error") and "Failed to load resource" not in m], messages
        finally:
            browser.close()
            files.shutdown()
