"""Which engine runs which model component: the kinds, the `--engine` spec, and the defaults.

A spec is what the user writes (`--engine` / `LATENTCAST_ENGINE`): comma-separated items, each a
kind for every component (`onnx`) or for one (`unet=compile`, `vae=eager`). `auto`, the default,
picks per device from measurements (docs/engines.md says which and why):

- CPU: ONNX Runtime for the UNet and the tiny VAE (1.4-1.6x and 2.5-3.3x eager on one thread);
  eager for the text encoders (run once per prompt change: an export at start-up buys nothing a
  user notices), for the video transformer (torch.compile gains 1.17x there for a long build) and
  for the video VAE (torch.compile runs its decoder at 0.7x eager's speed).
- CUDA: torch.compile with CUDA graphs for the UNet, the tiny VAE, the video transformer and the
  video VAE (the transformer's choice, unmeasured on a GPU), which needs nothing beyond torch;
  ONNX Runtime's CUDA and TensorRT providers are a choice.
- anything else (Apple MPS): eager.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # settings parse specs without importing torch
    import torch

log = logging.getLogger(__name__)


class EngineKind(str, Enum):
    EAGER = "eager"
    COMPILE = "compile"      # torch.compile (inductor); CUDA graphs on CUDA
    ONNX = "onnx"            # exported once, run by ONNX Runtime (CPU provider, or CUDA on NVIDIA)
    TENSORRT = "tensorrt"    # exported once, run by ONNX Runtime's TensorRT provider (onnxruntime-gpu)

    @property
    def static_rows(self) -> bool:
        """Whether a call is padded to its row cap: CUDA graphs replay fixed shapes, and a few caps
        keep the graphs few. ONNX Runtime takes any row count, TensorRT any within its profile."""
        return self is EngineKind.COMPILE


AUTO = "auto"

# The components an engine can run, and the kinds each supports (docs/engines.md).
COMPONENT_KINDS: dict[str, tuple[EngineKind, ...]] = {
    "unet": tuple(EngineKind),
    "vae_encoder": tuple(EngineKind),
    "vae_decoder": tuple(EngineKind),
    "text_encoder": tuple(EngineKind),
    "video_transformer": (EngineKind.EAGER, EngineKind.COMPILE),
    "video_vae_encoder": (EngineKind.EAGER, EngineKind.COMPILE),
    "video_vae_decoder": (EngineKind.EAGER, EngineKind.COMPILE),
}
# Why a component lacks the kinds it lacks: what an error names.
_VIDEO_VAE_NO_EXPORT = ("its causal state is one cache tensor per causal convolution (dozens), passed beside the frames "
                        "on every call, and a stream's first call takes none: the ONNX export of that variable-arity "
                        "step is not built or checked (docs/engines.md)")
WHY_NOT: dict[str, str] = {
    "video_transformer": "its self-attention calls back into the Python-held KV cache between layers, which an exported graph cannot",
    "video_vae_encoder": _VIDEO_VAE_NO_EXPORT,
    "video_vae_decoder": _VIDEO_VAE_NO_EXPORT,
}
# Names that stand for several components in a spec.
GROUPS = {"vae": ("vae_encoder", "vae_decoder"), "video_vae": ("video_vae_encoder", "video_vae_decoder")}

_DEFAULTS: dict[str, dict[str, EngineKind]] = {
    "cpu": {"unet": EngineKind.ONNX, "vae_encoder": EngineKind.ONNX, "vae_decoder": EngineKind.ONNX},
    "cuda": {"unet": EngineKind.COMPILE, "vae_encoder": EngineKind.COMPILE, "vae_decoder": EngineKind.COMPILE,
             "video_transformer": EngineKind.COMPILE, "video_vae_encoder": EngineKind.COMPILE, "video_vae_decoder": EngineKind.COMPILE},
}


class EngineSpecError(ValueError):
    pass


@dataclass(frozen=True)
class EngineChoice:
    """A parsed spec: the kind for every component (`AUTO` or a kind) and per-component overrides."""

    default: str = AUTO
    overrides: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, spec: str | EngineChoice | None) -> EngineChoice:
        if isinstance(spec, EngineChoice):
            return spec
        default, overrides = AUTO, {}
        kinds = [AUTO, *(k.value for k in EngineKind)]
        for item in (spec or AUTO).replace(" ", "").split(","):
            if not item:
                continue
            name, _, kind = item.rpartition("=")
            if kind not in kinds:
                raise EngineSpecError(f"unknown engine {kind!r} in {spec!r}; choose one of {', '.join(kinds)}")
            if not name:
                default = kind
                continue
            names = GROUPS.get(name, (name,))
            for component in names:
                if component not in COMPONENT_KINDS:
                    known = [*COMPONENT_KINDS, *GROUPS]
                    raise EngineSpecError(f"unknown model component {name!r} in {spec!r}; choose one of {', '.join(known)}")
                if kind != AUTO and EngineKind(kind) not in COMPONENT_KINDS[component]:
                    supported = ", ".join(k.value for k in COMPONENT_KINDS[component])
                    why = f": {WHY_NOT[component]}" if component in WHY_NOT else ""
                    raise EngineSpecError(f"the {component} cannot run on {kind} (it can on {supported}){why}")
                overrides[component] = kind
        return cls(default, tuple(sorted(overrides.items())))

    def __str__(self) -> str:
        return ",".join([self.default, *(f"{c}={k}" for c, k in self.overrides)])

    def kind_for(self, component: str, device: torch.device) -> EngineKind:
        """The engine `component` runs on `device`: the spec's, else the device's default; a kind
        this machine cannot run is an error when asked for by name, eager when it came from `auto`."""
        asked = dict(self.overrides).get(component, self.default)
        if asked == AUTO:
            kind = _DEFAULTS.get(device.type, {}).get(component, EngineKind.EAGER)
            missing = unavailable(kind, device)
            if missing:
                log.info("%s runs eager: its default engine %s %s", component, kind.value, missing)
                return EngineKind.EAGER
            return kind
        kind = EngineKind(asked)
        if kind not in COMPONENT_KINDS[component]:  # a kind for every component that this one lacks
            log.info("%s runs eager: it has no %s engine", component, kind.value)
            return EngineKind.EAGER
        missing = unavailable(kind, device)
        if missing:
            raise EngineSpecError(f"engine {kind.value} for the {component} {missing}")
        return kind


def unavailable(kind: EngineKind, device: torch.device) -> str | None:
    """Why `kind` cannot run on `device` here (what to install), or None when it can."""
    if kind is EngineKind.EAGER:
        return None
    if device.type not in ("cpu", "cuda") or (kind is EngineKind.TENSORRT and device.type != "cuda"):
        return f"does not run on {device.type}"
    if kind is EngineKind.COMPILE:
        return None
    extra = "gpu" if device.type == "cuda" else "onnx"
    needed = ("onnx", "onnxscript", "onnxruntime") if device.type == "cpu" else ("onnx", "onnxruntime")
    if any(importlib.util.find_spec(name) is None for name in needed):
        return f"needs {', '.join(needed)}: pip install 'latentcast[{extra}]'"
    from models.engines.onnx_runtime import available_providers

    if not available_providers(kind, device):
        provider = "TensorRT" if kind is EngineKind.TENSORRT else "CUDA"
        return f"needs onnxruntime-gpu with its {provider} provider: pip install 'latentcast[gpu]'"
    return None
