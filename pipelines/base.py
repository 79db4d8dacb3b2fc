"""The contract every pipeline follows, so the scheduler and the render CLI need nothing else.

A pipeline owns shared weights; everything that belongs to one stream (buffers, noise, caches,
embeddings) lives in the state object that `new_state` returns. One `step` call takes several
streams' states and inputs and serves them with as few forward passes as their shapes allow:
that batching across streams is the scheduler's main lever on a GPU.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ValidationError, create_model

from streaming.frames import AudioChunk, VideoFrame

# What one stream gets per step: a video frame (None when there is none), or for an audio
# pipeline the audio chunks that arrived since its last step, in order (possibly none).
StepInput = VideoFrame | Sequence[AudioChunk] | None
# What a step hands back: generated pictures or audio.
MediaItem = VideoFrame | AudioChunk


class PipelineKind(str, Enum):
    VIDEO_TO_VIDEO = "video-to-video"
    TEXT_TO_VIDEO = "text-to-video"
    AUDIO_TO_AUDIO = "audio-to-audio"


class UpdateClass(str, Enum):
    """How a parameter change is applied.

    `hot` changes take effect at the next tick and keep the frames in flight. `reset` changes
    are still applied between ticks without reloading weights, but they invalidate the frames in
    flight (for example a new denoising schedule), so the pipe is emptied and warms up again.
    `reload` changes need other weights or engines (model, preset) and are outside a stream's
    own state.
    """

    HOT = "hot"
    RESET = "reset"
    RELOAD = "reload"


def update_class_of(params_model: type[BaseModel], name: str) -> UpdateClass:
    """The update class a parameter declares in its schema (`json_schema_extra={"update": ...}`)."""
    extra = params_model.model_fields[name].json_schema_extra or {}
    return UpdateClass(extra.get("update", UpdateClass.HOT.value))  # type: ignore[union-attr]


class ParamError(ValueError):
    """A parameter value was rejected. The stream is left exactly as it was.

    `field` names the offending parameter (None when the problem spans several).
    """

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


def validation_to_param_error(err: ValidationError) -> ParamError:
    """One readable line from a pydantic error: `field: what is wrong`."""
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or None
    # Errors raised by our own validators arrive as "Value error, <our message>".
    message = first["msg"].removeprefix("Value error, ")
    return ParamError(f"{where}: {message}" if where else message, field=where)


def with_defaults(params_model: type[BaseModel], defaults: Mapping[str, Any], name: str) -> type[BaseModel]:
    """A subclass of `params_model` whose defaults are `defaults` (a preset's), constraints kept,
    so the schema that clients and UIs read shows the values a stream really starts with."""
    fields: dict[str, Any] = {}
    for field_name, value in defaults.items():
        info = copy.copy(params_model.model_fields[field_name])
        info.default = value
        fields[field_name] = (info.annotation, info)
    return create_model(re.sub(r"\W", "_", name), __base__=params_model, **fields)


def parse_params(params_model: type[BaseModel], params: Mapping[str, Any] | BaseModel | None) -> Any:
    """Validate a full parameter set, turning pydantic's error into a ParamError."""
    raw = params.model_dump() if isinstance(params, BaseModel) else dict(params or {})
    try:
        return params_model.model_validate(raw)
    except ValidationError as err:
        raise validation_to_param_error(err) from None


def merge_params(current: BaseModel, changes: Mapping[str, Any]) -> Any:
    """The parameter set after a partial update, validated as a whole (cross-field rules apply)."""
    return parse_params(type(current), {**current.model_dump(), **changes})


@dataclass
class UpdateResult:
    """What an accepted update did: which fields changed, and whether the pipe was emptied."""

    applied: list[str] = field(default_factory=list)
    reset: bool = False
    discarded_frames: int = 0


def changed_fields(old: BaseModel, new: BaseModel) -> list[str]:
    """The parameters whose value an update really changed (re-sending a value is no change)."""
    return [name for name in type(new).model_fields if getattr(new, name) != getattr(old, name)]


def reset_in_place(state: Any, new: BaseModel, changed: list[str], in_flight: int,
                   build_state: Callable[[Any, str], Any]) -> UpdateResult | None:
    """Restart a stream under `new` when any changed parameter is reset-class; None otherwise.

    The state object is rebuilt in place (the server holds references to it) and frame ids go on
    from where they were, so a client never sees an id twice; the frames in flight are discarded
    and counted. `build_state(params, stream_id)` is the pipeline's own constructor of a state.
    """
    if not any(update_class_of(type(new), name) == UpdateClass.RESET for name in changed):
        return None
    fresh = build_state(new, state.stream_id)
    fresh.next_frame_id = state.next_frame_id
    state.__dict__.update(fresh.__dict__)
    return UpdateResult(applied=changed, reset=True, discarded_frames=in_flight)


@dataclass
class StepOutput:
    """One stream's share of a step.

    `frames` holds the outputs produced this tick, in order: none while the pipe warms up, one
    in steady state (an audio pipeline: the audio chunks due out now). `consumed` says whether
    the input frame was taken (a stream whose input was not consumed keeps it for the next
    tick). `skipped` says the similarity filter reused the previous output instead of running
    the model. `error` says why an input could not be used at all; that stream is left as it
    was and the other streams of the batch are served.
    """

    frames: list[MediaItem] = field(default_factory=list)
    consumed: bool = True
    skipped: bool = False
    error: str | None = None


@runtime_checkable
class Pipeline(Protocol):
    name: str
    kind: PipelineKind
    params_model: type[BaseModel]

    def new_state(self, params: Mapping[str, Any] | BaseModel | None = None, stream_id: str = "") -> Any:
        """A fresh per-stream state. Raises ParamError for bad parameters."""

    def update(self, state: Any, changes: Mapping[str, Any]) -> UpdateResult:
        """Apply a partial parameter update atomically; ParamError leaves the state untouched."""

    def step(self, batch: Sequence[tuple[Any, StepInput]]) -> list[StepOutput]:
        """Advance every stream in `batch` by one tick, batched into as few forwards as possible.

        For video-to-video streams `None` means "no new input": the pipe advances with padding
        so that frames still in flight come out (used to drain at the end of a file). For
        text-to-video streams `None` is the normal input. Audio-to-audio streams are stepped on
        their clock and get the list of chunks that arrived since (empty or None: none did).
        """

    def in_flight(self, state: Any) -> int:
        """How many accepted inputs have not produced their output yet."""

    # Optional hooks, looked up with getattr (a pipeline without them works as before):
    #   stream_stats(state) -> dict   sections of its own for the stream's stats message ({"speech": {...}})
    #   close_state(state) -> None    the stream ended: stop background work it started
