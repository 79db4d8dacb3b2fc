"""LoRAs: low-rank weight deltas for the UNet's layers, kept beside the base weights.

A LoRA changes a layer's output by `scale * B(A(x))`. Here the deltas are never merged into the
shared UNet: each stream picks its LoRAs and weights, and `conditioned_unet` adds each row's
delta with that row's weight, so streams with different LoRAs share one forward and none leaks
into another. (PEFT, which diffusers uses, keeps one scale per adapter for the whole batch.)

Files are read by diffusers' LoRA state-dict reader, which understands the diffusers, kohya and
PEFT formats; the UNet part is used (the prompt embedding a stream caches is the base text
encoder's, so a LoRA's text-encoder part is left out, with a log line). `random` makes a LoRA
of rank 4 on every attention projection with seeded random weights (tests, measurements).
`fuse_into` merges one for good (a stream-less render: no per-row cost at all).
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.control.controlnet import RANDOM, ControlLoadError

log = logging.getLogger(__name__)

RANDOM_RANK = 4
_ATTENTION_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")


@dataclass
class LoraLayer:
    down: torch.Tensor
    """A: (rank, in) for a linear layer, (rank, in, kh, kw) for a convolution."""
    up: torch.Tensor
    """B: (out, rank), or (out, rank, 1, 1)."""
    scale: float
    """alpha / rank."""


@dataclass
class LoraAdapter:
    name: str
    source: str
    layers: dict[str, LoraLayer]
    """UNet module name -> its delta."""


def load_lora(name: str, source: str, unet: nn.Module, family: str, dtype: torch.dtype, device: torch.device,
              local_only: bool = False) -> LoraAdapter:
    """A LoRA for `unet` from a file, a folder, a hub id (from the hub cache alone when
    `local_only`), or `random`."""
    if source == RANDOM:
        adapter = random_lora(name, unet)
    else:
        adapter = LoraAdapter(name, source, _read_layers(name, source, family, local_only))
    modules = dict(unet.named_modules())
    for key, layer in adapter.layers.items():
        module = modules.get(key)
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            raise ControlLoadError(f"LoRA {name!r} ({source}) does not fit this UNet: it has no layer {key!r} "
                                   "(a LoRA for another base model?)")
        if layer.down.shape[1] != _in_features(module) or layer.up.shape[0] != _out_features(module):
            raise ControlLoadError(f"LoRA {name!r} ({source}) does not fit this UNet: layer {key!r} is "
                                   f"{_in_features(module)}->{_out_features(module)}, the LoRA's {layer.down.shape[1]}->{layer.up.shape[0]}")
        layer.down = layer.down.to(device=device, dtype=dtype)
        layer.up = layer.up.to(device=device, dtype=dtype)
    return adapter


def random_lora(name: str, unet: nn.Module, rank: int = RANDOM_RANK) -> LoraAdapter:
    generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    layers = {}
    for key, module in unet.named_modules():
        if isinstance(module, nn.Linear) and key.endswith(_ATTENTION_PROJECTIONS):
            down = torch.randn(rank, module.in_features, generator=generator) / module.in_features**0.5
            up = torch.randn(module.out_features, rank, generator=generator) * 0.5
            layers[key] = LoraLayer(down, up, 1.0)
    return LoraAdapter(name, RANDOM, layers)


def delta(module: nn.Module, x: torch.Tensor, layer: LoraLayer) -> torch.Tensor:
    """The LoRA's change to `module`'s output for input `x` (at weight 1)."""
    if isinstance(module, nn.Conv2d):
        hidden = F.conv2d(x, layer.down, stride=module.stride, padding=module.padding, dilation=module.dilation)
        return F.conv2d(hidden, layer.up) * layer.scale
    return F.linear(F.linear(x, layer.down), layer.up) * layer.scale


@torch.no_grad()
def fuse_into(unet: nn.Module, adapter: LoraAdapter, weight: float) -> None:
    """Merge `adapter` at `weight` into the UNet's own weights (call before any engine is built:
    engines are keyed by a fingerprint of the weights, taken when first built)."""
    modules = dict(unet.named_modules())
    for key, layer in adapter.layers.items():
        module = modules[key]
        down, up = layer.down.to(module.weight.dtype), layer.up.to(module.weight.dtype)
        if isinstance(module, nn.Conv2d):
            merged = torch.einsum("or,rikl->oikl", up.flatten(1), down)
        else:
            merged = up @ down
        module.weight += weight * layer.scale * merged
    log.info("fused LoRA %r at weight %s into the UNet", adapter.name, weight)


def _read_layers(name: str, source: str, family: str, local_only: bool = False) -> dict[str, LoraLayer]:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.utils import convert_unet_state_dict_to_peft

    reader = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    try:
        state_dict, alphas, metadata = reader.lora_state_dict(source, return_lora_metadata=True, local_files_only=local_only)
    except (OSError, ValueError) as err:
        raise ControlLoadError(f"could not load LoRA {name!r} from {source}: {str(err).splitlines()[0]}") from err
    unet_part = {k.removeprefix("unet."): v for k, v in state_dict.items() if k.startswith("unet.")}
    if len(unet_part) < len(state_dict):
        log.info("LoRA %r: its text-encoder layers are left out (prompt embeddings come from the base text encoder)", name)
    if not unet_part:
        raise ControlLoadError(f"LoRA {name!r} ({source}) has no UNet layers")
    peft = convert_unet_state_dict_to_peft(unet_part)
    config = {k.removeprefix("unet."): v for k, v in (metadata or {}).items() if k.startswith("unet.")}
    if config.get("use_dora"):
        raise ControlLoadError(f"LoRA {name!r} ({source}) is a DoRA, which is not supported")
    alphas = {k.removeprefix("unet."): v for k, v in (alphas or {}).items()}
    layers = {}
    for key in peft:
        if not key.endswith(".lora_A.weight"):
            continue
        module = key.removesuffix(".lora_A.weight")
        down, up = peft[key], peft[f"{module}.lora_B.weight"]
        layers[module] = LoraLayer(down.float(), up.float(), _scale(module, down.shape[0], alphas, config))
    return layers


def _scale(module: str, rank: int, alphas: dict, config: dict) -> float:
    """alpha / rank, alpha from the kohya-style alphas or the PEFT config saved with the file
    (its per-module patterns match a module name's end), else alpha = rank."""
    alpha = alphas.get(f"{module}.alpha", alphas.get(module))
    if alpha is None and config:
        alpha = next((v for k, v in (config.get("alpha_pattern") or {}).items() if module.endswith(k)), config.get("lora_alpha"))
        rank = next((v for k, v in (config.get("rank_pattern") or {}).items() if module.endswith(k)), rank)
    alpha = rank if alpha is None else float(alpha)
    return alpha / rank**0.5 if config.get("use_rslora") else alpha / rank


def _in_features(module: nn.Module) -> int:
    return module.in_features if isinstance(module, nn.Linear) else module.in_channels


def _out_features(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels
