"""Streaming video VAEs: encode and decode a few frames per call, carrying the causal state.

Both compress time 4x with the 1+4k convention: a stream's first latent frame encodes its first
picture alone, every later latent frame four pictures; decoding mirrors it (1 picture, then 4 per
latent). Every call processes only the new frames: the state a causal temporal convolution needs
from earlier frames lives in a per-stream `VAEStreamState`, never on the shared model.

- `WanStreamingVAE`: the Wan2.1 VAE (diffusers' `AutoencoderKLWan`); its causal 3-D convolutions
  keep their last two temporal slices in a feature cache list, which we own per stream.
- `TinyStreamingVAE`: a few-thousand-parameter stand-in for tests (tiny-video): pixel unshuffle,
  per-frame projections and a one-step causal term, in well under a millisecond per chunk. It has
  a per-channel latent mean and std like Wan's, so both latent conventions are exercised.

Decoding takes normalised latents (it un-normalises them first). Encoding normalises unless told
not to: StreamDiffusionV2 feeds its transformer raw encoded latents (models/video/presets.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

FRAMES_PER_LATENT = 4


@dataclass
class VAEStreamState:
    """One stream's causal memory of the encoder and the decoder."""

    encoder: list[Any] = field(default_factory=list)
    decoder: list[Any] = field(default_factory=list)
    encoded: int = 0  # latent frames produced so far
    decoded: int = 0  # latent frames decoded so far


class StreamingVAE(Protocol):
    latent_channels: int
    spatial_factor: int

    def new_state(self) -> VAEStreamState: ...

    def encode(self, frames: torch.Tensor, state: VAEStreamState, normalise: bool = True) -> torch.Tensor:
        """(1, 3, F, H, W) in [-1, 1] -> (1, C, F', H/8, W/8) latents, normalised unless told not
        to; F = 1 + 4k on a stream's first call, 4k after."""

    def decode(self, latents: torch.Tensor, state: VAEStreamState) -> torch.Tensor:
        """(1, C, F', h, w) -> (1, 3, F, 8h, 8w) in [-1, 1]; F = 1 + 4(F'-1) on the first call, 4F' after."""


def pixel_frames(latent_frames: int, first: bool) -> int:
    """How many pictures `latent_frames` latent frames stand for."""
    return FRAMES_PER_LATENT * latent_frames - (3 if first else 0)


def _groups(frames: int, first: bool) -> list[slice]:
    """The picture groups that make one latent frame each (1 then 4s on a first call)."""
    start, groups = 0, []
    if first:
        groups.append(slice(0, 1))
        start = 1
    if (frames - start) % FRAMES_PER_LATENT:
        raise ValueError(f"expected {'1 + ' if first else ''}a multiple of {FRAMES_PER_LATENT} frames, got {frames}")
    groups += [slice(s, s + FRAMES_PER_LATENT) for s in range(start, frames, FRAMES_PER_LATENT)]
    return groups


class WanStreamingVAE:
    def __init__(self, vae):
        self.vae = vae
        self.latent_channels = vae.config.z_dim
        self.spatial_factor = vae.spatial_compression_ratio
        mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
        std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
        self._mean, self._std = mean, std

    def new_state(self) -> VAEStreamState:
        counts = self.vae._cached_conv_counts
        return VAEStreamState(encoder=[None] * counts["encoder"], decoder=[None] * counts["decoder"])

    @torch.no_grad()
    def encode(self, frames: torch.Tensor, state: VAEStreamState, normalise: bool = True) -> torch.Tensor:
        vae = self.vae
        x = frames.to(vae.dtype)
        parts = [vae.encoder(x[:, :, g], feat_cache=state.encoder, feat_idx=[0]) for g in _groups(x.shape[2], state.encoded == 0)]
        moments = vae.quant_conv(torch.cat(parts, dim=2))
        mean = moments[:, : self.latent_channels]  # the posterior's mode: no sampling noise in a stream
        state.encoded += mean.shape[2]
        return (mean - self._mean.to(mean)) / self._std.to(mean) if normalise else mean

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, state: VAEStreamState) -> torch.Tensor:
        vae = self.vae
        z = latents.to(vae.dtype) * self._std.to(latents.device, vae.dtype) + self._mean.to(latents.device, vae.dtype)
        x = vae.post_quant_conv(z)
        parts = []
        for i in range(x.shape[2]):
            first = state.decoded == 0
            parts.append(vae.decoder(x[:, :, i : i + 1], feat_cache=state.decoder, feat_idx=[0], first_chunk=first))
            state.decoded += 1
        return torch.cat(parts, dim=2).clamp(-1, 1)


