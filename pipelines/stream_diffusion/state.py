"""Everything that belongs to one stream of the stream-diffusion pipeline.

Nothing here is shared: two streams never see each other's latents, noise or embeddings
(upstream StreamDiffusion keeps all of this on the pipeline object, so users mixed frames).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from models.diffusion import PromptEmbeds
from pipelines.base import PipelineState
from pipelines.stream_diffusion.control import StreamControls
from pipelines.stream_diffusion.params import StreamDiffusionParams
from pipelines.stream_diffusion.sampler import StepTables
from pipelines.stream_diffusion.similarity_filter import SimilarityFilter
from streaming.frames import VideoFrame


@dataclass(eq=False)
class StreamState(PipelineState):
    params: StreamDiffusionParams
    tables: StepTables
    cond: PromptEmbeds
    """(1, ...) prompt embedding, blended when several prompts are given."""
    uncond: PromptEmbeds
    """(1, ...) negative-prompt embedding, used by cfg `full` and `onetime`."""
    init_noise: torch.Tensor
    """(N, C, h, w) fixed noise of each slot; reusing it frame after frame steadies the video."""
    buffer: torch.Tensor
    """(N-1, C, h, w) the latents in flight: buffer[j] enters the next call at slot j+1."""
    residual: torch.Tensor
    """(N, C, h, w) residual noise S produced by the last call: residual[j] is S of slot j+1 next."""
    slots: list[VideoFrame | None]
    """The frames in flight, aligned with `buffer`; None marks an empty or padding slot."""
    generator: torch.Generator
    """Per-stream randomness: txt2img noise and the similarity filter's draws."""
    filter: SimilarityFilter = field(default_factory=SimilarityFilter)
    last_output: VideoFrame | None = None
    controls: StreamControls = field(default_factory=StreamControls)
    """ControlNet images of the frames in flight, image-prompt tokens (pipelines/stream_diffusion/control.py)."""

    @property
    def num_steps(self) -> int:
        return len(self.tables)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.init_noise.shape[1:])
