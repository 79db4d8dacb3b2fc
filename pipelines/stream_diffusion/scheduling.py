"""How the stream-diffusion pipeline presents itself to the scheduler: default SLO, what a step's
cost depends on, how deep its pipe is, the quality knobs it can turn down under load, and how
it splits across devices."""

from __future__ import annotations

from typing import Any

from models.diffusion import DiffusionModels
from pipelines.scheduling import SchedulingProfile, StageDeclaration, smaller_size
from pipelines.stream_diffusion.control_params import cost_units
from pipelines.stream_diffusion.params import StreamDiffusionParams
from pipelines.stream_diffusion.stages import split_rows

SIZE_MULTIPLE = 64  # pixels: the UNet halves the latent three times
SIZE_FLOOR = 128


def cost_shape(params: StreamDiffusionParams) -> tuple[int, ...]:
    """UNet rows per frame grow with the steps (stream batch) and the picture's pixels; creative
    controls add a factor (`cost_units`). Streams with different controls still share one batch
    (their controls apply per row), so the shape is what a stream costs, not a batch group."""
    shape = (params.width, params.height, len(params.t_index_list))
    units = cost_units(params.controlnets, params.image_prompt, params.loras)
    return shape if units == 1 else (*shape, units)


def pipe_depth(params: StreamDiffusionParams) -> int:
    """Stream batch: frame k leaves when frame k + steps - 1 goes in."""
    return len(params.t_index_list) - 1


def lower_quality(params: StreamDiffusionParams, knob: str) -> dict[str, Any] | None:
    """One step less (the parameters resample the schedule, keeping its first and last index,
    or derive it again from `strength`), or a smaller picture."""
    if knob == "steps" and params.steps > 1:
        return {"steps": params.steps - 1}
    if knob == "resolution":
        return smaller_size(params, SIZE_MULTIPLE, SIZE_FLOOR)
    return None


def profile_for(models: DiffusionModels) -> SchedulingProfile:
    return SchedulingProfile(
        slo_defaults={"target_fps": 30.0, "latency_budget_ms": 500.0},
        cost_shape=cost_shape,
        pipe_depth=pipe_depth,
        lower_quality=lower_quality,
        stages=StageDeclaration(units=None, host="pipelines.stream_diffusion.stages:RowStageHost",
                                host_args={"source": models.source}, attach=split_rows),
    )
