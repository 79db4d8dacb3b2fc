"""IP-Adapter: an image as a prompt.

A CLIP image encoder turns the image into one embedding; a projection turns that into a few
tokens in the text embedding's space; every cross-attention layer of the UNet attends to those
tokens with its own key and value projections and adds the result, times the stream's weight,
to what it took from the text ("decoupled cross-attention"). The tokens are computed once per
image (the pipeline caches them per stream); the per-layer attention runs per row in
`conditioned_unet`, so streams with other images, other weights or none share one forward.

Weights: the IP-Adapter file format of h94/IP-Adapter (`image_proj` + `ip_adapter`, as
`.safetensors` or `.bin`), read the way diffusers' `load_ip_adapter` reads it, from a local file
(the image encoder in the `image_encoder/` folder beside it) or from the hub as
`owner/repo/path/file.safetensors` (the encoder in `path/image_encoder` of the same repository).
The plain IP-Adapter projection is supported (not Plus or FaceID). `random` builds a small one
for the loaded UNet with seeded random weights.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from models.control.controlnet import RANDOM, ControlLoadError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TOKENS = 4  # the plain IP-Adapter's image tokens
_TINY_ENCODER = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4,
                 "image_size": 32, "patch_size": 8, "projection_dim": 32}


@dataclass
class IPAdapter:
    source: str
    image_encoder: nn.Module
    """transformers' CLIPVisionModelWithProjection."""
    projection: nn.Module
    """diffusers' ImageProjection: image embedding -> TOKENS tokens."""
    layers: dict[str, tuple[nn.Linear, nn.Linear]]
    """UNet cross-attention module name -> its (to_k_ip, to_v_ip)."""

    @property
    def image_size(self) -> int:
        return int(self.image_encoder.config.image_size)

    @torch.no_grad()
    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) pictures in [0, 1] -> (B, TOKENS, D) image-prompt tokens."""
        size = self.image_size
        images = _centre_square(images.float())
        images = F.interpolate(images, size=(size, size), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
        mean = torch.tensor(CLIP_MEAN, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=images.device).view(1, 3, 1, 1)
        dtype = next(self.image_encoder.parameters()).dtype
        embeds = self.image_encoder(((images - mean) / std).to(dtype)).image_embeds
        return self.projection(embeds)

    @torch.no_grad()
    def negative_tokens(self) -> torch.Tensor:
        """(1, TOKENS, D): the tokens of a zero image embedding, what the guidance rows see (as in diffusers)."""
        first = next(self.projection.parameters())
        return self.projection(torch.zeros(1, self.projection.image_embeds.in_features, device=first.device, dtype=first.dtype))


def load_ip_adapter(source: str, unet: nn.Module, dtype: torch.dtype, device: torch.device) -> IPAdapter:
    adapter = random_ip_adapter(unet) if source == RANDOM else _load(source, unet, dtype)
    for module in (adapter.image_encoder, adapter.projection, *(m for pair in adapter.layers.values() for m in pair)):
        torch.nn.Module.to(module, device=device, dtype=dtype).eval().requires_grad_(False)
    return adapter


def random_ip_adapter(unet: nn.Module, seed: int = 0) -> IPAdapter:
    """Its key and value projections start as copies of each layer's text ones plus noise (as
    IP-Adapter training starts from them), so the image visibly steers the output."""
    from diffusers.models.embeddings import ImageProjection
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed or zlib.crc32(b"ip-adapter"))
        encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**_TINY_ENCODER))
        projection = ImageProjection(_TINY_ENCODER["projection_dim"], unet.config.cross_attention_dim, TOKENS)
        layers = {}
        for name, attention in cross_attentions(unet).items():
            pair = []
            for text in (attention.to_k, attention.to_v):
                ip = nn.Linear(text.in_features, text.out_features, bias=False)
                ip.weight.data = text.weight.detach().clone() + 0.1 * torch.randn_like(text.weight)
                pair.append(ip)
            layers[name] = (pair[0], pair[1])
    return IPAdapter(RANDOM, encoder, projection, layers)


def cross_attentions(unet: nn.Module) -> dict[str, nn.Module]:
    """The UNet's cross-attention modules in diffusers' processor order (the IP-Adapter file numbers
    them 1, 3, 5, ... in that order)."""
    names = [key.removesuffix(".processor") for key in unet.attn_processors if not key.endswith("attn1.processor")]
    modules = dict(unet.named_modules())
    return {name: modules[name] for name in names}


def _load(source: str, unet: nn.Module, dtype: torch.dtype) -> IPAdapter:
    from diffusers.models.embeddings import ImageProjection
    from transformers import CLIPVisionModelWithProjection

    path = Path(source)
    try:
        if path.is_file():
            weights = _read(path)
            encoder = CLIPVisionModelWithProjection.from_pretrained(str(path.parent / "image_encoder"), torch_dtype=dtype)
        else:
            from huggingface_hub import hf_hub_download

            owner, repo, *rest = source.split("/")
            if not rest:
                raise ValueError("give owner/repo/path/to/ip-adapter.safetensors")
            weights = _read(Path(hf_hub_download(f"{owner}/{repo}", "/".join(rest))))
            encoder = CLIPVisionModelWithProjection.from_pretrained(
                f"{owner}/{repo}", subfolder="/".join([*rest[:-1], "image_encoder"]), torch_dtype=dtype)
    except (OSError, ValueError) as err:
        raise ControlLoadError(f"could not load the IP-Adapter from {source}: {str(err).splitlines()[0]}") from err
    proj = weights["image_proj"]
    if "proj.weight" not in proj:
        raise ControlLoadError(f"the IP-Adapter {source} is not a plain IP-Adapter (Plus and FaceID are not supported)")
    cross = unet.config.cross_attention_dim
    tokens = proj["proj.weight"].shape[0] // cross
    projection = ImageProjection(proj["proj.weight"].shape[1], cross, tokens)
    projection.load_state_dict({k.replace("proj.", "image_embeds.", 1): v for k, v in proj.items()})
    layers = {}
    for index, (name, attention) in enumerate(cross_attentions(unet).items()):
        key = 2 * index + 1
        pair = []
        for part in ("to_k_ip", "to_v_ip"):
            weight = weights["ip_adapter"].get(f"{key}.{part}.weight")
            if weight is None or weight.shape != attention.to_k.weight.shape:
                raise ControlLoadError(f"the IP-Adapter {source} does not fit this UNet (layer {name}): made for another base model?")
            linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
            linear.weight.data = weight
            pair.append(linear)
        layers[name] = (pair[0], pair[1])
    return IPAdapter(source, encoder, projection, layers)


def _read(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """{"image_proj": {...}, "ip_adapter": {...}} from a .safetensors (flat, prefixed keys) or a .bin file."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        flat = load_file(str(path))
        parts: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
        for key, value in flat.items():
            head, _, rest = key.partition(".")
            if head in parts:
                parts[head][rest] = value
        return parts
    return torch.load(path, map_location="cpu", weights_only=True)


def _centre_square(images: torch.Tensor) -> torch.Tensor:
    h, w = images.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return images[..., top : top + side, left : left + side]
