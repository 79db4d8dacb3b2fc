"""The no-model pipeline: returns each input frame as it came. For transport tests and for
measuring the server's own latency with nothing else in the way."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict

from pipelines.base import PipelineKind, StepOutput, UpdateResult, merge_params, parse_params
from streaming.frames import VideoFrame


class PassthroughParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass
class PassthroughState:
    params: PassthroughParams
    stream_id: str = ""


class PassthroughPipeline:
    name = "passthrough"
    kind = PipelineKind.VIDEO_TO_VIDEO
    params_model = PassthroughParams

    def new_state(self, params: Mapping[str, Any] | BaseModel | None = None, stream_id: str = "") -> PassthroughState:
        return PassthroughState(parse_params(PassthroughParams, params), stream_id)

    def update(self, state: PassthroughState, changes: Mapping[str, Any]) -> UpdateResult:
        state.params = merge_params(state.params, changes)
        return UpdateResult(applied=sorted(changes))

    def step(self, batch: Sequence[tuple[PassthroughState, VideoFrame | None]]) -> list[StepOutput]:
        return [StepOutput(frames=[frame.with_image(frame.image)] if frame is not None else [], consumed=frame is not None) for _, frame in batch]

    def in_flight(self, state: PassthroughState) -> int:
        return 0
