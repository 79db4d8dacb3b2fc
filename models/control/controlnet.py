"""ControlNets: a copy of the UNet's encoder that turns a control image (edges, a previous frame)
into residuals added to the UNet's skip connections and middle block.

Real ones load with diffusers' `ControlNetModel.from_pretrained` (a hub id or a local folder:
SD 1.5, SD 2.1 and SDXL variants are all that class); `random` builds one shaped for the loaded
UNet with seeded random weights (tests, speed measurements), so no download is ever needed here.
"""

from __future__ import annotations

import zlib

import torch
from torch import nn

RANDOM = "random"


class ControlLoadError(ValueError):
    """A control model could not be loaded; the message names it and where it was looked for."""


def load_controlnet(source: str, unet: nn.Module, dtype: torch.dtype, device: torch.device, vae_scale_factor: int,
                    name: str = "") -> nn.Module:
    """A ControlNet for `unet` from a hub id, a local folder, or `random`."""
    if source == RANDOM:
        net = random_controlnet(unet, vae_scale_factor, seed=_seed_of(name))
    else:
        from diffusers import ControlNetModel

        try:
            net = ControlNetModel.from_pretrained(source, torch_dtype=dtype)
        except (OSError, ValueError) as err:
            raise ControlLoadError(f"could not load ControlNet {name!r} from {source}: {str(err).splitlines()[0]}") from err
        check_matches_unet(net, unet, name)
    return torch.nn.Module.to(net, device=device, dtype=dtype).eval().requires_grad_(False)


def random_controlnet(unet: nn.Module, vae_scale_factor: int, seed: int = 0) -> nn.Module:
    """A ControlNet initialised from `unet` (as training starts), with its zero convolutions
    drawn at random instead: a fresh ControlNet's residuals are exactly zero, which would make
    every test of its effect pass vacuously."""
    from diffusers import ControlNetModel

    # The conditioning embedding halves the control image once per step down to the latent size.
    halvings = vae_scale_factor.bit_length() - 1
    channels = tuple(8 * 2 ** min(i, 2) for i in range(halvings + 1))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=channels)
        for conv in [*net.controlnet_down_blocks, net.controlnet_mid_block]:
            nn.init.normal_(conv.weight, std=0.05)
            nn.init.normal_(conv.bias, std=0.05)
        # The control image must shape the residuals: torch's default init shrinks a signal at
        # every layer, and after the embedding's seven convolutions almost nothing of it was left.
        for conv in net.controlnet_cond_embedding.modules():
            if isinstance(conv, nn.Conv2d):
                nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
                nn.init.zeros_(conv.bias)
    return net


def check_matches_unet(net: nn.Module, unet: nn.Module, name: str) -> None:
    """A ControlNet made for another base model (SD 1.5 against SDXL) fails at start, not per frame."""
    for key in ("cross_attention_dim", "block_out_channels", "in_channels"):
        ours, theirs = unet.config.get(key), net.config.get(key)
        if ours is not None and theirs is not None and list(_as_list(ours)) != list(_as_list(theirs)):
            raise ControlLoadError(f"ControlNet {name!r} was made for another base model: its {key} is {theirs}, the UNet's {ours}")


def residuals(net: nn.Module, latents: torch.Tensor, timesteps: torch.Tensor, hidden: torch.Tensor, images: torch.Tensor,
              scale: torch.Tensor, added: dict[str, torch.Tensor] | None) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The residuals of one ControlNet for some rows: `images` (R, 3, H, W) in [0, 1] and a
    conditioning scale per row, (R,)."""
    down, mid = net(latents, timesteps, encoder_hidden_states=hidden, controlnet_cond=images.to(latents.dtype),
                    added_cond_kwargs=added, return_dict=False)
    per_row = scale.to(latents.dtype).view(-1, 1, 1, 1)
    return [d * per_row for d in down], mid * per_row


def _as_list(value):
    return value if isinstance(value, (list, tuple)) else [value]


def _seed_of(name: str) -> int:
    return zlib.crc32(name.encode())
