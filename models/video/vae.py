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

Both run their networks through two steps, pure functions of tensors: `encode_step(pictures,
*state) -> (latent, *state)` for one picture group and `decode_step(latent, *state) -> (pictures,
*state)` for one latent frame. A stream's first step takes no state (the first group is one
picture, the first latent one picture); every later step takes the tensors the previous one
returned, whose shapes never change after the first step. So an engine sees two shapes per
picture size and component, first and steady (models/engines/video_vae.py replaces the steps on
the instance), and nothing of a stream's state is held between calls but those tensors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

FRAMES_PER_LATENT = 4
CACHED_SLICES = 2  # diffusers' CACHE_T: the temporal context of a 3-wide causal convolution


@dataclass
class VAEStreamState:
    """One stream's causal memory of the encoder and the decoder."""

    encoder: tuple[torch.Tensor, ...] = ()  # what the last encode_step returned; () before the first
    decoder: tuple[torch.Tensor, ...] = ()
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


Step = Callable[..., tuple[torch.Tensor, ...]]


def _encode_groups(encode_step: Step, x: torch.Tensor, state: VAEStreamState) -> torch.Tensor:
    """Raw latents of `x`, one encoder step per picture group, the stream's state carried along."""
    latents = []
    for group in _groups(x.shape[2], state.encoded == 0):
        latent, *state_after = encode_step(x[:, :, group].contiguous(), *state.encoder)
        state.encoder = tuple(state_after)
        state.encoded += 1
        latents.append(latent)
    return torch.cat(latents, dim=2)


def _decode_frames(decode_step: Step, z: torch.Tensor, state: VAEStreamState) -> torch.Tensor:
    """Pictures of normalised latents `z`, one decoder step per latent frame."""
    pictures = []
    for i in range(z.shape[2]):
        out, *state_after = decode_step(z[:, :, i : i + 1].contiguous(), *state.decoder)
        state.decoder = tuple(state_after)
        state.decoded += 1
        pictures.append(out)
    return torch.cat(pictures, dim=2)


def _explicit_cache(feat_cache: list, used: int) -> tuple[torch.Tensor, ...]:
    """diffusers' feature cache after a call, as tensors of the shapes every later call has.

    Each entry is what a causal convolution keeps of its input for the next call: its last two
    temporal slices, or one after a stream's first picture, which the convolution pads with a zero
    slice in front (here that zero is in the tensor: the same sums). An upsampler's "Rep" (it
    skipped its temporal convolution on the first latent and pads with zeros from the second on)
    becomes two zero slices shaped like the slot before it: the last residual convolution of the
    same block, whose input is the upsampler's input. A downsampler reads only the last slice of
    its entry, so a zero slice in front changes nothing there either. Slots past `used` exist in
    diffusers' count but no layer of this configuration uses them."""
    out: list[torch.Tensor] = []
    for entry in feat_cache[:used]:
        if isinstance(entry, str):
            entry = torch.zeros_like(out[-1])
        elif entry.shape[2] < CACHED_SLICES:
            entry = torch.cat([entry.new_zeros((*entry.shape[:2], CACHED_SLICES - entry.shape[2], *entry.shape[3:])), entry], dim=2)
        out.append(entry[:, :, -CACHED_SLICES:])
    return tuple(out)


class WanStreamingVAE:
    def __init__(self, vae):
        self.vae = vae
        self.latent_channels = vae.config.z_dim
        self.spatial_factor = vae.spatial_compression_ratio
        mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
        std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
        self._mean, self._std = mean, std

    def new_state(self) -> VAEStreamState:
        return VAEStreamState()

    @torch.no_grad()
    def encode(self, frames: torch.Tensor, state: VAEStreamState, normalise: bool = True) -> torch.Tensor:
        mean = _encode_groups(self.encode_step, frames.to(self.vae.dtype), state)
        return (mean - self._mean.to(mean)) / self._std.to(mean) if normalise else mean

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, state: VAEStreamState) -> torch.Tensor:
        return _decode_frames(self.decode_step, latents.to(self.vae.dtype), state)

    def encode_step(self, pictures: torch.Tensor, *cache: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """One picture group -> its raw latent frame (the posterior's mode: no sampling noise in a
        stream), and the encoder's cache."""
        vae = self.vae
        feat_cache, feat_idx = [*cache, *[None] * (vae._cached_conv_counts["encoder"] - len(cache))], [0]
        moments = vae.quant_conv(vae.encoder(pictures, feat_cache=feat_cache, feat_idx=feat_idx))
        return (moments[:, : self.latent_channels], *_explicit_cache(feat_cache, feat_idx[0]))

    def decode_step(self, latent: torch.Tensor, *cache: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """One normalised latent frame -> its pictures in [-1, 1] (1 for a stream's first, else 4),
        and the decoder's cache."""
        vae = self.vae
        z = latent * self._std.to(latent) + self._mean.to(latent)
        feat_cache, feat_idx = [*cache, *[None] * (vae._cached_conv_counts["decoder"] - len(cache))], [0]
        pictures = vae.decoder(vae.post_quant_conv(z), feat_cache=feat_cache, feat_idx=feat_idx, first_chunk=len(cache) == 0)
        return (pictures.clamp(-1, 1), *_explicit_cache(feat_cache, feat_idx[0]))


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
        raw = _encode_groups(self.encode_step, frames.to(self.encode_frame.weight.dtype), state)
        mean, std = self._statistics()
        return (raw - mean) / std if normalise else raw

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, state: VAEStreamState) -> torch.Tensor:
        return _decode_frames(self.decode_step, latents.to(self.decode_latent.weight.dtype), state)

    def encode_step(self, pictures: torch.Tensor, *previous: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """One picture group (b, 3, 1 or 4, H, W) -> its raw latent frame (b, C, 1, h, w), and the
        features of its last picture (the next group's causal term; zeros before the first)."""
        b, _, f, h, w = pictures.shape
        s = self.spatial_factor
        pixels = F.pixel_unshuffle(pictures.transpose(1, 2).flatten(0, 1), s)
        feats = F.silu(self.encode_frame(pixels.view(b, f, -1, h // s, w // s).movedim(2, -1)))  # (b, f, h, w, hidden)
        before = previous[0] if previous else torch.zeros_like(feats[:, 0])
        latent = self.encode_out(feats.mean(dim=1) + self.encode_previous(before))  # (b, h, w, C)
        return latent.movedim(-1, 1).unsqueeze(2), feats[:, -1]

    def decode_step(self, latent: torch.Tensor, *previous: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """One normalised latent frame (b, C, 1, h, w) -> its pictures in [-1, 1] (b, 3, 1 for a
        stream's first latent or 4, 8h, 8w), and its un-normalised latent (the next one's causal term)."""
        b, c, _, h, w = latent.shape
        s = self.spatial_factor
        mean, std = self._statistics()
        z = (latent * std + mean)[:, :, 0].movedim(1, -1)  # (b, h, w, C)
        before = previous[0] if previous else torch.zeros_like(z)
        out = self.decode_out(F.silu(self.decode_latent(z) + self.decode_previous(before)))
        out = out.view(b, h, w, FRAMES_PER_LATENT, -1).movedim(3, 1).movedim(-1, 2)  # (b, 4, 3*s*s, h, w)
        if not previous:
            out = out[:, -1:]  # a stream's first latent is one picture
        pictures = F.pixel_shuffle(out.flatten(0, 1), s).view(b, out.shape[1], 3, h * s, w * s)
        return torch.tanh(pictures).transpose(1, 2), z
