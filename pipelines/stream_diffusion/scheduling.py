"""How the stream-diffusion pipeline presents itself to the scheduler: default SLO, what a step's
cost depends on, how deep its pipe is, and the quality knobs it can turn down under load."""

from __future__ import annotations

from typing import Any

from pipelines.scheduling import SchedulingProfile, smaller_size
from pipelines.stream_diffusion.params import StreamDiffusionParams
from pipelines.stream_diffusion.stages import split_rows
from streaming.stages.placement import StageDeclaration

SIZE_MULTIPLE = 64  # pixels: the UNet halves the latent three times
SIZE_FLOOR = 128


def cost_shape(params: StreamDiffusionParams) -> tuple[int, ...]:
    """UNet rows per frame grow with the steps (stream batch) and the picture's pixels."""
    return params.width, params.height, len(params.t_index_list)


def pipe_depth(params: StreamDiffusionParams) -> int:
    """Stream batch: frame k leaves when frame k + steps - 1 goes in."""
    return len(params.t_index_list) - 1


def fewer_steps(t_index_list: list[int]) -> list[int]:
    """One step less, keeping the first index (how far from the input it goes) and the last
    (how clean it ends), the rest spread between them."""
    n = len(t_index_list) - 1
    if n == 1:
        return [t_index_list[0]]
    return [t_index_list[round(i * n / (n - 1))] for i in range(n)]


def lower_quality(params: StreamDiffusionParams, knob: str) -> dict[str, Any] | None:
    if knob == "steps" and len(params.t_index_list) > 1:
        return {"t_index_list": fewer_steps(params.t_index_list)}
    if knob == "resolution":
        return smaller_size(params, SIZE_MULTIPLE, SIZE_FLOOR)
    return None


PROFILE = SchedulingProfile(
    slo_defaults={"target_fps": 30.0, "latency_budget_ms": 500.0},
    cost_shape=cost_shape,
    pipe_depth=pipe_depth,
    lower_quality=lower_quality,
    stages=StageDeclaration(units=None, host="pipelines.stream_diffusion.stages:RowStageHost", attach=split_rows),
)
