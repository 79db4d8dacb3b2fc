"""Named model sets for the rolling-KV video pipeline (a different kind from the diffusion presets).

A video preset names the causal transformer checkpoint, the Wan2.1 base repository it shares the
VAE, text encoder and tokenizer with, its architecture configs (`models/configs/<name>/`:
transformer.json, vae.json, text_encoder.json; numbers only, so `--random-weights` builds the same
shapes with no download) and the pipeline defaults that suit it.

The causal checkpoints come in families that were distilled, and are run upstream, differently:
their step lists, the shift of their timestep table, their block size, whether the transformer
sees normalised input latents and how their KV cache is laid out. A family's preset carries all of
it (its own fields, and its pipeline defaults), so a checkpoint runs the way its authors run it
with no flags; docs/video.md says what each setting is and where it comes from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from models.video.flow_match import warp_timesteps


class UnknownVideoPresetError(ValueError):
    pass


@dataclass(frozen=True)
class VideoPreset:
    name: str
    description: str
    base_model: str | None = None
    """Hub id of a diffusers-layout Wan2.1 repository: vae/, text_encoder/, tokenizer/."""
    checkpoint: tuple[str, str] | None = None
    """(hub repository, file) of the causal, distilled transformer weights."""
    family: str = "streamdiffusionv2"
    """Whose inference loop the defaults follow: streamdiffusionv2, self-forcing or causvid."""
    scheduler_shift: float = 8.0
    """Shift of the flow-matching timestep table the checkpoint's training wrapper looks sigmas
    up in (models/video/flow_match.py): 8 for StreamDiffusionV2 and CausVid, 5 for Self-Forcing."""
    normalise_encoded: bool = True
    """Whether the VAE's per-channel mean and std normalise encoded input latents. StreamDiffusionV2
    encodes its input without (`stream_encode`, `is_scale=False`) and un-normalises only on
    decode, so its transformer sees raw latents; decoding always un-normalises."""
    architecture: str | None = None
    """The folder of models/configs/ with its architecture (default: its own name); presets of one
    architecture share it."""
    offload_text_encoder: bool = False
    """Keep the text encoder off the accelerator except while it encodes a prompt."""
    defaults: dict[str, Any] = field(default_factory=dict)
    """Pipeline parameter defaults (see pipelines/rolling_kv/params.py)."""

    @property
    def built_in(self) -> bool:
        """Built in-process with seeded random weights: no files, no download (tests, CI)."""
        return self.base_model is None

    def config_json(self, part: str) -> dict[str, Any]:
        path = resources.files("models") / "configs" / (self.architecture or self.name) / f"{part}.json"
        return json.loads(path.read_text())


# StreamDiffusionV2 (configs/wan_causal_dmd_v2v.yaml, streamv2v/inference.py): blocks of one
# latent frame after a first chunk of two, steps [700, 500, 400, 200] (`--step N` keeps N), a
# stream batch over a 6-frame cache with 3 sink frames refreshed below similarity 0.2, and the
# RoPE position reset to frame 5 at frame 50.
_STREAMDIFFUSIONV2 = {
    "width": 832, "height": 480, "steps": 2, "first_chunk_latents": 2, "chunk_latents": 1,
    "v2v_timesteps": [700.0, 500.0, 400.0, 200.0], "t2v_timesteps": [1000.0, 750.0, 500.0, 250.0],
    "kv_mode": "stream-batch", "step_rewrite": "next-slot", "kv_cache_frames": 6, "sink_frames": 3,
    "eviction": "adaptive-sink", "sink_refresh_threshold": 0.2, "positions": "periodic-reset", "reset_at": 50,
}
# Self-Forcing and CausVid (text-to-video): blocks of 3 latent frames (9 pictures first, then 12),
# every block's steps one after another, then a pass at t=0 that writes the clean block's keys
# (clean-context), absolute positions, a 21-frame cache (their training length, 81 pictures); past
# it the window rolls keeping the first block as sinks. The video-to-video list is StreamDiffusionV2's
# (neither has a video-to-video loop of its own; docs/video.md).
_BLOCKWISE = {
    "mode": "txt2img", "width": 832, "height": 480, "first_chunk_latents": 3, "chunk_latents": 3,
    "v2v_timesteps": [700.0, 500.0, 400.0, 200.0], "kv_mode": "clean-context", "kv_cache_frames": 21, "sink_frames": 3,
    "eviction": "fifo", "positions": "absolute",
}

PRESETS: dict[str, VideoPreset] = {
    p.name: p
    for p in (
        VideoPreset(
            name="tiny-video",
            description="Tiny Wan-shaped causal video models built in-process with random weights (tests, CI).",
            normalise_encoded=False,  # StreamDiffusionV2's convention, like the default pipeline settings
            defaults={"width": 64, "height": 64, "steps": 2, "kv_cache_frames": 6, "sink_frames": 3},
        ),
        VideoPreset(
            name="small-video",
            description="Small causal video models built in-process (dim 256, 6 layers, 256 tokens per latent "
            "frame at 256x256): CPU benchmarks and scheduler tests.",
            normalise_encoded=False,
            defaults={"width": 256, "height": 256, "steps": 2, "kv_cache_frames": 6, "sink_frames": 3},
        ),
        VideoPreset(
            name="wan-causal-1.3b",
            description="StreamDiffusionV2 1.3B: Wan2.1-T2V-1.3B causal DMD checkpoint for video-to-video, 480x832, "
            "its stream-batch loop.",
            base_model="Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
            checkpoint=("jerryfeng/StreamDiffusionV2", "wan_causal_dmd_v2v/model.pt"),
            normalise_encoded=False,
            offload_text_encoder=True,
            defaults=_STREAMDIFFUSIONV2,
        ),
        VideoPreset(
            name="wan-causal-14b",
            description="StreamDiffusionV2 14B: Wan2.1-T2V-14B causal DMD checkpoint (from CausVid-Plus), 480x832, 1 step.",
            base_model="Wan-AI/Wan2.1-T2V-14B-Diffusers",
            checkpoint=("jerryfeng/StreamDiffusionV2", "wan_causal_dmd_v2v_14b/model.pt"),
            normalise_encoded=False,
            offload_text_encoder=True,
            defaults={**_STREAMDIFFUSIONV2, "steps": 1},
        ),
        VideoPreset(
            name="self-forcing-1.3b",
            description="Self-Forcing 1.3B: Wan2.1-T2V-1.3B distilled by self forcing (DMD, EMA weights), text-to-video, "
            "3-frame blocks, 4 steps warped by shift 5.",
            base_model="Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
            checkpoint=("gdhe17/Self-Forcing", "checkpoints/self_forcing_dmd.pt"),
            family="self-forcing",
            architecture="wan-causal-1.3b",
            scheduler_shift=5.0,
            offload_text_encoder=True,
            # configs/self_forcing_dmd.yaml: [1000, 750, 500, 250] warped through the shift-5 table.
            defaults={**_BLOCKWISE, "steps": 4, "t2v_timesteps": warp_timesteps([1000, 750, 500, 250], 5.0)},
        ),
        VideoPreset(
            name="causvid-1.3b",
            description="CausVid 1.3B: Wan2.1-T2V-1.3B autoregressive DMD checkpoint, text-to-video, 3-frame blocks, "
            "steps [1000, 757, 522].",
            base_model="Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
            checkpoint=("tianweiy/CausVid", "autoregressive_checkpoint/model.pt"),
            family="causvid",
            architecture="wan-causal-1.3b",
            offload_text_encoder=True,
            # configs/wan_causal_dmd.yaml: [1000, 757, 522] (the trailing 0 only marks the end), no warp.
            defaults={**_BLOCKWISE, "steps": 3, "t2v_timesteps": [1000.0, 757.0, 522.0]},
        ),
    )
}


def video_preset_names() -> list[str]:
    return list(PRESETS)


def get_video_preset(name: str) -> VideoPreset:
    try:
        return PRESETS[name]
    except KeyError:
        raise UnknownVideoPresetError(f"unknown video preset {name!r}; choose one of {', '.join(PRESETS)}") from None
