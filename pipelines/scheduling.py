"""What a pipeline tells the scheduler about itself, beyond the step contract of `pipelines.base`.

Every pipeline carries a `SchedulingProfile` (`Pipeline.scheduling`); the default asks for
nothing special (the server-wide default SLO, one cost for every stream, no pipe depth, no
quality knobs, no split across devices). The scheduler, admission control and stage placement
read pipelines through this profile only, so none of them imports a pipeline module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel

# The knobs a session may let the server turn down under load (SloSpec.degrade), cheapest first.
QualityKnob = Literal["steps", "resolution", "chunk"]
QUALITY_KNOBS: tuple[str, ...] = ("steps", "resolution", "chunk")

DEFAULT_SLO = {"target_fps": 30.0, "latency_budget_ms": 500.0}

Shape = tuple[int, ...]


def no_shape(params: BaseModel) -> Shape:
    """Every stream costs the same whatever its parameters."""
    return ()


def no_depth(params: BaseModel) -> int:
    return 0


def no_knob(params: BaseModel, knob: str) -> dict[str, Any] | None:
    return None


@dataclass(frozen=True)
class StageDeclaration:
    """How a pipeline splits across devices (`streaming.stages.placement` reads it)."""

    units: int | None
    """How many units (layers) the stages divide among themselves and keep state for; None when
    the split is made anew at every call (rows of a stateless model)."""
    host: str
    """"module:function" that builds a later rank's host: called with (link, counts=..., **host_args)."""
    host_args: dict[str, Any]
    """What a later rank needs to build its part (picklable: how to load the same weights)."""
    attach: Callable[..., Any]
    """(pipeline, group, counts, program, rebalancer) -> rank 0's part, which becomes the
    pipeline's `denoiser`."""


@dataclass(frozen=True)
class SchedulingProfile:
    slo_defaults: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_SLO))
    """target_fps and latency_budget_ms a session gets when its `start` leaves them out."""
    cost_shape: Callable[[BaseModel], Shape] = no_shape
    """The parameters a step's cost depends on (size, steps...): costs are measured per shape,
    and a shape never measured is estimated from another (`streaming.costs`)."""
    pipe_depth: Callable[[BaseModel], int] = no_depth
    """Ticks between an input going in and its output coming out in steady state (stream batch,
    chunking), so the latency budget can be split between waiting and the pipe."""
    lower_quality: Callable[[BaseModel, str], dict[str, Any] | None] = no_knob
    """The parameter changes one level down on a knob, or None when the knob is at its floor or
    the pipeline has no such knob. The pipeline's update normalises them like a client's."""
    stages: StageDeclaration | None = None
    """How the pipeline splits across devices, or None when it does not."""


DEFAULT_PROFILE = SchedulingProfile()


def smaller_size(params: BaseModel, multiple: int, floor: int, factor: float = 0.75) -> dict[str, Any] | None:
    """Width and height scaled down by `factor`, kept on the pipeline's size grid; None below `floor`."""
    width, height = params.width, params.height  # type: ignore[attr-defined]
    new_w = max(multiple, int(width * factor) // multiple * multiple)
    new_h = max(multiple, int(height * factor) // multiple * multiple)
    if min(new_w, new_h) < floor or (new_w, new_h) == (width, height):
        return None
    return {"width": new_w, "height": new_h}
