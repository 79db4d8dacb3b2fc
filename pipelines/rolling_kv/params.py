"""Parameters of one rolling-KV video stream, with bounds, and how each one is applied.

`update` in the schema extra (see `pipelines.base.UpdateClass`): `hot` changes apply at the next
chunk and keep the KV cache and the chunks in flight; `reset` changes rebuild the stream's cache
and empty its pipe.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_STEPS = 4
MAX_SIDE = 1280


def _hot(**kw):
    return Field(json_schema_extra={"update": "hot"}, **kw)


def _reset(**kw):
    return Field(json_schema_extra={"update": "reset"}, **kw)


class RollingKVParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["img2img", "txt2img"] = _reset(
        default="img2img",
        description="img2img: transform the input video (video-to-video); txt2img: generate from the prompt alone (text-to-video).")
    prompt: str = _hot(default="", max_length=2000, description="What to generate.")
    transition_chunks: int = _hot(
        default=3, ge=0, le=32, description="A new prompt blends in over this many chunks (0: at once).")
    seed: int = _hot(default=42, ge=0, lt=2**63, description="Seed of the injected and re-injected noise.")
    steps: int = _reset(default=2, ge=1, le=MAX_STEPS, description="Denoising steps per chunk (1-4).")
    strength: float = _hot(
        default=0.8, ge=0.2, le=1.0,
        description="img2img: noise level injected into the input (StreamDiffusionV2's noise_scale); higher changes more.")
    motion_aware: bool = _hot(
        default=True, description="img2img: inject less noise when the input moves fast (less tearing), smoothed over chunks.")
    kv_mode: Literal["stream-batch", "single-slot", "clean-context"] = _reset(
        default="stream-batch",
        description="stream-batch: one forward per chunk over all steps, a KV cache per step (latency: steps chunks); "
        "single-slot: the steps run one after another on one cache that keeps the last step's keys; "
        "clean-context: as single-slot plus one pass at t=0 so the cache keeps clean keys (CausVid).")
    chunk_latents: int = _reset(
        default=1, ge=1, le=4,
        description="Latent frames per chunk after the first (4 pictures each): longer chunks cost less per picture "
        "and add latency; the server may raise it under load when the SLO allows `chunk`.")
    kv_cache_frames: int = _reset(default=6, ge=3, le=64, description="Latent frames the KV cache holds, sinks included.")
    sink_frames: int = _reset(default=3, ge=0, le=60, description="Latent frames kept as attention sinks.")
    eviction: Literal["fifo", "adaptive-sink", "importance"] = _reset(
        default="fifo",
        description="fifo: ring over the rolling frames; adaptive-sink: a new frame unlike a sink replaces it; "
        "importance: evicted tokens that recent queries attend to most stay in a pool.")
    sink_refresh_threshold: float = _reset(
        default=0.2, ge=-1.0, le=1.0, description="adaptive-sink: similarity below which a sink is refreshed.")
    importance_pool_frames: int = _reset(
        default=1, ge=1, le=16, description="importance: size of the kept-token pool, in frames' worth of tokens.")
    positions: Literal["absolute", "periodic-reset", "cache-relative", "sink-realign"] = _reset(
        default="periodic-reset",
        description="Temporal RoPE positions: absolute; periodic-reset (StreamDiffusionV2); "
        "cache-relative (StreamingLLM); sink-realign (Deep Forcing).")
    reset_at: int = _reset(default=50, ge=2, le=100_000, description="periodic-reset: latent frame at which positions restart.")
    reset_to: int | None = _reset(
        default=None, ge=0, description="periodic-reset: where they restart (default: kv_cache_frames - 1).")
    width: int = _reset(default=64, ge=16, le=MAX_SIDE, multiple_of=16)
    height: int = _reset(default=64, ge=16, le=MAX_SIDE, multiple_of=16)
    fps: float = _hot(default=16.0, gt=0.0, le=240.0, description="txt2img: frame rate of the generated timestamps.")

    @model_validator(mode="after")
    def _check(self) -> RollingKVParams:
        if self.kv_cache_frames - self.sink_frames < 2:
            raise ValueError(
                f"kv_cache_frames ({self.kv_cache_frames}) must leave at least 2 rolling frames after "
                f"sink_frames ({self.sink_frames}): the first chunk is 2 latent frames")
        if self.window_frames < self.chunk_latents:
            raise ValueError(f"chunk_latents ({self.chunk_latents}) must fit the rolling window "
                             f"(kv_cache_frames - sink_frames = {self.window_frames})")
        if self.reset_to is not None and self.reset_to >= self.reset_at:
            raise ValueError(f"reset_to ({self.reset_to}) must be below reset_at ({self.reset_at})")
        return self

    @property
    def window_frames(self) -> int:
        return self.kv_cache_frames - self.sink_frames
