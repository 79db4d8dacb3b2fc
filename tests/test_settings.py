"""One settings object: defaults, then LATENTCAST_* environment variables, then CLI flags."""

import subprocess
import sys

from app.cli import build_parser, settings_from_args
from app.settings import load_settings


def test_environment_overrides_defaults_and_flags_override_environment(monkeypatch):
    monkeypatch.setenv("LATENTCAST_PRESET", "sd-turbo")
    monkeypatch.setenv("LATENTCAST_PORT", "9001")
    monkeypatch.setenv("LATENTCAST_RANDOM_WEIGHTS", "true")
    from_env = load_settings()
    assert (from_env.preset, from_env.port, from_env.random_weights) == ("sd-turbo", 9001, True)

    args = build_parser().parse_args(["render", "in.mp4", "-o", "out.mp4", "--preset", "tiny", "--dtype", "fp16"])
    settings = settings_from_args(args)
    assert settings.preset == "tiny"  # the flag wins
    assert settings.dtype == "fp16"
    assert settings.port == 9001 and settings.random_weights is True  # not given as flags: environment


def test_presets_command_lists_every_preset():
    out = subprocess.run([sys.executable, "-m", "app.cli", "presets"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    for name in ("tiny", "sd-turbo", "sdxl-turbo", "sd15-lcm", "tiny-video", "wan-causal-1.3b"):
        assert f"\n{name} " in "\n" + out.stdout
    assert "madebyollin/taesd" in out.stdout
