"""The image-diffusion components as functions of tensors, each behind its engine.

An engine runs a function of tensors with the rows first, not a diffusers model with keyword
arguments and output dataclasses; these wrappers are that function, the same for eager and
every engine (what is exported and compiled is exactly what eager runs). The VAE's scaling and
the decoder's clamp live inside them, so engines fuse them too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from models.engines.cache import EngineCache
from models.engines.component import ComponentEngine
from models.engines.kinds import EngineChoice


class UNetCall(nn.Module):
    """(latents, timesteps, hidden) -> the UNet's prediction; SDXL adds (text_embeds, time_ids)."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, latents, timesteps, hidden, text_embeds=None, time_ids=None):
        added = None if text_embeds is None else {"text_embeds": text_embeds, "time_ids": time_ids}
        return self.unet(latents, timesteps, encoder_hidden_states=hidden, added_cond_kwargs=added, return_dict=False)[0]


class VaeEncodeCall(nn.Module):
    """Images (B, 3, H, W) in [-1, 1] -> latents in the UNet's scale."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, images):
        return self.vae.encode(images).latents * self.vae.config.scaling_factor


class VaeDecodeCall(nn.Module):
    """Latents in the UNet's scale -> images (B, 3, H, W) in [-1, 1]."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, latents):
        return self.vae.decode(latents / self.vae.config.scaling_factor).sample.clamp(-1, 1)


class TextEncodeCall(nn.Module):
    """Token ids (B, L) -> the hidden states that condition the UNet (the last or the penultimate
    layer's), and for SDXL's second encoder also its pooled projection."""

    def __init__(self, encoder: nn.Module, penultimate: bool):
        super().__init__()
        self.encoder = encoder
        self.penultimate = penultimate
        self.pooled = hasattr(encoder, "text_projection")

    def forward(self, ids):
        out = self.encoder(ids, output_hidden_states=self.penultimate)
        hidden = out.hidden_states[-2] if self.penultimate else out.last_hidden_state
        return (hidden, out.text_embeds) if self.pooled else hidden


@dataclass
class DiffusionEngines:
    unet: ComponentEngine
    vae_encoder: ComponentEngine
    vae_decoder: ComponentEngine
    text_encoders: list[ComponentEngine]


def diffusion_engines(unet: nn.Module, vae: nn.Module, text_encoders: list[Any], penultimate: bool, choice: EngineChoice,
                      device: torch.device, dtype: torch.dtype, cache: EngineCache) -> DiffusionEngines:
    def engine(component: str, module: nn.Module, weights: nn.Module, variant: str = "", scale: bool = True) -> ComponentEngine:
        return ComponentEngine(component, module.eval(), choice.kind_for(component, device), device, dtype, weights=weights,
                               cache=cache, variant=variant, rows_scale_with_streams=scale)

    layer = "penultimate" if penultimate else "last"
    return DiffusionEngines(
        unet=engine("unet", UNetCall(unet), unet),
        vae_encoder=engine("vae_encoder", VaeEncodeCall(vae), vae),
        vae_decoder=engine("vae_decoder", VaeDecodeCall(vae), vae),
        text_encoders=[engine("text_encoder", TextEncodeCall(e, penultimate), e, variant=f"{layer}-layer", scale=False)
                       for e in text_encoders],
    )
