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
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

import torch

from models.control.registry import ControlModels, ControlSpec
from models.device import resolve_device, resolve_dtype
from models.diffusion import DiffusionModels, vae_scale_factor
from models.engines.cache import EngineCache
from models.engines.diffusion_parts import diffusion_engines
from models.engines.kinds import EngineChoice
from models.presets import PRESETS, DiffusionPreset, get_preset
from models.source import ModelSource
from models.tokenizer import build_byte_tokenizer

log = logging.getLogger(__name__)

# Subfolders of a local model folder (diffusers layout, plus the two parts this project adds).
TINY_VAE_DIR = "tiny_vae"
LORA_DIR = "lora"
# How long to wait for the hub before deciding there is no network: the hub client itself
# retries for most of a minute and then blames a missing file.
HUB_PROBE_TIMEOUT_S = 3.0


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
    controls: ControlSpec | None = None,
) -> DiffusionModels:
    """`engine`: an `--engine` spec (`auto` picks per device); eager by default, so code that
    loads models for itself (tests, training tools) runs plain PyTorch unless it asks.
    `controls`: ControlNets, IP-Adapter and LoRAs to load beside the UNet (models.control)."""
    choice = EngineChoice.parse(engine)
    source = ModelSource({"preset": preset, "dtype": dtype, "model_dir": model_dir, "random_weights": random_weights, "seed": seed,
                          "engine": str(choice), "engine_cache": engine_cache, "controls": controls})
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
    # Before the engines: a LoRA fused here is part of the weights their cache is keyed by.
    control_models = ControlModels(unet, preset.family, vae_scale_factor(vae), dt, dev, controls) if controls else ControlModels()
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
        controls=control_models,
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
    # Without network: one plain line now, not a minute of retries and then a misleading error.
    local_only = check_hub_weights(preset.name, hub_repos(preset))
    try:
        return _from_pretrained(preset, preset.base_model, preset.tiny_vae, preset.lora, dtype, local_only=local_only)
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"could not load preset {preset.name!r} from the hub ({', '.join(hub_repos(preset))}): {str(err).splitlines()[0]}. "
            "Download them once with network access, or pass --model-dir with a local copy, "
            "or --random-weights to build the architecture without weights"
        ) from err


def hub_repos(preset: DiffusionPreset) -> list[str]:
    """The hub repositories a diffusion preset loads from when it has no --model-dir."""
    return [repo for repo in (preset.base_model, preset.tiny_vae, preset.lora) if repo]


def preset_hub_repos(name: str) -> list[str]:
    """The hub repositories any preset (diffusion or video) downloads without --model-dir; none for the offline ones."""
    from models.video.presets import PRESETS as VIDEO_PRESETS

    if name in PRESETS:
        return hub_repos(PRESETS[name])
    video = VIDEO_PRESETS[name]
    return [repo for repo in (video.base_model, video.checkpoint[0] if video.checkpoint else None) if repo]


def offline_presets() -> list[str]:
    """Presets whose weights are built in or shipped in the package: they need no network."""
    from models.video.presets import PRESETS as VIDEO_PRESETS

    return [name for name, p in {**PRESETS, **VIDEO_PRESETS}.items() if p.built_in or getattr(p, "embedded", False)]


def hub_offline_reason(timeout: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """None when the Hugging Face hub answers within `timeout`, else why not (HF_HUB_OFFLINE, no route, no DNS).

    Probed on a thread so that a name lookup that hangs cannot hold the caller past `timeout`."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    probe = ThreadPoolExecutor(1, thread_name_prefix="hub-probe")
    try:
        probe.submit(get_session().head, constants.ENDPOINT, timeout=timeout).result(timeout + 0.5)
    except FutureTimeout:
        return f"{constants.ENDPOINT} did not answer within {timeout:.0f} s"
    except Exception as err:  # noqa: BLE001 - any failure to reach the hub means the same: work offline
        return f"{constants.ENDPOINT} cannot be reached ({str(err).splitlines()[0] if str(err) else type(err).__name__})"
    finally:
        probe.shutdown(wait=False)
    return None


def missing_from_hub_cache(repos: list[str]) -> list[str]:
    """The repositories of `repos` that have no snapshot in the local hub cache."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    missing = []
    for repo in repos:
        try:
            snapshot_download(repo, local_files_only=True)
        except LocalEntryNotFoundError:
            missing.append(repo)
    return missing


def check_hub_weights(preset_name: str, repos: list[str]) -> bool:
    """Whether `repos` must load from the hub cache alone (the hub cannot be reached); ModelLoadError, in one line
    that names the way out, when some of them are not there either. Takes at most a few seconds (HUB_PROBE_TIMEOUT_S)."""
    from huggingface_hub import constants

    if not repos:
        return False
    reason = hub_offline_reason()
    if reason is None:
        return False
    missing = missing_from_hub_cache(repos)
    if missing:
        raise ModelLoadError(
            f"preset {preset_name!r} needs {', '.join(missing)} from the Hugging Face hub, but there is no network ({reason}) "
            f"and {'it is' if len(missing) == 1 else 'they are'} not in the hub cache ({constants.HF_HUB_CACHE}). "
            f"Pass --model-dir DIR with a local copy (README: Real weights), download once where there is network, "
            f"or use a preset that needs no download: {', '.join(offline_presets())} (or --random-weights for the architecture alone)")
    return True


def _from_pretrained(preset: DiffusionPreset, base: str, vae_source: str, lora_source: str | None, dtype: torch.dtype,
                     local_only: bool = False):
    """`local_only`: read the hub cache and never the network (there is none: see hub_offline_reason)."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer

    local = {"local_files_only": True} if local_only else {}
    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet", torch_dtype=dtype, **local)
    vae = autoencoder_class(preset).from_pretrained(vae_source, torch_dtype=dtype, **local)
    encoders, tokenizers = [], []
    for encoder_name, tokenizer_name, cls in _encoder_classes(preset):
        encoders.append(cls.from_pretrained(base, subfolder=encoder_name, torch_dtype=dtype, **local))
        tokenizers.append(AutoTokenizer.from_pretrained(base, subfolder=tokenizer_name, **local))
    scheduler_config = dict(DDPMScheduler.load_config(base, subfolder="scheduler", **local))
    if lora_source is not None:
        fuse_lora(unet, lora_source, preset.family, local_only=local_only)
    return unet, vae, encoders, tokenizers, scheduler_config


def fuse_lora(unet, source: str, family: str = "sd", scale: float = 1.0, local_only: bool = False) -> None:
    """Merge a preset's LoRA into the UNet's weights (no adapter left at run time, so no extra
    cost); read like a stream's LoRA (models.control.lora: diffusers, kohya and PEFT formats, with
    the alpha saved beside them)."""
    from models.control.lora import fuse_into, load_lora

    fuse_into(unet, load_lora("preset", source, unet, family, unet.dtype, unet.device, local_only=local_only), scale)
