"""What a new user's mistakes cost at the command line: the real `latentcast` CLI in a subprocess,
with no network to the model hub (its address is a closed port on loopback, so the tests say
the same on a machine that has network). Every user error is one line on stderr, status 2, no
traceback, and is found before any model loads.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import constants

from models.loading import check_hub_weights, hub_offline_reason


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # nothing listens on it once the socket is closed


@pytest.fixture(scope="module")
def offline_env(tmp_path_factory) -> dict[str, str]:
    """No network to the hub and an empty hub cache; HF_HUB_OFFLINE unset, as on a fresh machine."""
    home = tmp_path_factory.mktemp("hf-home")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "LATENTCAST_"))}
    return {**env, "HF_HOME": str(home), "HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}"}


def latentcast(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    # The installed entry point, as a user runs it (`python -m app.cli` would load app.cli twice).
    return subprocess.run([str(Path(sys.executable).parent / "latentcast"), *args], env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=Path(__file__).parent.parent)


def assert_one_line_error(result: subprocess.CompletedProcess, command: str, *words: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"latentcast {command}: error: "), lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


@pytest.mark.parametrize("command", ["serve", "render"])
def test_a_hub_preset_without_network_says_so_and_the_ways_out(offline_env, command, tmp_path):
    args = ["--port", "0"] if command == "serve" else ["--frames", "2", "-o", str(tmp_path / "out.mp4")]
    result = latentcast(offline_env, command, "--preset", "sd-turbo", *args)
    line = assert_one_line_error(result, command, "stabilityai/sd-turbo", "no network", "hub cache", "--model-dir", "style")
    assert "config.json" not in line  # the old, misleading cause
    assert not (tmp_path / "out.mp4").exists()


def test_serve_with_a_missing_model_dir_is_one_line(offline_env):
    assert_one_line_error(latentcast(offline_env, "serve", "--model-dir", "/nonexistent/models", "--port", "0"), "serve",
                          "--model-dir /nonexistent/models", "no such folder")


def test_render_refuses_a_bad_width_before_it_looks_for_the_model(offline_env, tmp_path):
    # sd-turbo cannot load here: the width error coming first shows the width is checked before any model.
    result = latentcast(offline_env, "render", "--preset", "sd-turbo", "--frames", "2", "--width", "100", "--height", "96",
                        "-o", str(tmp_path / "out.mp4"))
    assert_one_line_error(result, "render", "--width must be a multiple of 8")
    result = latentcast(offline_env, "render", "--frames", "2", "--width", "100", "--height", "96", "-o", str(tmp_path / "out.mp4"))
    assert "Loading weights" not in result.stderr  # the style model's loader prints this: it never ran
    assert_one_line_error(result, "render", "--width must be a multiple of 8")


@pytest.mark.parametrize(("args", "words"), [
    (["serve", "--engine", "bogus"], ["--engine", "unknown engine 'bogus'"]),
    (["serve", "--port", "99999"], ["--port", "65535"]),
    (["serve", "--threads", "0"], ["--threads", "greater than or equal to 1"]),
    (["serve", "--pipelines", "nope"], ["unknown pipeline 'nope'"]),
    (["render", "--frames", "2", "-o", "out.mp4", "--engine", "bogus"], ["engine", "bogus"]),
])
def test_bad_flag_values_are_one_line(offline_env, args, words):
    assert_one_line_error(latentcast(offline_env, *args), args[0], *words)


def test_without_network_a_preset_in_the_hub_cache_loads_from_it(monkeypatch, tmp_path):
    """The offline check does not refuse what the hub cache holds: it tells the loader to read the cache alone."""
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    assert "cannot be reached" in hub_offline_reason()
    repo = tmp_path / "models--someone--weights"
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    assert check_hub_weights("some-preset", ["someone/weights"]) is True
    with pytest.raises(ValueError, match="someone/other"):
        check_hub_weights("some-preset", ["someone/weights", "someone/other"])
