"""The UNet called with per-row controls: ControlNet residuals, IP-Adapter tokens, LoRA deltas.

Each row of a stream batch says what conditions it (`RowControl`); rows of different streams
with different ControlNets, images, LoRAs and weights share one UNet forward:
- each ControlNet runs once over the rows that use it, and its residuals, scaled per row, are
  added to those rows only (zeros elsewhere);
- LoRA deltas and the IP-Adapter's attention are added by forward hooks on the UNet's layers,
  row by row with each row's weight, and only to the rows that asked for them.

The hooks exist only for the duration of one call and act only on the thread that made it: the
shared UNet stays the base model for everyone else, including an engine being exported from it
on another thread at the same moment (docs/control.md, "Engines").
This call always runs the eager UNet: engines are built for the plain UNet's inputs.
"""

from __future__ import annotations

import contextlib
import threading
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.control import controlnet as controlnet_model
from models.control import lora as lora_model


@dataclass(frozen=True, eq=False)
class RowControl:
    """What conditions one UNet row beyond its latent, timestep and prompt."""

    controlnets: tuple[tuple[str, torch.Tensor, float], ...] = ()
    """(ControlNet name, control image (3, H, W) in [0, 1], conditioning scale)."""
    ip_tokens: torch.Tensor | None = None
    """(TOKENS, D) image-prompt tokens."""
    ip_weight: float = 0.0
    loras: tuple[tuple[str, float], ...] = ()
    """(LoRA name, weight)."""

    @property
    def empty(self) -> bool:
        return not self.controlnets and (self.ip_tokens is None or self.ip_weight == 0) and not self.loras


NO_CONTROL = RowControl()


@torch.no_grad()
def predict_with_controls(models, latents: torch.Tensor, timesteps: torch.Tensor, embeds, rows: list[RowControl]) -> torch.Tensor:
    """The eager UNet's output for each row under its own controls (`models`: DiffusionModels)."""
    controls = models.controls
    added = _added_conditions(models, latents, embeds)
    down, mid = _controlnet_residuals(models, latents, timesteps, embeds.hidden, added, rows)
    with _hooks(models.unet, controls, rows, latents.device, latents.dtype):
        return models.unet(latents, timesteps, encoder_hidden_states=embeds.hidden, added_cond_kwargs=added,
                           down_block_additional_residuals=down, mid_block_additional_residual=mid, return_dict=False)[0]


def _added_conditions(models, latents: torch.Tensor, embeds) -> dict[str, torch.Tensor] | None:
    if models.preset.family != "sdxl":
        return None
    height, width = (s * models.vae_scale_factor for s in latents.shape[-2:])
    time_ids = torch.tensor([height, width, 0, 0, height, width], device=latents.device, dtype=latents.dtype)
    return {"text_embeds": embeds.pooled, "time_ids": time_ids.expand(latents.shape[0], -1)}


def _controlnet_residuals(models, latents, timesteps, hidden, added, rows: list[RowControl]):
    by_net: dict[str, list[tuple[int, torch.Tensor, float]]] = defaultdict(list)
    for index, row in enumerate(rows):
        for name, image, scale in row.controlnets:
            by_net[name].append((index, image, scale))
    if not by_net:
        return None, None
    down: list[torch.Tensor] | None = None
    mid: torch.Tensor | None = None
    for name, uses in by_net.items():
        index = torch.tensor([u[0] for u in uses], device=latents.device)
        images = torch.stack([u[1] for u in uses]).to(latents.device)
        scales = torch.tensor([u[2] for u in uses], device=latents.device)
        part = None if added is None else {k: v[index] for k, v in added.items()}
        d, m = controlnet_model.residuals(models.controls.controlnet(name), latents[index], timesteps[index], hidden[index],
                                          images, scales, part)
        if down is None or mid is None:
            down = [torch.zeros((len(rows), *t.shape[1:]), device=t.device, dtype=t.dtype) for t in d]
            mid = torch.zeros((len(rows), *m.shape[1:]), device=m.device, dtype=m.dtype)
        down = [total.index_add(0, index, t) for total, t in zip(down, d)]
        mid = mid.index_add(0, index, m)
    return down, mid


@contextlib.contextmanager
def _hooks(unet: nn.Module, controls, rows: list[RowControl], device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    owner = threading.get_ident()
    handles = []
    modules = dict(unet.named_modules())
    # LoRA: per layer, the adapters some row uses, with those rows and their weights.
    plans: dict[str, list[tuple[lora_model.LoraLayer, torch.Tensor, torch.Tensor]]] = defaultdict(list)
    by_adapter: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for index, row in enumerate(rows):
        for name, weight in row.loras:
            if weight:
                by_adapter[name].append((index, weight))
    for name, uses in by_adapter.items():
        index = torch.tensor([u[0] for u in uses], device=device)
        weights = torch.tensor([u[1] for u in uses], device=device, dtype=dtype)
        for key, layer in controls.lora(name).layers.items():
            plans[key].append((layer, index, weights))
    for key, plan in plans.items():
        handles.append(modules[key].register_forward_hook(_lora_hook(plan, owner)))
    ip_rows = [(i, r) for i, r in enumerate(rows) if r.ip_tokens is not None and r.ip_weight]
    if ip_rows:
        index = torch.tensor([i for i, _ in ip_rows], device=device)
        tokens = torch.stack([r.ip_tokens for _, r in ip_rows]).to(device, dtype)
        weights = torch.tensor([r.ip_weight for _, r in ip_rows], device=device, dtype=dtype)
        for key, (to_k_ip, to_v_ip) in controls.ip_adapter.layers.items():
            hook = _ip_hook(to_k_ip(tokens), to_v_ip(tokens), index, weights, owner)
            handles.append(modules[key].register_forward_hook(hook, with_kwargs=True))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _lora_hook(plan, owner: int):
    def hook(module: nn.Module, args, output: torch.Tensor):
        if threading.get_ident() != owner:
            return None
        x = args[0]
        for layer, index, weights in plan:
            change = lora_model.delta(module, x[index], layer)
            output = output.index_add(0, index, change * weights.view(-1, *[1] * (change.ndim - 1)))
        return output

    return hook


def _ip_hook(keys: torch.Tensor, values: torch.Tensor, index: torch.Tensor, weights: torch.Tensor, owner: int):
    """Decoupled cross-attention: the rows' queries attend to their image tokens, and the result,
    times the row's weight, goes through the layer's output projection (as diffusers'
    IPAdapterAttnProcessor adds it before that projection). The projections are called as modules
    over the whole batch, so a LoRA on them applies here too."""

    def hook(module: nn.Module, args, kwargs, output: torch.Tensor):
        if threading.get_ident() != owner:
            return None
        hidden = args[0] if args else kwargs["hidden_states"]
        heads = module.heads
        query = module.to_q(hidden)[index]
        rows, length, inner = query.shape
        split = lambda t: t.view(t.shape[0], -1, heads, inner // heads).transpose(1, 2)  # noqa: E731
        attended = F.scaled_dot_product_attention(split(query), split(keys), split(values))
        attended = attended.transpose(1, 2).reshape(rows, length, inner) * weights.view(-1, 1, 1)
        full = torch.zeros((hidden.shape[0], length, inner), device=hidden.device, dtype=hidden.dtype).index_copy(0, index, attended)
        projection = module.to_out[0]
        extra = projection(full)
        if projection.bias is not None:
            extra = extra - projection.bias
        return output + extra

    return hook
