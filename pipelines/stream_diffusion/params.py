"""Parameters of one stream-diffusion stream, with bounds, and how each one is applied.

`update` in the schema extra says how a change is applied (see `pipelines.base.UpdateClass`):
`hot` at the next frame, `reset` empties the frames in flight first.

The denoising schedule can be asked for three ways, and is normalised here into one consistent
set whatever was asked: `t_index_list` is what runs, `steps` is always its length, and
`strength` is set only while the schedule is the one it makes (`strength_to_t_index_list`).
- `t_index_list` given: it runs as given; `steps` follows it; `strength` is dropped unless it
  makes this very list (or is given too, and then must).
- `strength` in force: the schedule is derived from it and `steps`.
- `steps` alone on an explicit schedule: the schedule is resampled to that many steps, keeping
  its first index (how far from the input it goes) and its last (how clean it ends).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from pipelines.base import requested_fields
from pipelines.stream_diffusion.control_params import INPUT, MAX_CONTROLNETS, ControlNetChoice, check_loras, normalise_image_prompt

# LCM's discretisation: t_index i selects timestep 999 - 20*i (50 original steps).
NUM_T_INDICES = 50
MAX_STEPS = 4
MAX_SIDE = 2048


def _hot(**kw):
    return Field(json_schema_extra={"update": "hot"}, **kw)


def _reset(**kw):
    return Field(json_schema_extra={"update": "reset"}, **kw)


class WeightedPrompt(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(max_length=2000)
    weight: float = Field(1.0, ge=0.0)


class WeightedSeed(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seed: int = Field(ge=0, lt=2**63)
    weight: float = Field(1.0, ge=0.0)


class StreamDiffusionParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["img2img", "txt2img"] = _reset(
        default="img2img", description="img2img transforms input frames; txt2img generates frames from the prompt alone.")
    prompt: str = _hot(default="", max_length=2000, description="What to generate.")
    prompts: list[WeightedPrompt] | None = _hot(
        default=None, min_length=1, max_length=8,
        description="Prompt blending: a weighted list that replaces `prompt` when given.")
    prompt_interpolation: Literal["linear", "slerp"] = _hot(
        default="slerp", description="How two blended prompts mix; more than two always mix linearly.")
    negative_prompt: str = _hot(default="", max_length=2000, description="Used by cfg_type full and onetime.")
    seed: int = _hot(default=2, ge=0, lt=2**63, description="Seed of the per-slot noise.")
    seeds: list[WeightedSeed] | None = _hot(
        default=None, min_length=1, max_length=8, description="Seed blending: a weighted list that replaces `seed`.")
    seed_interpolation: Literal["linear", "slerp"] = _hot(default="linear")
    t_index_list: list[int] = _reset(
        default=[32, 45], min_length=1, max_length=MAX_STEPS,
        description="Denoising steps as indices into 50 LCM timesteps (index i is timestep 999-20i); "
        "a low first index changes the input more.")
    strength: float | None = _reset(
        default=None, gt=0.0, le=1.0,
        description="Shorthand for t_index_list: how far from the input to go, with `steps` steps.")
    steps: int = _reset(default=2, ge=1, le=MAX_STEPS, description="Denoising steps: always the length of t_index_list; "
                       "changing it derives the schedule from `strength`, or resamples an explicit one.")
    cfg_type: Literal["none", "full", "self", "onetime"] = _hot(
        default="self", description="Residual CFG: none, full (real negative every step), self (free), onetime (one real negative per frame).")
    guidance_scale: float = _hot(default=1.2, ge=0.0, le=20.0, description="CFG is active above 1.")
    delta: float = _hot(default=1.0, ge=0.0, le=5.0, description="Damping of the residual noise in self/onetime CFG.")
    add_noise: bool = _hot(default=True, description="Re-noise between steps; off gives smoother, less varied video.")
    width: int = _reset(default=512, ge=64, le=MAX_SIDE, multiple_of=8)
    height: int = _reset(default=512, ge=64, le=MAX_SIDE, multiple_of=8)
    filter_threshold: float = _hot(
        default=1.0, ge=0.0, le=1.0,
        description="Stochastic similarity filter: cosine similarity above which frames may be skipped; 1 disables it.")
    filter_max_skip: int = _hot(default=10, ge=0, le=1000, description="Frames the filter may skip before one is forced.")
    # Creative controls (pipelines/stream_diffusion/control_params.py, docs/control.md).
    controlnets: list[ControlNetChoice] = _hot(
        default=[], max_length=MAX_CONTROLNETS, description="ControlNets steering the picture, each with its preprocessor and scale.")
    image_prompt: str | None = Field(
        default=None, json_schema_extra={"update": "hot", "image": True},
        description="Image prompt (IP-Adapter): a data:image/...;base64 URL or an upload (PUT /v1/sessions/{id}/images/image_prompt), "
        "kept as its sha256: name; or 'input' for the next input frame.")
    image_prompt_weight: float = _hot(default=0.6, ge=0.0, le=2.0, description="How strongly the image prompt steers.")
    loras: dict[str, float] = _hot(default={}, description="LoRAs and their weights (-2..2), by the names the server loaded.")

    @field_validator("image_prompt")
    @classmethod
    def _image_prompt(cls, value: str | None) -> str | None:
        return normalise_image_prompt(value)

    @field_validator("loras")
    @classmethod
    def _loras(cls, value: dict[str, float]) -> dict[str, float]:
        check_loras(value)
        return value

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> StreamDiffusionParams:
        idx = self.t_index_list
        if any(i < 0 or i >= NUM_T_INDICES for i in idx):
            raise ValueError(f"t_index_list values must be in 0..{NUM_T_INDICES - 1}, got {idx}")
        if any(b <= a for a, b in zip(idx, idx[1:])):
            raise ValueError(f"t_index_list must be strictly increasing, got {idx}")
        self._normalise_schedule(requested_fields(self, info))
        if self.mode == "txt2img" and self.cfg_type in ("self", "onetime") and self.guidance_scale > 1:
            raise ValueError(
                f"cfg_type {self.cfg_type!r} needs an input image (its residual noise is measured against it); "
                "use 'none' or 'full' with txt2img")
        if self.mode == "txt2img":
            needs_input = [c.preprocessor for c in self.controlnets if c.preprocessor not in ("previous_output",)]
            if needs_input or self.image_prompt == INPUT:
                what = f"preprocessor {needs_input[0]!r}" if needs_input else "image_prompt 'input'"
                raise ValueError(f"{what} needs an input frame; use previous_output or an uploaded picture with txt2img")
        if self.prompts is not None and sum(p.weight for p in self.prompts) <= 0:
            raise ValueError("prompts: the weights must not all be zero")
        if self.seeds is not None and sum(s.weight for s in self.seeds) <= 0:
            raise ValueError("seeds: the weights must not all be zero")
        return self


    def _normalise_schedule(self, requested: set[str]) -> None:
        """`t_index_list`, `steps` and `strength` made consistent (see the module docstring).
        Assigned through __dict__: the values are already validated, and assigning fields would
        mark them as given."""
        values = self.__dict__
        if "t_index_list" in requested:
            steps = len(self.t_index_list)
            if "steps" in requested and self.steps != steps:
                raise ValueError(f"steps ({self.steps}) disagrees with t_index_list {self.t_index_list}; give one of them")
            values["steps"] = steps
            if self.strength is not None and strength_to_t_index_list(self.strength, steps) != self.t_index_list:
                if "strength" in requested:
                    raise ValueError(f"strength {self.strength} makes t_index_list "
                                     f"{strength_to_t_index_list(self.strength, steps)}, not {self.t_index_list}; give one of them")
                values["strength"] = None  # an explicit schedule replaces the shorthand
        elif self.strength is not None:
            values["t_index_list"] = strength_to_t_index_list(self.strength, self.steps)
        elif self.steps != len(self.t_index_list):
            values["t_index_list"] = resample_t_index_list(self.t_index_list, self.steps)


# The last index of StreamDiffusion's usual schedules ([32, 45], [35, 45], [0, 16, 32, 45]):
# timestep 99, low enough that the last step mostly sharpens.
_LAST_INDEX = 45


def strength_to_t_index_list(strength: float, steps: int) -> list[int]:
    """Map img2img strength (0 keeps the input, 1 starts from pure noise) to `steps` indices.

    The first index starts at timestep ~strength*999; the rest are spread evenly down to index
    45 (timestep 99), or packed right after the first one when strength is too low for that.
    """
    first = min(NUM_T_INDICES - steps, round((1.0 - strength) * (NUM_T_INDICES - 1)))
    if steps == 1:
        return [first]
    last = max(_LAST_INDEX, first + steps - 1)
    last = min(last, NUM_T_INDICES - 1)
    span = last - first
    idx = [first + round(span * k / (steps - 1)) for k in range(steps)]
    for k in range(1, steps):  # keep strictly increasing after rounding
        idx[k] = max(idx[k], idx[k - 1] + 1)
    return idx


def resample_t_index_list(t_index_list: list[int], steps: int) -> list[int]:
    """An explicit schedule with `steps` steps, keeping its first and last index. Fewer steps
    keep evenly chosen indices of the schedule; more spread evenly between the ends (a one-step
    schedule's end is strength's: index 45, or packed after the first when that is later)."""
    count = len(t_index_list)
    if steps == count:
        return list(t_index_list)
    if steps < count:
        if steps == 1:
            return [t_index_list[0]]
        return [t_index_list[round(k * (count - 1) / (steps - 1))] for k in range(steps)]
    first = t_index_list[0]
    last = t_index_list[-1] if count > 1 else max(_LAST_INDEX, first + steps - 1)
    last = min(max(last, first + steps - 1), NUM_T_INDICES - 1)
    if last - first + 1 < steps:
        raise ValueError(f"t_index_list {t_index_list} starts too late for {steps} steps (indices end at {NUM_T_INDICES - 1})")
    idx = [first + round((last - first) * k / (steps - 1)) for k in range(steps)]
    for k in range(1, steps):  # keep strictly increasing after rounding
        idx[k] = max(idx[k], idx[k - 1] + 1)
    return idx
