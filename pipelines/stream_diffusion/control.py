"""Creative controls of one stream-diffusion stream: what its rows ask the UNet for.

- ControlNets: the control images of a frame are made when it enters (all streams' at once,
  `preprocessors.py`) and travel with it through the Stream Batch slots, so a frame is denoised
  under its own control image at every step, as sequential denoising would (the equivalence
  tests compare exactly that). The scales in force apply to every frame in flight.
- The image prompt: its tokens are computed once per picture and kept per stream (a few
  pictures back, so switching between two does not embed again); 'input' takes the stream's
  next input frame. Guidance rows (cfg full/onetime) get the tokens of no image.
- LoRAs: the stream's set and weights apply to all its rows.
Everything a stream chose lives in its state (`StreamControls`); the models are shared.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from itertools import groupby

import torch

from models.control.conditioned_unet import RowControl
from models.control.registry import UnknownControlError
from models.diffusion import DiffusionModels
from pipelines.base import ParamError
from pipelines.stream_diffusion import control_images
from pipelines.stream_diffusion.control_params import INPUT, ControlNetChoice
from pipelines.stream_diffusion.params import StreamDiffusionParams
from pipelines.stream_diffusion.preprocessors import control_images as run_preprocessor

CONTROL_FIELDS = {"controlnets", "image_prompt", "image_prompt_weight", "loras"}
IMAGE_TOKEN_CACHE = 4  # pictures whose tokens a stream keeps

ImageKey = tuple[str, int, int]
FrameImages = dict[ImageKey, torch.Tensor]
"""A frame's control images by what made them (ControlNetChoice.image_key), each (3, H, W) in [0, 1]."""


@dataclass
class StreamControls:
    """A stream's control state, part of its StreamState."""

    slot_images: list[FrameImages | None] = field(default_factory=list)
    """The control images of the frames in flight, aligned with StreamState.slots."""
    ip_tokens: torch.Tensor | None = None
    """(TOKENS, D) tokens of the image prompt in force; None: no image prompt (or 'input' not taken yet)."""
    ip_negative: torch.Tensor | None = None
    ip_cache: OrderedDict[str, torch.Tensor] = field(default_factory=OrderedDict)
    take_input: bool = False
    """image_prompt is 'input' and the next input frame becomes the picture."""
    preview: dict[str, torch.Tensor] = field(default_factory=dict)
    """The newest control image of each ControlNet (`control-0`, ...), for the demo to show."""


def active(params: StreamDiffusionParams) -> bool:
    return bool(params.controlnets or params.image_prompt or params.loras)


def new_controls(models: DiffusionModels, params: StreamDiffusionParams, steps: int) -> StreamControls:
    controls = StreamControls(slot_images=[None] * (steps - 1))
    apply_changes(models, controls, params, CONTROL_FIELDS)
    return controls


def apply_changes(models: DiffusionModels, controls: StreamControls, params: StreamDiffusionParams, changed: set[str]) -> None:
    """Check the names against the loaded models and embed a new image prompt; ParamError (and
    `controls` untouched) when something is refused."""
    registry = models.controls
    try:
        for choice in params.controlnets:
            registry.controlnet(choice.model)
    except UnknownControlError as err:
        raise ParamError(f"controlnets: {err}", field="controlnets") from None
    try:
        for name in params.loras:
            registry.lora(name)
    except UnknownControlError as err:
        raise ParamError(f"loras: {err}", field="loras") from None
    if "image_prompt" not in changed:
        return
    value = params.image_prompt
    if value is not None and registry.ip_adapter is None:
        raise ParamError("image_prompt: no IP-Adapter is loaded (start the server with --ip-adapter SOURCE)", field="image_prompt")
    tokens = None
    if value is not None and value != INPUT:
        tokens = controls.ip_cache.get(value)
        if tokens is None:
            picture = control_images.picture(value)
            if picture is None:
                raise ParamError(f"image_prompt: no picture {value} on this server (it may have been dropped); send it again",
                                 field="image_prompt")
            tokens = _embed(models, torch.from_numpy(picture).permute(2, 0, 1).unsqueeze(0).float() / 255)[0]
    if value is not None and controls.ip_negative is None:
        controls.ip_negative = registry.ip_adapter.negative_tokens()[0]
    controls.take_input = value == INPUT
    controls.ip_tokens = tokens
    if tokens is not None:
        _remember(controls, value, tokens)


def take_input_pictures(models: DiffusionModels, streams: list[tuple[StreamControls, torch.Tensor]]) -> None:
    """The streams waiting for an input frame as their image prompt take this one (all in one encoder call)."""
    if not streams:
        return
    tokens = _embed(models, torch.cat([(picture + 1) / 2 for _, picture in streams]))
    for (controls, _), row in zip(streams, tokens):
        controls.ip_tokens, controls.take_input = row, False


def frame_images(requests: list[tuple[ControlNetChoice, torch.Tensor]]) -> list[torch.Tensor]:
    """The control image of each (choice, picture (1, 3, H, W) in [-1, 1]) request, preprocessors
    run once per kind over every stream's pictures of this step."""
    results: list[torch.Tensor | None] = [None] * len(requests)
    order = sorted(range(len(requests)), key=lambda i: requests[i][0].preprocessor)
    for kind, members in groupby(order, key=lambda i: requests[i][0].preprocessor):
        indices = list(members)
        by_size = sorted(indices, key=lambda i: tuple(requests[i][1].shape))
        for _, same in groupby(by_size, key=lambda i: tuple(requests[i][1].shape)):
            group = list(same)
            images = run_preprocessor(kind, torch.cat([requests[i][1] for i in group]),
                                      [requests[i][0].low_threshold for i in group], [requests[i][0].high_threshold for i in group])
            for i, image in zip(group, images):
                results[i] = image
    return [image for image in results if image is not None]  # every request got one


def row_controls(params: StreamDiffusionParams, controls: StreamControls, slot_images: list[FrameImages | None],
                 newest: FrameImages | None, guidance: bool) -> list[RowControl]:
    """One RowControl per row (one per slot given): the ControlNets with the slot frame's images
    (the newest frame's when a slot's frame entered before that ControlNet was chosen), the
    image prompt (no image for guidance rows), the LoRAs."""
    loras = tuple((name, weight) for name, weight in sorted(params.loras.items()) if weight)
    tokens = controls.ip_negative if guidance else controls.ip_tokens
    weight = params.image_prompt_weight if controls.ip_tokens is not None else 0.0
    rows = []
    for images in slot_images:
        nets = []
        for choice in params.controlnets:
            image = (images or {}).get(choice.image_key)
            if image is None and newest is not None:
                image = newest.get(choice.image_key)
            if image is not None and choice.scale:
                nets.append((choice.model, image, choice.scale))
        rows.append(RowControl(tuple(nets), tokens if weight else None, weight, loras))
    return rows


def _embed(models: DiffusionModels, pictures: torch.Tensor) -> torch.Tensor:
    adapter = models.controls.ip_adapter
    assert adapter is not None
    return adapter.tokens(pictures.to(models.device))


def _remember(controls: StreamControls, name: str, tokens: torch.Tensor) -> None:
    controls.ip_cache[name] = tokens
    controls.ip_cache.move_to_end(name)
    while len(controls.ip_cache) > IMAGE_TOKEN_CACHE:
        controls.ip_cache.popitem(last=False)