class TinyStreamingVAE(nn.Module):
    """Spatial 8x by pixel unshuffle and 1x1 projections; temporal 4x by averaging each group's
    picture features plus a learned term from the previous group's last picture (the causal
    state); decoding emits 4 pictures per latent from it and the previous latent. A fixed
    per-channel mean and std (seeded, like the weights) normalise latents as Wan's do."""

    def __init__(self, latent_channels: int = 4, hidden: int = 32, spatial_factor: int = 8):
        super().__init__()
        self.latent_channels = latent_channels
        self.spatial_factor = spatial_factor
        pixels = 3 * spatial_factor**2
        self.encode_frame = nn.Linear(pixels, hidden)
        self.encode_previous = nn.Linear(hidden, hidden)
        self.encode_out = nn.Linear(hidden, latent_channels)
        self.decode_latent = nn.Linear(latent_channels, hidden)
        self.decode_previous = nn.Linear(latent_channels, hidden)
        self.decode_out = nn.Linear(hidden, FRAMES_PER_LATENT * pixels)
        self.register_buffer("latents_mean", 0.5 * torch.randn(latent_channels))
        self.register_buffer("latents_std", 0.5 + torch.rand(latent_channels))

    def _statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.latents_mean.view(1, -1, 1, 1, 1), self.latents_std.view(1, -1, 1, 1, 1)

    def new_state(self) -> VAEStreamState:
        return VAEStreamState()

    @torch.no_grad()
    def encode(self, frames: torch.Tensor, state: VAEStreamState, normalise: bool = True) -> torch.Tensor:
        b, _, f, h, w = frames.shape
        s = self.spatial_factor
        pixels = F.pixel_unshuffle(frames.transpose(1, 2).flatten(0, 1).to(self.encode_frame.weight.dtype), s)
        feats = F.silu(self.encode_frame(pixels.view(b, f, -1, h // s, w // s).movedim(2, -1)))  # (b, f, h, w, hidden)
        previous = state.encoder[0] if state.encoder else torch.zeros_like(feats[:, 0])
        latents = []
        for group in _groups(f, state.encoded == 0):
            g = feats[:, group]
            latents.append(self.encode_out(g.mean(dim=1) + self.encode_previous(previous)))
            previous = g[:, -1]
        state.encoder = [previous]
        state.encoded += len(latents)
        raw = torch.stack(latents, dim=1).movedim(-1, 1)  # (b, C, F', h, w)
        mean, std = self._statistics()
        return (raw - mean) / std if normalise else raw

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, state: VAEStreamState) -> torch.Tensor:
        b, c, f, h, w = latents.shape
        s = self.spatial_factor
        mean, std = self._statistics()
        z = (latents.to(self.decode_latent.weight.dtype) * std + mean).movedim(1, -1)  # (b, F', h, w, C)
        previous = state.decoder[0] if state.decoder else torch.zeros_like(z[:, 0])
        pictures = []
        for i in range(f):
            out = self.decode_out(F.silu(self.decode_latent(z[:, i]) + self.decode_previous(previous)))
            out = out.view(b, h, w, FRAMES_PER_LATENT, -1).movedim(3, 1).movedim(-1, 2)  # (b, 4, 3*s*s, h, w)
            if state.decoded == 0:
                out = out[:, -1:]  # a stream's first latent is one picture
            pictures.append(F.pixel_shuffle(out.flatten(0, 1), s).view(b, out.shape[1], 3, h * s, w * s))
            previous = z[:, i]
            state.decoded += 1
        state.decoder = [previous]
        return torch.tanh(torch.cat(pictures, dim=1)).transpose(1, 2)
