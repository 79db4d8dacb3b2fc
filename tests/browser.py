"""Headless Chromium for the browser tests: Debian's chromium driven by Playwright (never
`playwright install`), with fake media devices and everything kept on loopback.

A missing chromium fails the browser tests instead of skipping them: a skip would let a run
without the browser pass unseen. `.ci/run` installs it; locally, `sudo apt-get install chromium`.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from playwright import sync_api

DEBIAN_CHROMIUM = "/usr/bin/chromium"

# Chromium keeps only the last --disable-features, so Playwright's own list is repeated with ours.
_FEATURES = re.compile(r"disabledFeatures = \[(.*?)\]", re.S)


def chromium_executable() -> str:
    found = DEBIAN_CHROMIUM if Path(DEBIAN_CHROMIUM).exists() else shutil.which("chromium")
    if found is None:
        pytest.fail("the browser tests need Debian's chromium: sudo apt-get install chromium (.ci/run installs it)",
                    pytrace=False)
    return found


def playwright_disabled_features() -> list[str]:
    bundle = Path(sync_api.__file__).parent.parent / "driver" / "package" / "lib" / "coreBundle.js"
    match = _FEATURES.search(bundle.read_text()) if bundle.exists() else None
    return re.findall(r'"(\w+)"', match.group(1)) if match else []


def launch_chromium(playwright, *fake_media: str, allow_media: bool = True):
    """Headless Chromium with fake media devices (their files as `--use-file-for-fake-…-capture=PATH` in
    `fake_media`), its WebRTC and name lookups kept on loopback (127.0.0.*: a local cluster's nodes are .2, .3).
    `allow_media=False`: the camera and microphone prompts are not answered yes (a user who denies them)."""
    features = ",".join([*playwright_disabled_features(), "WebRtcHideLocalIpsWithMdns"])
    return playwright.chromium.launch(executable_path=chromium_executable(), headless=True, args=[
        "--no-sandbox", "--disable-gpu", *(["--use-fake-ui-for-media-stream"] if allow_media else []), "--use-fake-device-for-media-stream",
        *fake_media, "--disable-background-networking", "--disable-component-update",
        "--allow-loopback-in-peer-connection", f"--disable-features={features}",
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.*",
    ])


def open_page(browser, url: str):
    """A new page at `url`, and the list its console errors, uncaught exceptions and failed
    responses go to (a failed response's console line does not say which URL failed: this does)."""
    page = browser.new_page()
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("response", lambda response: errors.append(f"{response.status} {response.request.method} {response.url}")
            if response.status >= 400 else None)
    page.goto(url)
    return page, errors


def write_y4m(path: Path, width: int = 160, height: int = 120, frames: int = 30, fps: int = 15) -> Path:
    """A 4:2:0 clip with a moving bar (Chromium's fake camera loops it)."""
    with path.open("wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for i in range(frames):
            luma = np.tile(np.linspace(16, 235, width, dtype=np.uint8), (height, 1))
            luma[:, (i * 5) % width:(i * 5) % width + 8] = 235
            out.write(b"FRAME\n" + luma.tobytes() + bytes([128]) * (width * height // 2))
    return path
