"""Build or load the models of a diffusion preset.

Three ways, one result (`DiffusionModels`):
- built-in presets (`tiny`) are built from their configs with seeded random weights, in-process;
- `random_weights=True` builds a real preset's architecture from its shipped configs (no
  download): same shapes and FLOPs, for speed measurements on machines without the weights;
- otherwise weights load with `from_pretrained` from `model_dir` (a local folder in diffusers
  layout) or from the preset's hub ids.

`engine` says what runs each component (`models.engines`: eager, torch.compile, ONNX Runtime);
engines are built or loaded from `engine_cache` on the first call of each shape.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch

from models.device import resolve_device, resolve_dtype
from models.diffusion import DiffusionModels
from models.engines.cache import EngineCache
from models.engines.diffusion_parts import diffusion_engines
from models.engines.kinds import EngineChoice
from models.presets import DiffusionPreset, get_preset
from models.source import ModelSource
from models.tokenizer import build_byte_tokenizer

log = logging.getLogger(__name__)

# Subfolders of a local model folder (diffusers layout, plus the two parts this project adds).
TINY_VAE_DIR = "tiny_vae"
LORA_DIR = "lora"


class ModelLoadError(ValueError):
    """Weights could not be loaded; the message says what is missing and where it was looked for."""


def load_diffusion_models(
    preset: str | DiffusionPreset,
    device: str = "auto",
    dtype: str = "auto",
    model_dir: Path | str | None = None,
    random_weights: bool = False,
    seed: int = 0,
    engine: str | EngineChoice = "eager",
    engine_cache: Path | str | None = None,
) -> DiffusionModels:
    """`engine`: an `--engine` spec (`auto` picks per device); eager by default, so code that
    loads models for itself (tests, training tools) runs plain PyTorch unless it asks."""
    choice = EngineChoice.parse(engine)
    source = ModelSource({"preset": preset, "dtype": dtype, "model_dir": model_dir, "random_weights": random_weights, "seed": seed,
                          "engine": str(choice), "engine_cache": engine_cache})
    preset = get_preset(preset) if isinstance(preset, str) else preset
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if model_dir is None and preset.embedded and not random_weights:
        model_dir = preset.weights_dir()
    if model_dir is not None:
        parts = _load_folder(preset, Path(model_dir), dt)
    elif preset.built_in or random_weights:
        parts = build_from_configs(preset, dt, seed=seed)
    else:
        parts = _load_hub(preset, dt)
    unet, vae, encoders, tokenizers, scheduler_config = parts
    for module in (unet, vae, *encoders):
        _move(module, dev, dt).eval().requires_grad_(False)
    return DiffusionModels(
        preset=preset,
        unet=unet,
        vae=vae,
        text_encoders=encoders,
        tokenizers=tokenizers,
        alphas_cumprod=alphas_cumprod(scheduler_config),
        prediction_type=scheduler_config.get("prediction_type", "epsilon"),
        device=dev,
        dtype=dt,
        source=source,
        engines=diffusion_engines(unet, vae, encoders, preset.text_hidden_layer == "penultimate", choice, dev, dt,
                                  EngineCache(engine_cache)),
    )


def alphas_cumprod(scheduler_config: dict) -> torch.Tensor:
    """ᾱ_t for the training schedule, computed by diffusers from the scheduler config (float64)."""
    from diffusers import DDPMScheduler

    keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas")
    scheduler = DDPMScheduler(**{k: scheduler_config[k] for k in keys if scheduler_config.get(k) is not None})
    return scheduler.alphas_cumprod.to(torch.float64)


def build_from_configs(preset: DiffusionPreset, dtype: torch.dtype = torch.float32, seed: int = 0, device: str | torch.device | None = None):
    """The preset's architecture with random weights; `device="meta"` allocates nothing."""
    from diffusers import UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    encoder_parts = [p for p in ("text_encoder", "text_encoder_2") if preset.config_json(p) is not None]
    # Seeded so every process builds identical built-in models (tests compare outputs across runs).
    with torch.random.fork_rng(devices=[]), torch.device(device) if device else contextlib.nullcontext():
        torch.manual_seed(seed)
        unet = UNet2DConditionModel.from_config(preset.config_json("unet"))
        vae = autoencoder_class(preset).from_config(preset.config_json("vae"))
        encoders = []
        for part in encoder_parts:
            config = CLIPTextConfig(**preset.config_json(part))
            # SDXL's second encoder also yields the pooled projection the UNet is conditioned on.
            cls = CLIPTextModelWithProjection if (preset.family == "sdxl" and part == "text_encoder_2") else CLIPTextModel
            encoders.append(cls(config))
    if dtype != torch.float32 and device != "meta":
        for module in (unet, vae, *encoders):
            _move(module, None, dtype)
    if preset.embedded:  # its vocabulary is part of the architecture (the embedding table's size)
        tokenizers = [AutoTokenizer.from_pretrained(str(preset.weights_dir() / t)) for _, t, _ in _encoder_classes(preset)]
    else:
        tokenizers = [build_byte_tokenizer() for _ in encoder_parts]
    return unet, vae, encoders, tokenizers, preset.config_json("scheduler")


