"""Named model sets for the stream-diffusion pipeline.

A preset says which weights to load (a hub id or a local folder in diffusers layout), which
architecture they have (`models/configs/<config>/*.json`, numbers only, so `--random-weights`
builds the same shapes with no download) and the pipeline defaults that suit them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal


class UnknownPresetError(ValueError):
    pass


@dataclass(frozen=True)
class DiffusionPreset:
    name: str
    description: str
    family: Literal["sd", "sdxl"]
    config: str
    """Folder under models/configs with unet.json, vae.json, text_encoder*.json, scheduler.json."""
    base_model: str | None = None
    """Hub id of the diffusers repository (unet/, text_encoder/, tokenizer/, scheduler/ ...)."""
    tiny_vae: str | None = None
    """Hub id of the TAESD-family AutoencoderTiny that replaces the full VAE."""
    lora: str | None = None
    """Hub id of a LoRA fused into the UNet at load time (LCM-LoRA for SD 1.5)."""
    weights: str | None = None
    """Folder under models/weights with the preset's weights, shipped inside the package."""
    autoencoder: Literal["tiny", "patch"] = "tiny"
    """The autoencoder class: diffusers' AutoencoderTiny, or models.patch_autoencoder.PatchAutoencoder."""
    text_hidden_layer: Literal["last", "penultimate"] = "last"
    """Which text-encoder layer conditions the UNet: SD 1.x/2.x use the last, SDXL the penultimate."""
    boundary_condition: Literal["lcm", "none"] = "lcm"
    """LCM's c_skip/c_out around the x0 estimate; turbo models were distilled without it."""
    defaults: dict[str, Any] = field(default_factory=dict)
    """Pipeline parameter defaults for this model (see pipelines/stream_diffusion/params.py)."""
    styles: tuple[str, ...] = ()
    """A model that knows a fixed set of styles: the prompts that work, best first (the demo's style picker).
    Empty: any prompt goes."""
    from_text: bool = True
    """Whether the model generates from a prompt alone (txt2img); the style model only restyles an input."""

    @property
    def built_in(self) -> bool:
        """Built in-process with seeded random weights: no files, no download (tests, CI)."""
        return self.base_model is None and self.weights is None

    @property
    def embedded(self) -> bool:
        """Trained weights ship inside the package: loaded from files, never downloaded."""
        return self.weights is not None

    def weights_dir(self):
        """The embedded weights folder (diffusers layout; `training.json` says how it was made)."""
        return resources.files("models") / "weights" / self.weights

    def config_json(self, part: str) -> dict[str, Any] | None:
        """The architecture config of one component, or None when the preset has no such part."""
        import json

        path = resources.files("models") / "configs" / self.config / f"{part}.json"
        if not path.is_file():
            return None
        return json.loads(path.read_text())


# One step at timestep 99, inside the range the model was trained on (docs/style-model.md).
STYLE_DEFAULTS = {"prompt": "pencil sketch", "t_index_list": [45], "cfg_type": "none", "guidance_scale": 1.0, "width": 256, "height": 256}
_TURBO_DEFAULTS = {"t_index_list": [35, 45], "cfg_type": "none", "guidance_scale": 1.0, "width": 512, "height": 512}

PRESETS: dict[str, DiffusionPreset] = {
    p.name: p
    for p in (
        DiffusionPreset(
            name="tiny",
            description="Tiny SD-shaped models built in-process with random weights (tests, CI, transport checks).",
            family="sd",
            config="tiny",
            defaults={"t_index_list": [32, 45], "cfg_type": "self", "guidance_scale": 1.2, "width": 256, "height": 256},
        ),
        DiffusionPreset(
            name="tiny-sdxl",
            description="Tiny SDXL-shaped models (two text encoders, pooled embeddings, time ids) built in-process.",
            family="sdxl",
            config="tiny-sdxl",
            text_hidden_layer="penultimate",
            defaults={"t_index_list": [32, 45], "cfg_type": "none", "guidance_scale": 1.0, "width": 256, "height": 256},
        ),
        DiffusionPreset(
            name="style",
            description="Small style-transfer model trained by models/training and shipped in the package "
            "(pencil sketch, watercolor, thermal camera, pixel art, neon edges, oil painting), 256x256.",
            family="sd",
            config="style",
            weights="style",
            autoencoder="patch",
            boundary_condition="none",
            defaults=STYLE_DEFAULTS,
            # Measured on held-out photos (docs/style-model.md); pixel art is trained but gives blur, so it is left out.
            styles=("pencil sketch", "thermal camera", "neon edges", "watercolor", "oil painting"),
            from_text=False,
        ),
        DiffusionPreset(
            name="sd-turbo",
            description="stabilityai/sd-turbo (SD 2.1 distilled for 1-4 steps) with the TAESD tiny VAE, 512x512.",
            family="sd",
            config="sd21-turbo",
            base_model="stabilityai/sd-turbo",
            tiny_vae="madebyollin/taesd",
            boundary_condition="none",
            defaults=_TURBO_DEFAULTS,
        ),
        DiffusionPreset(
            name="sdxl-turbo",
            description="stabilityai/sdxl-turbo with the TAESDXL tiny VAE, 512x512.",
            family="sdxl",
            config="sdxl-turbo",
            base_model="stabilityai/sdxl-turbo",
            tiny_vae="madebyollin/taesdxl",
            text_hidden_layer="penultimate",
            boundary_condition="none",
            defaults=_TURBO_DEFAULTS,
        ),
        DiffusionPreset(
            name="sd15-lcm",
            description="Stable Diffusion 1.5 with the LCM-LoRA fused and the TAESD tiny VAE, 512x512.",
            family="sd",
            config="sd15",
            base_model="stable-diffusion-v1-5/stable-diffusion-v1-5",
            tiny_vae="madebyollin/taesd",
            lora="latent-consistency/lcm-lora-sdv1-5",
            defaults={"t_index_list": [32, 45], "cfg_type": "self", "guidance_scale": 1.2, "delta": 1.0, "width": 512, "height": 512},
        ),
    )
}


def preset_names() -> list[str]:
    return list(PRESETS)


def get_preset(name: str) -> DiffusionPreset:
    try:
        return PRESETS[name]
    except KeyError:
        raise UnknownPresetError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None
