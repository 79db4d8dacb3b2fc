"""The no-model pipeline: returns each input frame as it came. For transport tests and for
measuring the server's own latency with nothing else in the way."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from pipelines.base import Pipeline, PipelineKind, PipelineState, StepOutput
from streaming.frames import VideoFrame


class PassthroughParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass(eq=False)
class PassthroughState(PipelineState):
    params: PassthroughParams


class PassthroughPipeline(Pipeline[PassthroughState]):
    name = "passthrough"
    kind = PipelineKind.VIDEO_TO_VIDEO
    params_model = PassthroughParams

    def build_state(self, params: PassthroughParams, stream_id: str) -> PassthroughState:
        return PassthroughState(params=params, stream_id=stream_id)

    def step(self, batch: Sequence[tuple[PassthroughState, VideoFrame | None]]) -> list[StepOutput]:
        return [StepOutput(frames=[frame.with_image(frame.image)] if frame is not None else [], consumed=frame is not None) for _, frame in batch]

    def in_flight(self, state: PassthroughState) -> int:
        return 0
