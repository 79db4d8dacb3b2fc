"""Everything that belongs to one rolling-KV video stream: its KV cache, VAE state, prompt K/V,
noise controller and the chunks in flight. Nothing here is shared between streams."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import torch

from models.video.kv_cache import RollingKVCache
from models.video.transformer import TextKV
from models.video.vae import VAEStreamState
from pipelines.base import PipelineState
from pipelines.rolling_kv.noise_controller import MotionNoiseController
from pipelines.rolling_kv.params import RollingKVParams
from streaming.frames import VideoFrame


@dataclass
class Chunk:
    """A block of latent frames on its way through the denoising steps."""

    frames: list[int]
    """Latent frame indices (their place in the stream and in the KV cache)."""
    latents: torch.Tensor
    """(1, C, F, h, w) at the noise level of the step it is processed at next."""
    first_timestep: float
    """Timestep of step 0 (img2img: from the second chunk on, set per chunk by the noise controller)."""
    outputs: list[VideoFrame | None]
    """The identity of each picture it decodes to, in order; None marks padding (not sent)."""
    first: bool = False
    """The stream's first chunk: 1 + 4(F-1) pictures instead of 4F."""

    @property
    def real_frames(self) -> int:
        return sum(o is not None for o in self.outputs)


@dataclass
class PromptTransition:
    """A prompt change blending in over `chunks` forwards, from the encoder states in use when it
    began (a blend, if it interrupted another transition) to the new prompt's."""

    start: torch.Tensor
    target: torch.Tensor
    chunks: int
    done: int = 0


@dataclass(eq=False)
class RollingKVState(PipelineState):
    params: RollingKVParams
    timesteps: list[float]
    """The timesteps of the steps, as listed (img2img replaces the first per chunk from the second chunk on)."""
    cache: RollingKVCache
    """Rows: one per step in stream-batch mode (row i keeps keys computed at step i), else one."""
    vae: VAEStreamState
    text_states: torch.Tensor
    """(1, text_len, dim) encoder states in use (a blend while a transition runs)."""
    text: TextKV
    """Cross-attention K/V of `text_states`, every layer."""
    transition: PromptTransition | None = None
    controller: MotionNoiseController = field(default_factory=MotionNoiseController)
    pending: list[tuple[VideoFrame | None, torch.Tensor]] = field(default_factory=list)
    """img2img: input frames collected for the next chunk, each with its picture (3, H, W) in
    [-1, 1]; a None frame is padding that completes the last chunk of an input."""
    slots: list[Chunk | None] = field(default_factory=list)
    """stream-batch: slots[i] is the chunk processed at step i by the next forward."""
    next_latent_frame: int = 0
    ready: deque[VideoFrame] = field(default_factory=deque)
    """Finished pictures not handed out yet (they leave one per step)."""

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    @property
    def started(self) -> bool:
        return self.next_latent_frame > 0
