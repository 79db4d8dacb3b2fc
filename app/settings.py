"""One settings object for the server and the CLI.

Values come from, in increasing priority: defaults, `LATENTCAST_*` environment variables (or a
`.env` file), and command-line flags.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LATENTCAST_", env_file=".env", extra="ignore")

    host: str = Field("127.0.0.1", description="Address to bind. Anything but loopback requires an API token.")
    port: int = Field(8000, ge=0, le=65535)
    preset: str = Field("tiny", description="Model preset to load at startup (see `latentcast presets`).")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps.")
    dtype: str = Field("auto", description="auto (fp16 on GPU, fp32 on CPU), fp32, fp16 or bf16.")
    model_dir: Path | None = Field(None, description="Local folder with the preset's weights in diffusers layout.")
    random_weights: bool = Field(False, description="Build the preset's real architecture with random weights (speed tests).")
    api_token: SecretStr | None = Field(None, description="Bearer token required by every route when set.")
    max_sessions: int = Field(8, ge=1)
    session_idle_timeout_s: float = Field(60.0, gt=0)
    log_level: str = "info"


def load_settings(**overrides) -> Settings:
    """Settings from the environment with explicit (CLI) values on top; None means "not given"."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
