"""The loaded parts of a latent diffusion model and the few operations pipelines need from them.

Pipelines talk to `DiffusionModels` only: encode prompts, encode and decode images, predict
noise. The SD-vs-SDXL differences (two text encoders, pooled embeddings, size conditioning)
stay in here, so the stream-diffusion pipeline has one code path for every preset. Each model
call goes through its component's engine (`models.engines`: eager, torch.compile or ONNX
Runtime), so neither the pipeline nor these methods' callers know which one runs it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from models.control.registry import ControlModels
from models.engines.diffusion_parts import DiffusionEngines
from models.presets import DiffusionPreset
from models.source import ModelSource


@dataclass
class PromptEmbeds:
    """Text conditioning for a batch of rows: `hidden` (B, L, D) for cross-attention, and for
    SDXL `pooled` (B, P), the pooled embedding of the second text encoder."""

    hidden: torch.Tensor
    pooled: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.hidden.shape[0]

    def map(self, fn) -> PromptEmbeds:
        """Apply a tensor function to every part (indexing, repeating, mixing)."""
        return PromptEmbeds(fn(self.hidden), None if self.pooled is None else fn(self.pooled))

    @staticmethod
    def cat(parts: list[PromptEmbeds]) -> PromptEmbeds:
        pooled = None if parts[0].pooled is None else torch.cat([p.pooled for p in parts])
        return PromptEmbeds(torch.cat([p.hidden for p in parts]), pooled)


def vae_scale_factor(vae: Any) -> int:
    """Pixels per latent cell: the patch size of a PatchAutoencoder, else 2 per upsampling stage
    of the decoder."""
    if "patch_size" in vae.config:
        return int(vae.config.patch_size)
    return 2 ** (len(vae.config.decoder_block_out_channels) - 1)


@dataclass
class DiffusionModels:
    """Weights shared by every stream of a pipeline. Nothing per-stream is stored here."""

    preset: DiffusionPreset
    unet: Any  # diffusers UNet2DConditionModel
    vae: Any  # diffusers AutoencoderTiny, or models.patch_autoencoder.PatchAutoencoder
    text_encoders: list[Any]  # CLIPTextModel, and CLIPTextModelWithProjection for SDXL
    tokenizers: list[Any]
    alphas_cumprod: torch.Tensor  # (num_train_timesteps,) float64, on the CPU
    prediction_type: str  # "epsilon", "v_prediction" or "sample"
    device: torch.device
    dtype: torch.dtype
    source: ModelSource
    """How to load the same weights elsewhere (a stage process on another device)."""
    engines: DiffusionEngines
    """What runs each model call: the UNet, the VAE's encoder and decoder, each text encoder."""
    controls: ControlModels = field(default_factory=ControlModels)
    """ControlNets, IP-Adapter and LoRAs loaded beside the UNet (models/control, docs/control.md)."""

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def vae_scale_factor(self) -> int:
        return vae_scale_factor(self.vae)

    @torch.no_grad()
    def encode_prompt(self, texts: list[str]) -> PromptEmbeds:
        hidden_parts, pooled = [], None
        for tokenizer, encoder in zip(self.tokenizers, self.engines.text_encoders):
            ids = tokenizer(
                texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
            ).input_ids.to(self.device)
            out = encoder(ids)
            if isinstance(out, tuple):  # SDXL: the projected embedding of CLIPTextModelWithProjection
                out, pooled = out
            hidden_parts.append(out)
        return PromptEmbeds(torch.cat(hidden_parts, dim=-1).to(self.dtype), None if pooled is None else pooled.to(self.dtype))

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> latents in the UNet's scale."""
        return self.engines.vae_encoder(images.to(self.dtype))

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> (B, 3, H, W) in [-1, 1]."""
        return self.engines.vae_decoder(latents)

    @torch.no_grad()
    def predict(self, latents: torch.Tensor, timesteps: torch.Tensor, embeds: PromptEmbeds) -> torch.Tensor:
        """The UNet's raw output for each row (its own timestep and conditioning per row)."""
        if self.preset.family != "sdxl":
            return self.engines.unet(latents, timesteps, embeds.hidden)
        height, width = (s * self.vae_scale_factor for s in latents.shape[-2:])
        # SDXL's size conditioning: original size, crop top-left, target size.
        time_ids = torch.tensor([height, width, 0, 0, height, width], device=self.device, dtype=self.dtype)
        return self.engines.unet(latents, timesteps, embeds.hidden, embeds.pooled, time_ids.expand(latents.shape[0], -1))
