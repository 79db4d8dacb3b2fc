"""A small autoencoder for the embedded style model: a linear patch code plus learned residuals.

Each `patch_size`² patch maps linearly to `latent_channels` numbers (a strided conv) and back (a
transposed conv). Training initialises that pair from a PCA of image patches, whitened, so the
model reconstructs well and yields unit-variance latents before any gradient step. Two small
conv stacks, added as residuals with zeroed last layers, then learn what the linear code misses
(thin lines, sharp edges). It speaks the AutoencoderTiny interface the pipelines use:
`encode(x).latents`, `decode(z).sample`, `config.scaling_factor`.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.autoencoder_tiny import AutoencoderTinyOutput
from diffusers.models.autoencoders.vae import DecoderOutput
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1)


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(_conv(channels, channels), nn.SiLU(), _conv(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class PatchAutoencoder(ModelMixin, ConfigMixin):
    """Images (B, 3, H, W) in [-1, 1] <-> latents (B, latent_channels, H/p, W/p), p = patch_size."""

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        latent_channels: int = 8,
        patch_size: int = 4,
        encoder_channels: tuple[int, ...] = (16, 32),
        decoder_channels: tuple[int, ...] = (64, 32, 16),
        scaling_factor: float = 1.0,
    ):
        super().__init__()
        if 2 ** (len(encoder_channels)) != patch_size or 2 ** (len(decoder_channels) - 1) != patch_size:
            raise ValueError("encoder_channels needs log2(patch_size) entries, decoder_channels one more")
        self.patch_encoder = nn.Conv2d(in_channels, latent_channels, patch_size, stride=patch_size)
        self.patch_decoder = nn.ConvTranspose2d(latent_channels, in_channels, patch_size, stride=patch_size)

        # Encoder residual: one stride-2 conv per halving, then a zeroed projection to the latent.
        layers: list[nn.Module] = []
        cin = in_channels
        for cout in encoder_channels:
            layers += [_conv(cin, cout, stride=2), nn.SiLU()]
            cin = cout
        layers += [_ResidualBlock(cin), _conv(cin, latent_channels)]
        self.encoder_residual = nn.Sequential(*layers)

        # Decoder residual: work at latent resolution, then upsample while narrowing the channels
        # (the full-resolution stage is the costly one, so it is the narrowest).
        layers = [_conv(latent_channels, decoder_channels[0]), nn.SiLU(), _ResidualBlock(decoder_channels[0])]
        for cin, cout in zip(decoder_channels, decoder_channels[1:]):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), _conv(cin, cout), nn.SiLU()]
        layers += [_conv(decoder_channels[-1], in_channels)]
        self.decoder_residual = nn.Sequential(*layers)
        for last in (self.encoder_residual[-1], self.decoder_residual[-1]):
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        latents = self.patch_encoder(x) + self.encoder_residual(x)
        return AutoencoderTinyOutput(latents=latents) if return_dict else (latents,)

    def decode(self, z: torch.Tensor, return_dict: bool = True):
        sample = self.patch_decoder(z) + self.decoder_residual(z)
        return DecoderOutput(sample=sample) if return_dict else (sample,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x).latents).sample
