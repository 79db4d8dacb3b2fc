"""How the rolling-KV video pipeline presents itself to the scheduler: default SLO, what a step's
cost depends on, how deep its pipe is, the quality knobs it can turn down under load, and how it
splits across devices (by transformer layers)."""

from __future__ import annotations

from typing import Any

from models.video.bundle import VideoModels
from models.video.vae import pixel_frames
from pipelines.rolling_kv.params import RollingKVParams
from pipelines.rolling_kv.stages import split_across
from pipelines.scheduling import SchedulingProfile, StageDeclaration, smaller_size

MAX_CHUNK_LATENTS = 4


def cost_shape(params: RollingKVParams) -> tuple[int, ...]:
    """Transformer rows per chunk grow with the steps, tokens with the pixels."""
    return params.width, params.height, params.steps if params.kv_mode != "clean-context" else params.steps + 1


def pipe_depth(params: RollingKVParams) -> int:
    """A picture waits for its chunk to fill, then (stream batch) for `steps` chunks, then leaves
    at most a chunk's worth of ticks later."""
    chunk = pixel_frames(params.chunk_latents, False)
    return chunk * (params.steps if params.kv_mode == "stream-batch" else 1) + chunk - 1


def profile_for(models: VideoModels) -> SchedulingProfile:
    def lower_quality(params: RollingKVParams, knob: str) -> dict[str, Any] | None:
        if knob == "steps" and params.steps > 1:
            return {"steps": params.steps - 1}
        if knob == "resolution":
            return smaller_size(params, models.pixel_multiple, 2 * models.pixel_multiple)
        single_frame_chunks = params.kv_mode == "single-slot" and params.step_rewrite == "next-slot"  # upstream's loop
        if knob == "chunk" and not single_frame_chunks and params.chunk_latents * 2 <= min(MAX_CHUNK_LATENTS, params.window_frames):
            return {"chunk_latents": params.chunk_latents * 2}
        return None

    return SchedulingProfile(
        slo_defaults={"target_fps": 16.0, "latency_budget_ms": 1500.0},
        cost_shape=cost_shape,
        pipe_depth=pipe_depth,
        lower_quality=lower_quality,
        stages=StageDeclaration(units=models.transformer.config.num_layers, host="pipelines.rolling_kv.stages:LayerStageHost",
                                host_args={"source": models.source}, attach=split_across),
    )

