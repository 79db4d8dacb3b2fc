"""The contract every pipeline follows: the server, the scheduler and the render command know a
pipeline through `Pipeline` and nothing else.

A pipeline owns shared weights; everything that belongs to one stream (buffers, noise, caches,
embeddings) lives in the state object that `new_state` returns, and so do the stream's
parameters in force (`state.params`): the one value the acks, REST, stats, the scheduler's cost
shape and the quality levels all read. One `step` call takes several streams' states and inputs
and serves them with as few forward passes as their shapes allow: that batching across streams is
the scheduler's main lever on a GPU.

Parameters are normalised in one place, the pipeline's pydantic model: a validator sees which
fields a request named (`requested_fields`) and derives the rest (stream-diffusion's `strength`
and `steps` against `t_index_list`), so a start, an update and a quality step all end in the
same consistent set, which `update` returns.
"""

from __future__ import annotations

import copy
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError, ValidationInfo, create_model

from pipelines.scheduling import DEFAULT_PROFILE, SchedulingProfile
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


_CLASS_ORDER = [UpdateClass.HOT, UpdateClass.RESET, UpdateClass.RELOAD]


def update_class_of(params_model: type[BaseModel], name: str) -> UpdateClass:
    """The update class a parameter declares in its schema (`json_schema_extra={"update": ...}`)."""
    extra = params_model.model_fields[name].json_schema_extra or {}
    return UpdateClass(extra.get("update", UpdateClass.HOT.value))  # type: ignore[union-attr]


def strongest_class(params_model: type[BaseModel], names: Sequence[str]) -> UpdateClass | None:
    """The strongest update class among `names` (None for no names)."""
    classes = {update_class_of(params_model, name) for name in names}
    return max(classes, key=_CLASS_ORDER.index) if classes else None


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


# ---- parameters ----------------------------------------------------------------------------------

_CHANGED = "changed"  # validation context key: the fields an update named


def requested_fields(params: BaseModel, info: ValidationInfo) -> set[str]:
    """The fields a request named, for a model validator that derives the others: an update's
    changes (`merge_params`), or the fields given to a fresh parse."""
    context = info.context or {}
    return set(context[_CHANGED]) if _CHANGED in context else set(params.model_fields_set)


def parse_params(params_model: type[BaseModel], params: Mapping[str, Any] | BaseModel | None) -> Any:
    """Validate and normalise a parameter set; the fields it leaves out take the defaults."""
    raw = params.model_dump() if isinstance(params, BaseModel) else dict(params or {})
    try:
        return params_model.model_validate(raw)
    except ValidationError as err:
        raise validation_to_param_error(err) from None


def merge_params(current: BaseModel, changes: Mapping[str, Any]) -> Any:
    """The parameter set after a partial update, validated as a whole (cross-field rules apply)
    and normalised knowing which fields the update named."""
    try:
        return type(current).model_validate({**current.model_dump(), **changes}, context={_CHANGED: frozenset(changes)})
    except ValidationError as err:
        raise validation_to_param_error(err) from None


def with_defaults(params_model: type[BaseModel], defaults: Mapping[str, Any], name: str) -> type[BaseModel]:
    """A subclass of `params_model` whose defaults are `defaults` (a preset's) normalised like a
    request, constraints kept, so the schema clients and UIs read shows the values a stream
    really starts with (a preset's one-step schedule also says `steps: 1`)."""
    normalised = parse_params(params_model, defaults)
    fields: dict[str, Any] = {}
    for field_name, info in params_model.model_fields.items():
        value = getattr(normalised, field_name)
        if value == info.default:
            continue
        info = copy.copy(info)
        info.default = value
        fields[field_name] = (info.annotation, info)
    return create_model(re.sub(r"\W", "_", name), __base__=params_model, **fields)


def changed_fields(old: BaseModel, new: BaseModel) -> list[str]:
    """The parameters whose value an update really changed (re-sending a value is no change)."""
    return [name for name in type(new).model_fields if getattr(new, name) != getattr(old, name)]


# ---- per-stream state and the results of calls -----------------------------------------------------


@dataclass(kw_only=True, eq=False)
class PipelineState:
    """What every stream's state carries. Pipelines subclass it with their own buffers."""

    params: Any
    """The parameters in force (the pipeline's params model), normalised."""
    stream_id: str = ""
    next_frame_id: int = 0
    """Id of the next frame the stream makes without input; it goes on across a reset."""


State = TypeVar("State", bound=PipelineState)


@dataclass
class UpdateResult:
    """What an accepted update did: which fields changed, whether the pipe was emptied, and the
    full parameter set now in force."""

    params: Any
    applied: list[str] = field(default_factory=list)
    reset: bool = False
    discarded_frames: int = 0


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


# ---- the contract ----------------------------------------------------------------------------------


