"""Pipelines for server tests: the real contract (`pipelines.base.Pipeline`, so a fake cannot be
looser than a real pipeline), no model, behaviour a test can see in the pixels.

`TintPipeline` blends each input towards a colour derived from its prompt, so a test can tell
which prompt (and which session's parameters) produced a frame; it can be slowed down to model
a pipeline slower than the input, and made to fail on demand. `ChunkPipeline` returns frames in
bursts, as chunked video models do.
"""

from __future__ import annotations

import hashlib
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pipelines.base import Pipeline, PipelineKind, PipelineState, StepOutput
from streaming.frames import VideoFrame

FAIL_PROMPT = "fail"  # a stream with this prompt makes step raise


def prompt_color(prompt: str) -> np.ndarray:
    return np.frombuffer(hashlib.sha256(prompt.encode()).digest()[:3], np.uint8).astype(np.float32)


class TintParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mode: Literal["img2img", "txt2img"] = Field("img2img", json_schema_extra={"update": "reset"})
    prompt: str = Field("", max_length=200, json_schema_extra={"update": "hot"}, description="Picks the tint colour.")
    strength: float = Field(1.0, ge=0.0, le=1.0, json_schema_extra={"update": "hot"})
    width: int = Field(64, ge=16, le=512, json_schema_extra={"update": "reset"})
    height: int = Field(64, ge=16, le=512, json_schema_extra={"update": "reset"})


@dataclass(eq=False)
class TintState(PipelineState):
    params: TintParams
    pending: list[VideoFrame] = field(default_factory=list)  # ChunkPipeline's frames not yet returned


class TintPipeline(Pipeline[TintState]):
    kind = PipelineKind.VIDEO_TO_VIDEO
    params_model = TintParams

    def __init__(self, name: str = "tint", delay_s: float = 0.0):
        self.name = name
        self.delay_s = delay_s  # per step, whatever the batch size (as on a GPU)
        self.live_states: weakref.WeakSet[TintState] = weakref.WeakSet()
        self.batch_sizes: list[int] = []

    def build_state(self, params: TintParams, stream_id: str) -> TintState:
        state = TintState(params=params, stream_id=stream_id)
        self.live_states.add(state)
        return state

    def needs_input(self, params: TintParams) -> bool:
        return params.mode == "img2img"

    def step(self, batch: Sequence[tuple[TintState, VideoFrame | None]]) -> list[StepOutput]:
        self.batch_sizes.append(len(batch))
        if self.delay_s:
            time.sleep(self.delay_s)
        if any(state.params.prompt == FAIL_PROMPT for state, _ in batch):
            raise RuntimeError("asked to fail")
        outputs = []
        for state, frame in batch:
            p = state.params
            color = prompt_color(p.prompt)
            if frame is None:
                image = np.broadcast_to(color.astype(np.uint8), (p.height, p.width, 3)).copy()
                outputs.append(StepOutput(frames=[VideoFrame(image, 0, None, state.stream_id)]))
            else:
                image = ((1 - p.strength) * frame.image + p.strength * color).round().astype(np.uint8)
                outputs.append(StepOutput(frames=[frame.with_image(image)]))
        return outputs

    def in_flight(self, state: TintState) -> int:
        return 0


class ChunkPipeline(Pipeline[TintState]):
    """Returns its inputs in chunks: nothing for three steps, then the last four frames at once,
    as chunked video models do (txt2img: four grey frames per step). For testing that bursts are
    paced out by pts, not dropped."""

    name = "chunk"
    kind = PipelineKind.VIDEO_TO_VIDEO
    params_model = TintParams
    CHUNK = 4

    def build_state(self, params: TintParams, stream_id: str) -> TintState:
        return TintState(params=params, stream_id=stream_id)

    def needs_input(self, params: TintParams) -> bool:
        return params.mode == "img2img"

    def step(self, batch: Sequence[tuple[TintState, VideoFrame | None]]) -> list[StepOutput]:
        outputs = []
        for state, frame in batch:
            if frame is None:
                grey = np.full((state.params.height, state.params.width, 3), 128, np.uint8)
                outputs.append(StepOutput(frames=[VideoFrame(grey.copy(), 0) for _ in range(self.CHUNK)]))
                continue
            state.pending.append(frame.with_image(frame.image))
            ready, state.pending = (state.pending, []) if len(state.pending) == self.CHUNK else ([], state.pending)
            outputs.append(StepOutput(frames=ready))
        return outputs

    def in_flight(self, state: TintState) -> int:
        return len(state.pending)
