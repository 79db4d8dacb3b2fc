"""The creative-control parameters of a stream-diffusion stream: which ControlNets with which
preprocessor and scale, the image prompt and its weight, and the LoRAs with their weights.

All are hot: a change applies at the next frame and keeps the frames in flight. Which models
exist is the server's (`--controlnet`, `--ip-adapter`, `--lora`): a name the server has not
loaded is refused when the stream applies it, with the names there are (docs/control.md).
"""

from __future__ import annotations

import copy
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from pipelines.stream_diffusion import control_images

MAX_CONTROLNETS = 4
MAX_LORAS = 8
INPUT = "input"
"""The image prompt value that takes the stream's next input frame as the picture."""

Preprocessor = Literal["canny", "soft_edge", "input", "previous_output"]


class ControlNetChoice(BaseModel):
    """One ControlNet of a stream."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    model: str = Field(max_length=64, description="Name of a ControlNet the server loaded (--controlnet NAME=SOURCE).")
    preprocessor: Preprocessor = Field(
        "canny", description="What makes the control image: canny edges of the input, soft_edge (gradient magnitude), "
        "the input itself, or previous_output (the stream's last generated frame, TemporalNet-style).")
    scale: float = Field(1.0, ge=0.0, le=2.0, description="Conditioning scale: how strongly the control image steers.")
    low_threshold: int = Field(100, ge=0, le=255, description="canny: lower hysteresis threshold.")
    high_threshold: int = Field(200, ge=0, le=255, description="canny: upper hysteresis threshold.")

    @model_validator(mode="after")
    def _thresholds(self) -> ControlNetChoice:
        if self.low_threshold > self.high_threshold:
            raise ValueError(f"canny low_threshold {self.low_threshold} is above high_threshold {self.high_threshold}")
        return self

    @property
    def image_key(self) -> tuple[str, int, int]:
        """What its control image depends on: two ControlNets with the same key share one image."""
        if self.preprocessor == "canny":
            return self.preprocessor, self.low_threshold, self.high_threshold
        return self.preprocessor, 0, 0


def normalise_image_prompt(value: str | None) -> str | None:
    """None, 'input', or the `sha256:` name of a stored picture; a data URL is stored and named."""
    if value is None or value == INPUT or control_images.DIGEST.match(value):
        return value
    return control_images.store_data_url(value)


def check_loras(loras: dict[str, float]) -> None:
    if len(loras) > MAX_LORAS:
        raise ValueError(f"loras: at most {MAX_LORAS}, got {len(loras)}")
    for name, weight in loras.items():
        if not -2.0 <= weight <= 2.0:
            raise ValueError(f"loras: weight of {name!r} must be in -2..2, got {weight}")


def with_choices(params_model: type[BaseModel], controlnets: list[str], loras: list[str], image_prompt: bool) -> type[BaseModel]:
    """`params_model` whose schema also lists what this server loaded (`choices` of `controlnets`
    and `loras`, and whether `image_prompt` is available), so a UI can offer exactly those."""
    offered = {"controlnets": {"choices": controlnets}, "loras": {"choices": loras}, "image_prompt": {"available": image_prompt}}
    fields = {}
    for name, extra in offered.items():
        info = copy.copy(params_model.model_fields[name])
        info.json_schema_extra = {**(info.json_schema_extra or {}), **extra}  # type: ignore[dict-item]
        fields[name] = (info.annotation, info)
    return create_model(params_model.__name__, __base__=params_model, **fields)  # type: ignore[call-overload]


def cost_units(controlnets: list[ControlNetChoice], image_prompt: str | None, loras: dict[str, float]) -> int:
    """A step's cost with these controls in plain-img2img units (the scheduler's cost shape), as
    benchmarks/controls.py measured it on the CPU: controlled rows run the eager UNet instead of
    its engine, with per-row deltas (an image prompt 1.5x, LoRAs 1.7x); each ControlNet in use
    adds about one more unit (one 2.1x, two 2.8x; everything at once 2.4x). Rounded to whole
    units: only a prior for batches never measured, since the cost model measures each
    composition of shapes it serves."""
    nets = sum(1 for c in controlnets if c.scale)
    eager = bool(nets or image_prompt or any(loras.values()))
    return 1 + max(nets, int(eager))
