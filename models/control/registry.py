"""The control models a diffusion model was loaded with, by name.

ControlNets and the IP-Adapter load at start (`--controlnet NAME=SOURCE`, `--ip-adapter SOURCE`);
LoRAs load at start (`--lora NAME=SOURCE`) or on request: a stream naming a LoRA that is a file
of `--lora-dir` loads it then, once, for every stream after it. A name nobody loaded is refused
with the names there are.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from models.control.controlnet import ControlLoadError, load_controlnet
from models.control.ip_adapter import IPAdapter, load_ip_adapter
from models.control.lora import LoraAdapter, fuse_into, load_lora

log = logging.getLogger(__name__)

LORA_SUFFIXES = (".safetensors", ".bin")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class UnknownControlError(ValueError):
    """A stream named a control model that is not loaded (and cannot be loaded on request)."""


@dataclass(frozen=True)
class ControlSpec:
    """What to load beside the base model (picklable: a stage process loads the same)."""

    controlnets: dict[str, str] = field(default_factory=dict)
    """name -> hub id, local folder, or `random`."""
    loras: dict[str, str] = field(default_factory=dict)
    """name -> file, folder, hub id, or `random`."""
    lora_dir: Path | None = None
    """A folder whose LoRA files streams may load on request, by file name without suffix."""
    ip_adapter: str | None = None
    """IP-Adapter file (local, or owner/repo/path on the hub), or `random`."""
    fuse: dict[str, float] = field(default_factory=dict)
    """LoRAs (names of `loras`) merged into the base weights at these weights, at load: a
    stream-less render pays nothing per row for them; they are then not choosable per stream."""

    def __post_init__(self) -> None:
        for name in [*self.controlnets, *self.loras]:
            if not _NAME.match(name):
                raise ValueError(f"control model name {name!r}: use letters, digits, '_', '-' and '.'")
        unknown = set(self.fuse) - set(self.loras)
        if unknown:
            raise ValueError(f"cannot fuse LoRA {', '.join(sorted(unknown))}: not among the LoRAs loaded ({', '.join(self.loras) or 'none'})")


class ControlModels:
    """Shared by every stream, like the base weights; a stream's choices live in its state."""

    def __init__(self, unet: nn.Module | None = None, family: str = "sd", vae_scale_factor: int = 8,
                 dtype: torch.dtype = torch.float32, device: torch.device | None = None, spec: ControlSpec | None = None):
        spec = spec or ControlSpec()
        self.spec = spec
        self._unet, self._family, self._dtype, self._device = unet, family, dtype, device or torch.device("cpu")
        self._lock = threading.Lock()
        self.controlnets: dict[str, nn.Module] = {}
        self.loras: dict[str, LoraAdapter] = {}
        self.ip_adapter: IPAdapter | None = None
        if unet is None:
            return
        for name, source in spec.controlnets.items():
            self.controlnets[name] = load_controlnet(source, unet, dtype, self._device, vae_scale_factor, name)
            log.info("ControlNet %r loaded from %s", name, source)
        for name, source in spec.loras.items():
            adapter = load_lora(name, source, unet, family, dtype, self._device)
            if name in spec.fuse:
                fuse_into(unet, adapter, spec.fuse[name])
            else:
                self.loras[name] = adapter
                log.info("LoRA %r loaded from %s (%d layers)", name, source, len(adapter.layers))
        if spec.ip_adapter is not None:
            self.ip_adapter = load_ip_adapter(spec.ip_adapter, unet, dtype, self._device)
            log.info("IP-Adapter loaded from %s", spec.ip_adapter)

    def controlnet(self, name: str) -> nn.Module:
        try:
            return self.controlnets[name]
        except KeyError:
            raise UnknownControlError(f"no ControlNet {name!r} is loaded; loaded: {', '.join(self.controlnets) or 'none'} "
                                      "(start the server with --controlnet NAME=SOURCE)") from None

    def lora(self, name: str) -> LoraAdapter:
        """A loaded LoRA, or one of --lora-dir loaded now (on the worker: the first stream to ask waits for it)."""
        with self._lock:
            if name in self.loras:
                return self.loras[name]
            path = self._lora_file(name)
            if path is None:
                raise UnknownControlError(f"no LoRA {name!r}; choose one of {', '.join(self.lora_names()) or 'none'} "
                                          "(load LoRAs with --lora NAME=SOURCE or --lora-dir DIR)")
            if self._unet is None:
                raise UnknownControlError(f"LoRA {name!r} cannot be loaded here")
            try:
                adapter = load_lora(name, str(path), self._unet, self._family, self._dtype, self._device)
            except ControlLoadError as err:
                raise UnknownControlError(str(err)) from None
            log.info("LoRA %r loaded on request from %s", name, path)
            self.loras[name] = adapter
            return adapter

    def lora_names(self) -> list[str]:
        """Loaded LoRAs and those --lora-dir offers."""
        names = list(self.loras)
        folder = self.spec.lora_dir
        if folder is not None and folder.is_dir():
            names += sorted(p.stem for p in folder.iterdir() if p.suffix in LORA_SUFFIXES and p.stem not in self.loras and _NAME.match(p.stem))
        return names

    def _lora_file(self, name: str) -> Path | None:
        folder = self.spec.lora_dir
        if folder is None or not _NAME.match(name):  # a name is never a path: nothing outside the folder
            return None
        for suffix in LORA_SUFFIXES:
            if (folder / f"{name}{suffix}").is_file():
                return folder / f"{name}{suffix}"
        return None
