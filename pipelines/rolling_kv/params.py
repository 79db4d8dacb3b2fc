"""Parameters of one rolling-KV video stream, with bounds, and how each one is applied.

`update` in the schema extra (see `pipelines.base.UpdateClass`): `hot` changes apply at the next
chunk and keep the KV cache and the chunks in flight; `reset` changes rebuild the stream's cache
and empty its pipe.

The steps a chunk runs are the first `steps` of the mode's step list (`v2v_timesteps`,
`t2v_timesteps`; a preset sets its family's), as upstream's `--step N` keeps the first N of its
config's list. `steps` is normalised against the list in force: a request that names a shorter
list (or a mode whose list is shorter) without naming `steps` lowers `steps` to the list's
length; naming both when they disagree is an error.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, model_validator

from pipelines.base import requested_fields

MAX_STEPS = 4
MAX_SIDE = 1280
MAX_TIMESTEP = 1000.0


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
    steps: int = _reset(default=2, ge=1, le=MAX_STEPS, description="Denoising steps per chunk (1-4): the first `steps` "
                        "timesteps of the mode's step list.")
    v2v_timesteps: list[float] = _reset(
        default=[700.0, 500.0, 400.0, 200.0], min_length=1, max_length=MAX_STEPS,
        description="img2img step list (decreasing, in (0, 1000]): the first is the first chunk's first step, replaced "
        "from the second chunk on by the motion-aware noise level's timestep; the rest run as listed.")
    t2v_timesteps: list[float] = _reset(
        default=[1000.0, 750.0, 500.0, 250.0], min_length=1, max_length=MAX_STEPS,
        description="txt2img step list (decreasing, in [0, 1000]; a last 0 is a clean pass whose keys the cache keeps).")
    strength: float = _hot(
        default=0.8, ge=0.2, le=1.0,
        description="img2img: noise level injected into the input (StreamDiffusionV2's noise_scale); higher changes more.")
    motion_aware: bool = _hot(
        default=True, description="img2img: inject less noise when the input moves fast (less tearing), smoothed over chunks.")
    kv_mode: Literal["stream-batch", "single-slot", "clean-context"] = _reset(
        default="stream-batch",
        description="stream-batch: one forward per chunk over all steps, a KV cache per step (latency: steps chunks); "
        "single-slot: the steps run one after another on one cache (see step_rewrite); "
        "clean-context: as single-slot plus one pass at t=0 so the cache keeps clean keys (CausVid, Self-Forcing).")
    step_rewrite: Literal["same-slot", "next-slot"] = _reset(
        default="same-slot",
        description="single-slot: where a chunk's later steps write their keys once the cache is full. same-slot: the "
        "chunk's own slot (the cache keeps every chunk's last step); next-slot: the next ring slot, as StreamDiffusionV2's "
        "inference_wo_batch does (past chunks keep their first step's keys, the newest is held twice).")
    first_chunk_latents: int = _reset(
        default=2, ge=1, le=8,
        description="Latent frames of a stream's first chunk (1 + 4(n-1) pictures): 2 for StreamDiffusionV2 (5 pictures), "
        "3 for the 3-frame blocks of Self-Forcing and CausVid (9 pictures).")
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
    def _check(self, info: ValidationInfo) -> RollingKVParams:
        for name in ("v2v_timesteps", "t2v_timesteps"):
            listed = getattr(self, name)
            low = 0.0 if name == "t2v_timesteps" else 1.0
            if any(not low <= t <= MAX_TIMESTEP for t in listed) or any(b >= a for a, b in zip(listed, listed[1:])):
                raise ValueError(f"{name} must be strictly decreasing timesteps in [{low:g}, {MAX_TIMESTEP:g}], got {listed}")
        self._normalise_steps(requested_fields(self, info))
        if self.kv_cache_frames - self.sink_frames < 2:
            raise ValueError(
                f"kv_cache_frames ({self.kv_cache_frames}) must leave at least 2 rolling frames after sink_frames ({self.sink_frames})")
        if self.window_frames < self.chunk_latents:
            raise ValueError(f"chunk_latents ({self.chunk_latents}) must fit the rolling window "
                             f"(kv_cache_frames - sink_frames = {self.window_frames})")
        if self.kv_cache_frames < self.first_chunk_latents:
            raise ValueError(f"kv_cache_frames ({self.kv_cache_frames}) must hold the first chunk ({self.first_chunk_latents} latent frames)")
        if self.reset_to is not None and self.reset_to >= self.reset_at:
            raise ValueError(f"reset_to ({self.reset_to}) must be below reset_at ({self.reset_at})")
        if self.step_rewrite == "next-slot" and self.kv_mode == "single-slot":
            if self.chunk_latents != 1:
                raise ValueError("step_rewrite next-slot is StreamDiffusionV2's single-slot loop: it writes one latent frame "
                                 f"per chunk (chunk_latents 1, got {self.chunk_latents})")
            if self.positions not in ("absolute", "periodic-reset"):
                raise ValueError(f"step_rewrite next-slot keeps a chunk's keys twice at one position: it needs positions "
                                 f"absolute or periodic-reset, got {self.positions}")
        return self

    def _normalise_steps(self, requested: set[str]) -> None:
        """`steps` at most the length of the mode's step list (see the module docstring).
        Assigned through __dict__: the value is validated, and assigning would mark it as given."""
        listed = self.v2v_timesteps if self.mode == "img2img" else self.t2v_timesteps
        if self.steps <= len(listed):
            return
        if "steps" in requested:
            name = "v2v_timesteps" if self.mode == "img2img" else "t2v_timesteps"
            raise ValueError(f"steps ({self.steps}) is more than the {len(listed)} timesteps of {name} {listed}")
        self.__dict__["steps"] = len(listed)

    @property
    def window_frames(self) -> int:
        return self.kv_cache_frames - self.sink_frames