def autoencoder_class(preset: DiffusionPreset):
    from diffusers import AutoencoderTiny

    from models.patch_autoencoder import PatchAutoencoder

    return PatchAutoencoder if preset.autoencoder == "patch" else AutoencoderTiny


def _move(module: torch.nn.Module, device: torch.device | None, dtype: torch.dtype) -> torch.nn.Module:
    # torch's own `to`: diffusers' override warns about fp32-only modules on every cast, and none
    # of these models has any.
    return torch.nn.Module.to(module, device=device, dtype=dtype)


def _encoder_classes(preset: DiffusionPreset):
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    if preset.family == "sdxl":
        return [("text_encoder", "tokenizer", CLIPTextModel), ("text_encoder_2", "tokenizer_2", CLIPTextModelWithProjection)]
    return [("text_encoder", "tokenizer", CLIPTextModel)]


def _load_folder(preset: DiffusionPreset, root: Path, dtype: torch.dtype):
    """Weights from a local folder: diffusers layout plus `tiny_vae/` (and `lora/` if the preset
    fuses one). Every missing part is named in one error before anything heavy is loaded."""
    if not root.is_dir():
        raise ModelLoadError(f"model folder {root} does not exist")
    needed = ["unet", "scheduler"] + [e for e, _, _ in _encoder_classes(preset)] + [t for _, t, _ in _encoder_classes(preset)]
    missing = [name for name in needed if not (root / name).is_dir()]
    if not (root / TINY_VAE_DIR).is_dir() and preset.tiny_vae is None:
        missing.append(TINY_VAE_DIR)
    if missing:
        raise ModelLoadError(
            f"model folder {root} is missing {', '.join(m + '/' for m in missing)} "
            f"(expected a diffusers layout for preset {preset.name!r}, plus {TINY_VAE_DIR}/ with the tiny VAE)"
        )
    vae_source = str(root / TINY_VAE_DIR) if (root / TINY_VAE_DIR).is_dir() else preset.tiny_vae
    lora_source = str(root / LORA_DIR) if (root / LORA_DIR).is_dir() else preset.lora
    return _from_pretrained(preset, str(root), vae_source, lora_source, dtype)


def _load_hub(preset: DiffusionPreset, dtype: torch.dtype):
    try:
        return _from_pretrained(preset, preset.base_model, preset.tiny_vae, preset.lora, dtype)
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"could not load preset {preset.name!r} from the hub ({preset.base_model}, {preset.tiny_vae}"
            f"{', ' + preset.lora if preset.lora else ''}): {str(err).splitlines()[0]}. "
            "Download them once with network access, or pass --model-dir with a local copy, "
            "or --random-weights to build the architecture without weights"
        ) from err


def _from_pretrained(preset: DiffusionPreset, base: str, vae_source: str, lora_source: str | None, dtype: torch.dtype):
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer

    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet", torch_dtype=dtype)
    vae = autoencoder_class(preset).from_pretrained(vae_source, torch_dtype=dtype)
    encoders, tokenizers = [], []
    for encoder_name, tokenizer_name, cls in _encoder_classes(preset):
        encoders.append(cls.from_pretrained(base, subfolder=encoder_name, torch_dtype=dtype))
        tokenizers.append(AutoTokenizer.from_pretrained(base, subfolder=tokenizer_name))
    scheduler_config = dict(DDPMScheduler.load_config(base, subfolder="scheduler"))
    if lora_source is not None:
        fuse_lora(unet, lora_source)
    return unet, vae, encoders, tokenizers, scheduler_config


def fuse_lora(unet, source: str, scale: float = 1.0) -> None:
    """Merge a LoRA into the UNet's weights (no adapter left at run time, so no extra cost)."""
    from diffusers import StableDiffusionPipeline

    # The pipeline's state-dict reader understands the diffusers, kohya and PEFT key formats.
    state_dict, _ = StableDiffusionPipeline.lora_state_dict(source)
    unet.load_lora_adapter(state_dict, prefix="unet", adapter_name="fused")
    unet.fuse_lora(lora_scale=scale, adapter_names=["fused"])
    unet.unload_lora()
    log.info("fused LoRA %s into the UNet", source)
