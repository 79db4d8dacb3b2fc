"""Named model sets for the rolling-KV video pipeline (a different kind from the diffusion presets).

A video preset names the causal transformer checkpoint, the Wan2.1 base repository it shares the
VAE, text encoder and tokenizer with, its architecture configs (`models/configs/<name>/`:
transformer.json, vae.json, text_encoder.json; numbers only, so `--random-weights` builds the same
shapes with no download) and the pipeline defaults that suit it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Any


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
    timestep_shift: float = 1.0
    """Flow-matching shift applied to the step list's timesteps (1: sigma = t / 1000, as in
    StreamDiffusionV2; Self-Forcing's checkpoints were distilled with 5)."""
    offload_text_encoder: bool = False
    """Keep the text encoder off the accelerator except while it encodes a prompt."""
    defaults: dict[str, Any] = field(default_factory=dict)
    """Pipeline parameter defaults (see pipelines/rolling_kv/params.py)."""

    @property
    def built_in(self) -> bool:
        """Built in-process with seeded random weights: no files, no download (tests, CI)."""
        return self.base_model is None

    def config_json(self, part: str) -> dict[str, Any]:
        path = resources.files("models") / "configs" / self.name / f"{part}.json"
        return json.loads(path.read_text())


_WAN_DEFAULTS = {"width": 832, "height": 480, "steps": 2, "kv_cache_frames": 6, "sink_frames": 3}

PRESETS: dict[str, VideoPreset] = {
    p.name: p
    for p in (
        VideoPreset(
            name="tiny-video",
            description="Tiny Wan-shaped causal video models built in-process with random weights (tests, CI).",
            defaults={"width": 64, "height": 64, "steps": 2, "kv_cache_frames": 6, "sink_frames": 3},
        ),
        VideoPreset(
            name="small-video",
            description="Small causal video models built in-process (dim 256, 6 layers, 256 tokens per latent "
            "frame at 256x256): CPU benchmarks and scheduler tests.",
            defaults={"width": 256, "height": 256, "steps": 2, "kv_cache_frames": 6, "sink_frames": 3},
        ),
        VideoPreset(
            name="wan-causal-1.3b",
            description="Wan2.1-T2V-1.3B causal DMD checkpoint of StreamDiffusionV2 (video-to-video), 480x832.",
            base_model="Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
            checkpoint=("jerryfeng/StreamDiffusionV2", "wan_causal_dmd_v2v/model.pt"),
            offload_text_encoder=True,
            defaults=_WAN_DEFAULTS,
        ),
        VideoPreset(
            name="wan-causal-14b",
            description="Wan2.1-T2V-14B causal DMD checkpoint (StreamDiffusionV2 14B, from CausVid-Plus), 480x832.",
            base_model="Wan-AI/Wan2.1-T2V-14B-Diffusers",
            checkpoint=("jerryfeng/StreamDiffusionV2", "wan_causal_dmd_v2v_14b/model.pt"),
            offload_text_encoder=True,
            defaults={**_WAN_DEFAULTS, "steps": 1},
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
