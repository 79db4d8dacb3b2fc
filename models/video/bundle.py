"""The loaded parts of a video preset and the few operations the pipeline needs from them.

Weights only: everything per stream (KV caches, VAE state, prompt K/V) is created here on request
and handed to the stream, never kept on this object.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from models.source import ModelSource
from models.video.eviction import EvictionPolicy
from models.video.kv_cache import CacheLayout, RollingKVCache
from models.video.positions import PositionPolicy
from models.video.presets import VideoPreset
from models.video.text_encoder import TextEncoder
from models.video.transformer import CausalWanTransformer, TextKV
from models.video.vae import StreamingVAE


@dataclass
class VideoModels:
    preset: VideoPreset
    transformer: CausalWanTransformer
    vae: StreamingVAE
    text_encoder: TextEncoder
    device: torch.device
    dtype: torch.dtype
    source: ModelSource
    """How to load the same weights elsewhere (a stage process on another device)."""
    cache_layers: int | None = None
    """Layers whose KV this process keeps (the first ones): all of them, unless the transformer is
    split across processes (streaming.stages), where each process keeps its own layers' KV."""

    @property
    def latent_channels(self) -> int:
        return self.vae.latent_channels

    @property
    def pixel_multiple(self) -> int:
        """Picture sides must be multiples of this: the VAE's factor times the patch size."""
        return self.vae.spatial_factor * self.transformer.config.patch_size[1]

    def latent_size(self, width: int, height: int) -> tuple[int, int]:
        return height // self.vae.spatial_factor, width // self.vae.spatial_factor

    def prompt_states(self, text: str) -> torch.Tensor:
        """(1, text_len, dim) text encoder states of a prompt (cached per prompt text)."""
        return self.text_encoder.encode(text)

    def text_kv(self, states: torch.Tensor) -> TextKV:
        """Cross-attention K/V of every layer for encoder states (a prompt's, or a blend of two)."""
        return self.transformer.text_kv(states)

    def new_cache(
        self, rows: int, width: int, height: int, sink_frames: int, window_frames: int,
        eviction: EvictionPolicy, positions: PositionPolicy,
    ) -> RollingKVCache:
        t = self.transformer
        layout = CacheLayout(
            layers=t.config.num_layers if self.cache_layers is None else self.cache_layers,
            heads=t.heads,
            head_dim=t.config.attention_head_dim,
            frame_tokens=t.tokens_per_frame(*self.latent_size(width, height)),
            sink_frames=sink_frames,
            window_frames=window_frames,
            pool_tokens=eviction.pool_tokens,
        )
        return RollingKVCache(layout, rows, t.rope3d, self.device, self.dtype, eviction, positions)
