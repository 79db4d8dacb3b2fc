"""What a pipeline tells the scheduler about itself, beyond the step contract of `pipelines.base`.

All of it is optional: a pipeline without a `scheduling` attribute gets `DEFAULT_PROFILE`, which
asks for nothing special (the server-wide default SLO, cost from the picture size, no pipe depth,
no quality knobs). The scheduler reads pipelines through this profile only, so it never imports a
pipeline module.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel

# The knobs a session may let the server turn down under load (SloSpec.degrade), cheapest first.
QualityKnob = Literal["steps", "resolution", "chunk"]
QUALITY_KNOBS: tuple[str, ...] = ("steps", "resolution", "chunk")

DEFAULT_SLO = {"target_fps": 30.0, "latency_budget_ms": 500.0}


def size_shape(params: BaseModel) -> tuple[int, ...]:
    """The cost shape of a picture pipeline: its output size when it has one."""
    width, height = getattr(params, "width", None), getattr(params, "height", None)
    return (int(width), int(height)) if width and height else ()


def no_depth(params: BaseModel) -> int:
    return 0


def no_knob(params: BaseModel, knob: str) -> dict[str, Any] | None:
    return None


@dataclass(frozen=True)
class SchedulingProfile:
    slo_defaults: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_SLO))
    """target_fps and latency_budget_ms a session gets when its `start` leaves them out."""
    cost_shape: Callable[[BaseModel], tuple[int, ...]] = size_shape
    """The parameters a step's cost depends on (size, steps...): costs are measured per shape,
    and a shape never measured is estimated from another by the ratio of their products."""
    pipe_depth: Callable[[BaseModel], int] = no_depth
    """Ticks between an input going in and its output coming out in steady state (stream batch,
    chunking), so the latency budget can be split between waiting and the pipe."""
    lower_quality: Callable[[BaseModel, str], dict[str, Any] | None] = no_knob
    """The parameter changes one level down on a knob, or None when the knob is at its floor or
    the pipeline has no such knob. Each level is undone by restoring the previous values."""
    stages: Any = None
    """How the pipeline splits across devices (`streaming.stages.StageDeclaration`), or None."""


DEFAULT_PROFILE = SchedulingProfile()


def scheduling_profile(pipeline: Any) -> SchedulingProfile:
    return getattr(pipeline, "scheduling", None) or DEFAULT_PROFILE


def shape_work(shape: tuple[int, ...]) -> float:
    """Relative amount of work of a cost shape (its product), for shapes never measured."""
    return float(math.prod(shape)) if shape else 1.0


def smaller_size(params: BaseModel, multiple: int, floor: int, factor: float = 0.75) -> dict[str, Any] | None:
    """Width and height scaled down by `factor`, kept on the pipeline's size grid; None below `floor`."""
    width, height = params.width, params.height
    new_w = max(multiple, int(width * factor) // multiple * multiple)
    new_h = max(multiple, int(height * factor) // multiple * multiple)
    if min(new_w, new_h) < floor or (new_w, new_h) == (width, height):
        return None
    return {"width": new_w, "height": new_h}
