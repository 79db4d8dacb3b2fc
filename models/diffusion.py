"""The loaded parts of a latent diffusion model and the few operations pipelines need from them.

Pipelines talk to `DiffusionModels` only: encode prompts, encode and decode images, predict
noise. The SD-vs-SDXL differences (two text encoders, pooled embeddings, size conditioning)
stay in here, so the stream-diffusion pipeline has one code path for every preset.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

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

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell: the patch size of a PatchAutoencoder, else 2 per upsampling
        stage of the decoder."""
        if "patch_size" in self.vae.config:
            return int(self.vae.config.patch_size)
        return 2 ** (len(self.vae.config.decoder_block_out_channels) - 1)

    @torch.no_grad()
    def encode_prompt(self, texts: list[str]) -> PromptEmbeds:
        hidden_parts, pooled = [], None
        for tokenizer, encoder in zip(self.tokenizers, self.text_encoders):
            ids = tokenizer(
                texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
            ).input_ids.to(self.device)
            penultimate = self.preset.text_hidden_layer == "penultimate"
            out = encoder(ids, output_hidden_states=penultimate)
            hidden_parts.append(out.hidden_states[-2] if penultimate else out.last_hidden_state)
            if getattr(out, "text_embeds", None) is not None:
                pooled = out.text_embeds  # SDXL: the projected embedding of CLIPTextModelWithProjection
        return PromptEmbeds(torch.cat(hidden_parts, dim=-1).to(self.dtype), None if pooled is None else pooled.to(self.dtype))

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> latents in the UNet's scale."""
        latents = self.vae.encode(images.to(self.dtype)).latents
        return latents * self.vae.config.scaling_factor

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> (B, 3, H, W) in [-1, 1]."""
        images = self.vae.decode(latents / self.vae.config.scaling_factor).sample
        return images.clamp(-1, 1)

    @torch.no_grad()
    def predict(self, latents: torch.Tensor, timesteps: torch.Tensor, embeds: PromptEmbeds) -> torch.Tensor:
        """The UNet's raw output for each row (its own timestep and conditioning per row)."""
        added = None
        if self.preset.family == "sdxl":
            height, width = (s * self.vae_scale_factor for s in latents.shape[-2:])
            # SDXL's size conditioning: original size, crop top-left, target size.
            time_ids = torch.tensor([height, width, 0, 0, height, width], device=self.device, dtype=self.dtype)
            added = {"text_embeds": embeds.pooled, "time_ids": time_ids.expand(latents.shape[0], -1)}
        return self.unet(
            latents, timesteps, encoder_hidden_states=embeds.hidden, added_cond_kwargs=added, return_dict=False
        )[0]