class Pipeline(ABC, Generic[State]):
    """A generation pipeline as the server, the scheduler and the render command see it.

    A pipeline provides `build_state`, `step` and `in_flight`, and overrides the hooks below
    where it has something to say; `new_state` and `update` are the same for every pipeline.
    """

    name: str
    kind: PipelineKind
    params_model: type[BaseModel]
    scheduling: SchedulingProfile = DEFAULT_PROFILE
    size_multiple: int = 2
    """What an output's width and height must be a multiple of (render sizes its output by it);
    2 at least, for the video encoders' 4:2:0 chroma."""

    # ---- what each pipeline provides ---------------------------------------------------------------

    @abstractmethod
    def build_state(self, params: Any, stream_id: str) -> State:
        """A fresh state for validated `params`. Raises ParamError for values the models refuse."""

    @abstractmethod
    def step(self, batch: Sequence[tuple[State, StepInput]]) -> list[StepOutput]:
        """Advance every stream in `batch` by one tick, batched into as few forwards as possible.

        For video-to-video streams `None` means "no new input": the pipe advances with padding
        so that frames still in flight come out (used to drain at the end of a file). For streams
        that generate without input `None` is the normal input. Audio-to-audio streams are
        stepped on their clock and get the list of chunks that arrived since (empty or None: none did).
        """

    @abstractmethod
    def in_flight(self, state: State) -> int:
        """How many accepted inputs have not produced their output yet."""

    def apply_hot(self, state: State, new: Any, changed: list[str]) -> None:
        """Bring `state` in line with `new` for hot-class changes (a new prompt's embedding, new
        noise); `state.params` is assigned afterwards. Compute everything before assigning
        anything: a ParamError raised here must leave the stream as it was."""

    # ---- what is the same for every pipeline -------------------------------------------------------

    def new_state(self, params: Mapping[str, Any] | BaseModel | None = None, stream_id: str = "") -> State:
        """A fresh per-stream state. Raises ParamError for bad parameters."""
        return self.build_state(parse_params(self.params_model, params), stream_id)

    def update(self, state: State, changes: Mapping[str, Any]) -> UpdateResult:
        """Apply a partial parameter update between ticks, atomically: a ParamError leaves the
        state untouched. A reset-class change rebuilds the state in place (the server holds
        references to it) with frame ids going on, and discards the frames in flight."""
        new = merge_params(state.params, changes)
        changed = changed_fields(state.params, new)
        if not changed:
            return UpdateResult(state.params)
        if strongest_class(self.params_model, changed) is UpdateClass.RESET:
            discarded = self.in_flight(state)
            fresh = self.build_state(new, state.stream_id)
            fresh.next_frame_id = state.next_frame_id
            self.close_state(state)
            state.__dict__.update(fresh.__dict__)
            return UpdateResult(new, applied=changed, reset=True, discarded_frames=discarded)
        self.apply_hot(state, new, changed)
        state.params = new
        return UpdateResult(new, applied=changed)

    # ---- optional hooks, with what a pipeline without them does ------------------------------------

    def needs_input(self, params: Any) -> bool:
        """Whether a stream advances on its input frames, or on its own clock (generating from the
        prompt alone, or an audio pipeline stepped with whatever audio arrived)."""
        return self.kind is PipelineKind.VIDEO_TO_VIDEO

    def render_params(self, given: Mapping[str, Any], *, has_input: bool, size: tuple[int, int] | None) -> dict[str, Any]:
        """The parameters of an offline render: the user's `given` ones, adjusted to run on an
        input video (or without one) at `size` (None: the preset's). Raises ParamError when this
        pipeline cannot run that way."""
        if not has_input and self.kind is not PipelineKind.TEXT_TO_VIDEO:
            raise ParamError(f"pipeline {self.name!r} needs an input video")
        return dict(given)

    def prompt_notes(self, params: Any) -> list[str]:
        """Warnings, in plain words, about what the model will not do with these parameters (a prompt
        outside its vocabulary, generating from a prompt on a model that only restyles): the demo shows
        them, `started` and `ack` carry them, render prints them. None by default."""
        return []

    def styles(self) -> list[str]:
        """Prompts known to work on this pipeline's model, best first (the demo's style picker, with a
        thumbnail of each); empty when any prompt goes."""
        return []

    def stream_pictures(self, state: State) -> dict[str, Any]:
        """Pictures the pipeline shows beside a stream's output, by name ((H, W, 3) uint8 RGB arrays):
        stream-diffusion's control images (`control-0`, ...). Served by GET /v1/sessions/{id}/pictures/{name};
        read off the worker thread, so a pipeline replaces what it keeps here, never mutates it."""
        return {}

    def stream_stats(self, state: State) -> dict[str, Any]:
        """Sections of the pipeline's own for a stream's stats message (e.g. {"speech": {...}}).
        Read off the worker thread: keep what it reads behind the pipeline's own lock."""
        return {}

    def close_state(self, state: State) -> None:
        """The stream ended (or was rebuilt by a reset): stop background work its state started."""

    def metric_families(self, name: str) -> list[Any]:
        """Prometheus metric families the pipeline keeps itself, read at each scrape."""
        return []
