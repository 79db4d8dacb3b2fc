"""One settings object for the server and the CLI.

Values come from, in increasing priority: defaults, `LATENTCAST_*` environment variables (or a
`.env` file), and command-line flags.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from models.engines.kinds import EngineChoice
from pipelines.registry import ModelOptions

if TYPE_CHECKING:  # loading it means torch: the CLI's settings stay light
    from models.control.registry import ControlSpec


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LATENTCAST_", env_file=".env", extra="ignore")

    host: str = Field("127.0.0.1", description="Address to bind. Anything but loopback requires an API token.")
    port: int = Field(8000, ge=0, le=65535)
    preset: str | None = Field(None, description="Model preset (see `latentcast presets`); it also picks the default "
                               "pipeline. Unset: each pipeline's default (stream-diffusion: style, rolling-kv-video: tiny-video).")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps.")
    dtype: str = Field("auto", description="auto (fp16 on GPU, fp32 on CPU), fp32, fp16 or bf16.")
    model_dir: Path | None = Field(None, description="Local folder with the weights of --preset (diffusers layout).")
    random_weights: bool = Field(False, description="Build the preset's real architecture with random weights (speed tests).")
    api_token: SecretStr | None = Field(None, description="Bearer token required by every route when set.")
    max_sessions: int = Field(8, ge=1, description="Admission control: more sessions are refused as busy.")
    max_sessions_per_token: int = Field(4, ge=1, description="Sessions one short-lived (browser) token may hold at once; "
                                        "the API token is bounded by max_sessions only.")
    session_idle_timeout_s: float = Field(60.0, gt=0)
    log_level: str = "info"
    pipelines: list[str] | None = Field(
        None, description="Pipelines `serve` loads, as `name` or `name:preset`; the first is the default. "
        "Unset: the pipeline of --preset (stream-diffusion without one) and passthrough.")
    threads: int | None = Field(None, ge=1, description="CPU threads for model compute; unset: OMP_NUM_THREADS, else the "
                                "usable cores of this machine minus one (at least 1), logged at start.")
    engine: str = Field("auto", description="What runs each model component: auto (per device), eager, compile, onnx, "
                        "tensorrt, or per component (unet=compile,vae=onnx). See docs/engines.md.")
    engine_cache: Path | None = Field(None, description="Folder of built engines (default: ~/.cache/latentcast/engines).")
    warmup: bool = Field(True, description="Run each pipeline once at startup so the first client does not pay for it.")
    max_batch: int = Field(16, ge=1, description="Most streams one batched step serves.")
    stage_devices: list[str] | None = Field(
        None, description="Split every pipeline that declares stages across these devices, one process each "
        "(cuda:0,cuda:1; cpu,cpu to try it on a CPU). Unset: each pipeline runs whole in this process. See docs/scheduler.md.")
    max_message_bytes: int = Field(16 * 2**20, ge=1024, description="Largest WebSocket message accepted.")
    max_control_bytes: int = Field(64 * 2**10, ge=256, description="Largest JSON control message accepted.")
    max_frame_width: int = Field(2048, ge=16)
    max_frame_height: int = Field(2048, ge=16)
    allowed_formats: list[str] = Field(["jpeg", "webp", "rgb24"], description="Input picture formats accepted on the stream.")
    audio_buffer_s: float = Field(2.0, gt=0, description="Audio a session may queue before chunks are refused.")
    stats_interval_s: float = Field(1.0, gt=0, description="How often a stream is sent a `stats` message.")
    webrtc_connect_timeout_s: float = Field(30.0, gt=0, description="An answered WebRTC, WHIP or WHEP offer whose peer has not "
                                            "connected by then is given up, with what it held.")
    browser_token_ttl_s: float = Field(900.0, gt=0, description="Lifetime of the short-lived tokens given to browsers.")
    # Creative controls of stream-diffusion (docs/control.md).
    controlnet: list[str] | None = Field(None, description="ControlNets to load, NAME=SOURCE (hub id, folder, or random).")
    lora: list[str] | None = Field(None, description="LoRAs to load at start, NAME=SOURCE (file, folder, hub id, or random).")
    lora_dir: Path | None = Field(None, description="Folder of LoRA files a stream may load on request, by file name.")
    ip_adapter: str | None = Field(None, description="IP-Adapter to load: a file, owner/repo/path on the hub, or random.")
    # Live control (docs/live-control.md; the `live` extra): both off unless a port is given.
    osc_port: int | None = Field(None, ge=0, le=65535, description="UDP port of the OSC listener (0 picks a free one); unset: no OSC.")
    osc_host: str = Field("127.0.0.1", description="Address the OSC listener binds. OSC is unauthenticated: keep it local "
                          "unless the network is yours.")
    osc_require_session_id: bool | None = Field(
        None, description="Take OSC only at /latentcast/session/<id>/... (the id is the secret) and answer only messages "
        "that name a running session. Unset: required when the listener is bound off loopback.")
    midi_port: str | None = Field(None, description="MIDI input: a port name (or a unique prefix), virtual:NAME, or tcp:HOST:PORT.")
    midi_map: Path | None = Field(None, description="The MIDI mapping file (TOML) --midi-port needs.")


    @field_validator("engine")
    @classmethod
    def _known_engine(cls, value: str) -> str:
        return str(EngineChoice.parse(value))  # a misspelt engine or component fails at start, with the choices

    @field_validator("controlnet", "lora")
    @classmethod
    def _named_sources(cls, value: list[str] | None) -> list[str] | None:
        for entry in value or []:
            name, _, source = entry.partition("=")
            if not name or not source:
                raise ValueError(f"give NAME=SOURCE, got {entry!r}")
        return value

    def model_options(self, preset: str | None, model_dir: Path | None = None) -> ModelOptions:
        return ModelOptions(preset=preset, device=self.device, dtype=self.dtype, model_dir=model_dir,
                            random_weights=self.random_weights, threads=self.threads, engine=self.engine,
                            engine_cache=self.engine_cache, controls=self.control_spec())

    def control_spec(self) -> ControlSpec | None:
        """What --controlnet/--lora/--lora-dir/--ip-adapter ask to load (models.control.registry.ControlSpec), or None."""
        if not (self.controlnet or self.lora or self.lora_dir or self.ip_adapter):
            return None
        from models.control.registry import ControlSpec

        pairs = lambda entries: dict(e.split("=", 1) for e in entries or [])  # noqa: E731
        return ControlSpec(controlnets=pairs(self.controlnet), loras=pairs(self.lora), lora_dir=self.lora_dir, ip_adapter=self.ip_adapter)


def load_settings(**overrides) -> Settings:
    """Settings from the environment with explicit (CLI) values on top; None means "not given"."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
