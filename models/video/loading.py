"""Build or load the models of a video preset.

- built-in presets (`tiny-video`) and `random_weights=True` build the architecture from the
  shipped configs with seeded random weights (no download; same shapes and FLOPs);
- otherwise the causal transformer comes from `model_dir` (a diffusers `transformer/` folder or
  one checkpoint file) or the preset's hub checkpoint, and the VAE, text encoder and tokenizer
  from `model_dir`'s `vae/`, `text_encoder/`, `tokenizer/` or the preset's Wan2.1 base repository.

Causal checkpoints (Self-Forcing, CausVid, StreamDiffusionV2) are training snapshots of a wrapper
around the original Wan model: `causal_state_dict` unwraps them and maps the original Wan key
names onto diffusers' (docs/video.md lists the mapping).
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch

from models.device import resolve_device, resolve_dtype
from models.engines.video_parts import compile_video_transformer
from models.engines.video_vae import compile_video_vae
from models.loading import ModelLoadError, _move
from models.source import ModelSource
from models.tokenizer import build_byte_tokenizer
from models.video.bundle import VideoModels
from models.video.presets import VideoPreset, get_video_preset
from models.video.text_encoder import TextEncoder
from models.video.transformer import CausalWanTransformer
from models.video.vae import TinyStreamingVAE, WanStreamingVAE

log = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth")
# Wrapper prefixes left by FSDP, activation checkpointing and torch.compile in training snapshots.
WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def load_video_models(
    preset: str | VideoPreset,
    device: str = "auto",
    dtype: str = "auto",
    model_dir: Path | str | None = None,
    random_weights: bool = False,
    seed: int = 0,
    use_ema: bool = True,
    engine: str = "eager",
    engine_cache: Path | str | None = None,
) -> VideoModels:
    """`engine`: an `--engine` spec for the transformer and the VAE's encoder and decoder
    (models.engines; eager unless asked)."""
    source = ModelSource({"preset": preset, "dtype": dtype, "model_dir": model_dir, "random_weights": random_weights,
                          "seed": seed, "use_ema": use_ema, "engine": engine, "engine_cache": engine_cache})
    preset = get_video_preset(preset) if isinstance(preset, str) else preset
    dev = resolve_device(device)
    # Wan and umT5 were trained in bf16, and umT5 overflows in fp16: bf16 where `auto` would say fp16.
    dt = torch.bfloat16 if dtype == "auto" and dev.type == "cuda" else resolve_dtype(dtype, dev)
    root = Path(model_dir) if model_dir is not None else None
    if root is not None and not root.is_dir():
        raise ModelLoadError(f"model folder {root} does not exist")
    if root is None and (preset.built_in or random_weights):
        transformer, vae, text_model, tokenizer = build_from_configs(preset, dt, seed)
    else:
        transformer = _load_transformer(preset, root, dt, use_ema)
        vae, text_model, tokenizer = _load_base(preset, root, dt, seed)
    _move(transformer, dev, dt).eval().requires_grad_(False)
    compile_video_transformer(transformer, engine, dev, dt, engine_cache)
    streaming_vae = _streaming(vae)
    _move(vae, dev, dt).eval().requires_grad_(False)
    compile_video_vae(streaming_vae, engine, dev, dt, engine_cache)
    text_len = preset.config_json("text_encoder")["text_len"]
    encoder = TextEncoder(text_model, tokenizer, text_len, dev, dt, offload=preset.offload_text_encoder and dev.type != "cpu")
    return VideoModels(preset, transformer, streaming_vae, encoder, dev, dt, source)


def build_from_configs(preset: VideoPreset, dtype: torch.dtype = torch.float32, seed: int = 0, device: str | torch.device | None = None):
    """Transformer, VAE, text encoder and tokenizer with random weights; `device="meta"` allocates nothing."""
    # Seeded so every process builds identical built-in models (tests compare runs).
    with torch.random.fork_rng(devices=[]), torch.device(device) if device else contextlib.nullcontext():
        torch.manual_seed(seed)
        transformer = CausalWanTransformer.from_config(preset.config_json("transformer"))
        vae = _vae_from_config(preset.config_json("vae"))
        text_model = _text_encoder_from_config(preset.config_json("text_encoder"))
    if dtype != torch.float32 and device != "meta":
        for module in (transformer, vae, text_model):
            _move(module, None, dtype)
    tokenizer = build_byte_tokenizer(preset.config_json("text_encoder")["text_len"])
    return transformer, vae, text_model, tokenizer


def _vae_from_config(config: dict):
    from diffusers import AutoencoderKLWan

    config = dict(config)
    kind = config.pop("kind")
    return TinyStreamingVAE(**config) if kind == "tiny" else AutoencoderKLWan(**config)


def _text_encoder_from_config(config: dict):
    from transformers import UMT5Config, UMT5EncoderModel

    config = {k: v for k, v in config.items() if k != "text_len"}
    return UMT5EncoderModel(UMT5Config(**config))


def _streaming(vae):
    return vae if isinstance(vae, TinyStreamingVAE) else WanStreamingVAE(vae)


# ---- the causal transformer ---------------------------------------------------------------------


def causal_state_dict(raw: dict, use_ema: bool = True) -> dict[str, torch.Tensor]:
    """A causal checkpoint's transformer weights under diffusers' names.

    Accepts the training snapshots of Self-Forcing (`generator_ema` / `generator`), CausVid and
    StreamDiffusionV2 (`generator`), a `model` or `state_dict` entry, or a bare state dict; strips
    the wrapper's `model.` prefix and FSDP/compile prefixes; converts original Wan names
    (`blocks.0.self_attn.q.weight`) with diffusers' Wan converter, and leaves diffusers names as
    they are.
    """
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    order = ("generator_ema", "generator") if use_ema else ("generator", "generator_ema")
    for key in (*order, "model", "state_dict"):
        if isinstance(raw.get(key), dict):
            raw = raw[key]
            break
    weights = {}
    for name, tensor in raw.items():
        for prefix in WRAPPER_PREFIXES:
            name = name.replace(prefix, "")
        name = name.removeprefix("model.")
        weights[name] = tensor
    if any(".self_attn." in k or k.startswith("head.") for k in weights):
        weights = convert_wan_transformer_to_diffusers(weights)
    return weights


def read_checkpoint(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def load_causal_checkpoint(transformer: CausalWanTransformer, path: Path, use_ema: bool = True) -> None:
    """Load a causal checkpoint file into `transformer`, naming every missing or unexpected key."""
    weights = causal_state_dict(read_checkpoint(path), use_ema)
    result = transformer.load_state_dict(weights, strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise ModelLoadError(
            f"checkpoint {path} does not fit the {transformer.config.num_layers}-layer transformer: "
            f"missing {result.missing_keys[:5]}{'...' if len(result.missing_keys) > 5 else ''}, "
            f"unexpected {result.unexpected_keys[:5]}{'...' if len(result.unexpected_keys) > 5 else ''}"
        )


def _checkpoint_in(root: Path) -> Path | None:
    files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES)
    if len(files) > 1:
        raise ModelLoadError(f"model folder {root} holds several checkpoint files ({', '.join(p.name for p in files)}); keep one")
    return files[0] if files else None


def _load_transformer(preset: VideoPreset, root: Path | None, dtype: torch.dtype, use_ema: bool) -> CausalWanTransformer:
    if root is not None and (root / "transformer").is_dir():
        return CausalWanTransformer.from_pretrained(str(root / "transformer"), torch_dtype=dtype)
    path = _checkpoint_in(root) if root is not None else None
    if path is None:
        if preset.checkpoint is None:
            raise ModelLoadError(f"model folder {root} has no transformer/ folder and no checkpoint file ({', '.join(CHECKPOINT_SUFFIXES)})")
        path = _download(preset, *preset.checkpoint)
    from accelerate import init_empty_weights

    # Empty weights, then the checkpoint's tensors are assigned in place: a 14B model is never
    # materialised twice.
    with init_empty_weights():
        transformer = CausalWanTransformer.from_config(preset.config_json("transformer"))
    load_causal_checkpoint(transformer, path, use_ema)
    log.info("loaded causal transformer from %s", path)
    return _move(transformer, None, dtype)


def _download(preset: VideoPreset, repo: str, filename: str) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo, filename))
    except Exception as err:  # offline, gated, missing: one message that says what to do
        raise ModelLoadError(
            f"could not fetch {filename} from {repo} for preset {preset.name!r}: {str(err).splitlines()[0]}. "
            "Download it once with network access and pass --model-dir, or use --random-weights"
        ) from err


def _load_base(preset: VideoPreset, root: Path | None, dtype: torch.dtype, seed: int):
    """VAE, text encoder and tokenizer: from the folder where present, else built (built-in
    presets) or loaded from the preset's Wan2.1 base repository."""
    if preset.built_in:
        _, vae, text_model, tokenizer = build_from_configs(preset, dtype, seed)
        return vae, text_model, tokenizer
    from diffusers import AutoencoderKLWan
    from transformers import AutoTokenizer, UMT5EncoderModel

    def source(part: str) -> tuple[str, dict]:
        if root is not None and (root / part).is_dir():
            return str(root / part), {}
        return preset.base_model, {"subfolder": part}

    try:
        vae = AutoencoderKLWan.from_pretrained(source("vae")[0], torch_dtype=torch.float32, **source("vae")[1])
        text_model = UMT5EncoderModel.from_pretrained(source("text_encoder")[0], torch_dtype=dtype, **source("text_encoder")[1])
        tokenizer = AutoTokenizer.from_pretrained(source("tokenizer")[0], **source("tokenizer")[1])
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"could not load the VAE, text encoder and tokenizer of preset {preset.name!r} "
            f"({'from ' + str(root) + ' or ' if root else ''}{preset.base_model}): {str(err).splitlines()[0]}. "
            "Put vae/, text_encoder/ and tokenizer/ (diffusers layout) in --model-dir, or use --random-weights"
        ) from err
    return vae, text_model, tokenizer
