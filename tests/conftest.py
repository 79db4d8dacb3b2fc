"""Shared test helpers: a real server on 127.0.0.1 (free port), uvicorn in a thread."""

from __future__ import annotations

import os

# One compute thread for the whole suite and the processes it starts: on a 2-core machine,
# torch's OpenMP threads spin against the server threads (and any other process) and tiny
# models then run many times slower. Set before torch is imported anywhere.
os.environ["OMP_NUM_THREADS"] = "1"
# Servers and renders in the suite run eager PyTorch unless a test picks an engine: the CPU's
# default (ONNX Runtime) exports each new picture size once, 10-20 s here, and the engines have
# their own tests (test_engines.py, test_video_vae_engine.py, test_lora.py) that choose them.
os.environ.setdefault("LATENTCAST_ENGINE", "eager")

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager

import pytest
import uvicorn

from app.context import ServerContext
from app.serve import uvicorn_config
from app.server import create_app
from app.settings import Settings
from pipelines.base import Pipeline


def make_settings(**overrides) -> Settings:
    """Settings for a test server: no .env, no warm-up, quiet logs, then the test's own values."""
    return Settings(_env_file=None, **{"warmup": False, "log_level": "warning", **overrides})


@contextmanager
def serve_in_thread(settings: Settings, load_pipelines: Callable[[], Mapping[str, Pipeline]] | None = None,
                    wait_loaded: bool = True) -> Iterator[str]:
    """Run the real app on a free port; yields its base URL once it listens and (unless told
    not to wait) the pipelines are loaded."""
    with serve_app_in_thread(settings, load_pipelines, wait_loaded) as (url, _):
        yield url


@contextmanager
def serve_app_in_thread(settings: Settings, load_pipelines: Callable[[], Mapping[str, Pipeline]] | None = None,
                        wait_loaded: bool = True) -> Iterator[tuple[str, ServerContext]]:
    """`serve_in_thread` for tests that also look inside: yields the base URL and the server's context."""
    app = create_app(settings, load_pipelines)
    server = uvicorn.Server(uvicorn_config(app, settings, port=0))
    thread = threading.Thread(target=server.run, name="test-server", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while not (server.started and (app.state.context.worker.finished_loading.is_set() or not wait_loaded)):
            if time.monotonic() > deadline or not thread.is_alive():
                raise TimeoutError("test server did not start")
            time.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}", app.state.context
    finally:
        server.should_exit = True
        thread.join(15)


@pytest.fixture
def server_factory() -> Iterator[Callable[..., str]]:
    """Start servers inside a test: `base_url = server_factory({"name": pipeline}, max_sessions=2)`
    (or a loader function instead of the mapping)."""
    with ExitStack() as stack:
        def start(pipelines: Mapping[str, Pipeline] | Callable[[], Mapping[str, Pipeline]], wait_loaded: bool = True, **overrides) -> str:
            load = pipelines if callable(pipelines) else lambda: pipelines
            return stack.enter_context(serve_in_thread(make_settings(**overrides), load, wait_loaded))

        yield start


@pytest.fixture(scope="module")
def loopback_ice() -> Iterator[None]:
    """WebRTC peers in a test module gather only 127.0.0.1 candidates (nothing leaves the machine);
    modules that use aiortc ask for it with `pytestmark = pytest.mark.usefixtures("loopback_ice")`."""
    from streaming.webrtc.loopback import loopback_only_ice

    with loopback_only_ice():
        yield


@pytest.fixture(scope="module")
def speech_models():
    """The real speech models, from their packages, loaded once per test module."""
    from models.speech.bundle import load_speech_models

    models = load_speech_models()
    yield models
    models.close()


@pytest.fixture(scope="module")
def user_voice():
    """A simulated user's voice: espeak-ng's, so it is never confused with the bot's Piper voice."""
    from models.speech.tts_espeak import EspeakSynthesizer

    return EspeakSynthesizer(voice="en-us", words_per_minute=150)
