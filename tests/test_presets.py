"""Model presets: the built-in ones build in-process, the real ones have their published
shapes, and real weights load through the same code from a local diffusers-layout folder."""

import os
import subprocess
import sys

import pytest
import torch

from models.loading import ModelLoadError, build_from_configs, fuse_lora, load_diffusion_models
from models.presets import UnknownPresetError, get_preset, preset_names

# Published parameter counts (UNet; text encoders in order) of the architectures the presets name.
PUBLISHED = {
    "sd-turbo": (865_910_724, [340_387_840]),  # SD 2.1 UNet, OpenCLIP ViT-H text tower (23 layers)
    "sdxl-turbo": (2_567_463_684, [123_060_480, 694_659_840]),  # SDXL UNet, CLIP ViT-L + OpenCLIP bigG
    "sd15-lcm": (859_520_964, [123_060_480]),  # SD 1.5 UNet, CLIP ViT-L
}


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_real_presets_build_their_published_architecture_without_weights(name):
    unet, vae, encoders, tokenizers, scheduler = build_from_configs(get_preset(name), device="meta")
    unet_params, encoder_params = PUBLISHED[name]
    assert count(unet) == unet_params
    assert [count(e) for e in encoders] == encoder_params
    assert unet.config.in_channels == vae.config.latent_channels == 4
    assert len(vae.config.decoder_block_out_channels) == 4  # 8x: 512x512 frames -> 64x64 latents
    assert unet.config.sample_size == 64
    assert len(tokenizers) == len(encoders)
    assert scheduler["num_train_timesteps"] == 1000


def test_every_preset_is_covered_by_a_shape_check_or_builds_in_process():
    for name in preset_names():
        assert name in PUBLISHED or get_preset(name).built_in or get_preset(name).embedded  # embedded: test_style_preset.py


@pytest.mark.parametrize("name", ["tiny", "tiny-sdxl"])
def test_built_in_presets_run_every_part(name):
    models = load_diffusion_models(name)
    embeds = models.encode_prompt(["a cat", "pencil sketch"])
    assert embeds.hidden.shape[:2] == (2, 77)
    assert (embeds.pooled is not None) == (get_preset(name).family == "sdxl")
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    latents = models.encode_images(images)
    assert latents.shape == (2, 4, 8, 8)
    assert models.predict(latents, torch.tensor([999, 99]), embeds).shape == latents.shape
    assert models.decode_latents(latents).shape == images.shape


def test_built_in_presets_are_identical_across_builds():
    a, b = load_diffusion_models("tiny"), load_diffusion_models("tiny")
    for (name, pa), pb in zip(a.unet.state_dict().items(), b.unet.state_dict().values()):
        assert torch.equal(pa, pb), name


def test_unknown_preset_names_the_choices():
    with pytest.raises(UnknownPresetError, match="choose one of tiny"):
        get_preset("sd-ultra")


def _save_diffusers_folder(models, root):
    models.unet.save_pretrained(root / "unet")
    models.text_encoders[0].save_pretrained(root / "text_encoder")
    models.tokenizers[0].save_pretrained(root / "tokenizer")
    models.vae.save_pretrained(root / "tiny_vae")
    from diffusers import DDPMScheduler

    DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear").save_pretrained(root / "scheduler")


def test_weights_load_from_a_local_folder_in_diffusers_layout(tmp_path):
    built = load_diffusion_models("tiny")
    _save_diffusers_folder(built, tmp_path)
    loaded = load_diffusion_models("tiny", model_dir=tmp_path)
    embeds = loaded.encode_prompt(["a cat"])
    assert torch.allclose(embeds.hidden, built.encode_prompt(["a cat"]).hidden)
    latents = torch.randn(1, 4, 8, 8)
    t = torch.tensor([500])
    # same weights; only float summation order may differ between the two module instances
    assert torch.allclose(loaded.predict(latents, t, embeds), built.predict(latents, t, embeds), atol=1e-5)
    assert torch.allclose(loaded.alphas_cumprod, built.alphas_cumprod)


def test_a_folder_with_missing_parts_is_rejected_with_what_is_missing(tmp_path):
    (tmp_path / "unet").mkdir()
    with pytest.raises(ModelLoadError, match="missing scheduler/, text_encoder/, tokenizer/, tiny_vae/"):
        load_diffusion_models("tiny", model_dir=tmp_path)
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_diffusion_models("tiny", model_dir=tmp_path / "nowhere")


def test_lora_is_fused_into_the_unet_weights(tmp_path):
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    trained = load_diffusion_models("tiny").unet  # the LoRA is made on one UNet, fused into another
    trained.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=["to_q"], init_lora_weights=False))
    lora = {k: v.clone() for k, v in get_peft_model_state_dict(trained).items()}
    StableDiffusionPipeline.save_lora_weights(tmp_path, unet_lora_layers=lora, unet_lora_adapter_metadata=trained.peft_config["default"].to_dict())

    unet = load_diffusion_models("tiny").unet
    target = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    before = unet.get_submodule(target).weight.clone()
    fuse_lora(unet, str(tmp_path))
    down = next(v for k, v in lora.items() if k.startswith(target) and "lora_A" in k)
    up = next(v for k, v in lora.items() if k.startswith(target) and "lora_B" in k)
    # alpha / rank = 2, read from the metadata saved with the file.
    assert torch.allclose(unet.get_submodule(target).weight, before + 2 * up @ down, atol=1e-6)
    assert not any("lora" in name for name, _ in unet.named_parameters())  # merged, no adapter left


def test_hub_presets_without_network_say_how_to_get_the_weights(tmp_path):
    # A separate process: the hub client reads HF_HUB_OFFLINE when it is imported.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    code = "from models.loading import load_diffusion_models as l\ntry:\n l('sd-turbo')\nexcept ValueError as e: print(e)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "preset 'sd-turbo' needs stabilityai/sd-turbo, madebyollin/taesd" in out.stdout and "HF_HUB_OFFLINE is set" in out.stdout
    assert "--model-dir" in out.stdout and "--random-weights" in out.stdout and "style" in out.stdout
