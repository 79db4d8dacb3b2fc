"""IP-Adapter (image prompt) for stream-diffusion.

Stream Batch with an image prompt equals sequential denoising; our per-row decoupled
cross-attention equals diffusers' IP-Adapter processors on the same weights (loaded from a file
in h94/IP-Adapter's format); streams with and without an image prompt share a batch without
leaking; a picture is embedded once per stream; 'input' takes the next input frame.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from models.control.conditioned_unet import RowControl, predict_with_controls
from models.control.ip_adapter import cross_attentions, load_ip_adapter
from models.control.registry import ControlSpec
from models.loading import load_diffusion_models
from pipelines.base import ParamError
from pipelines.stream_diffusion import control_images
from pipelines.stream_diffusion.pipeline import StreamDiffusionPipeline
from pipelines.stream_diffusion.reference import denoise_sequential
from streaming.frames import VideoFrame

from control_streams import assert_close, clip, decode, run_together

SIZE = {"width": 64, "height": 64}


def data_url(picture: np.ndarray) -> str:
    out = io.BytesIO()
    Image.fromarray(picture).save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def stripes(colour: tuple[int, int, int]) -> np.ndarray:
    picture = np.zeros((48, 48, 3), np.uint8)
    picture[::6] = colour
    return picture


@pytest.fixture(scope="module")
def pipe():
    return StreamDiffusionPipeline(load_diffusion_models("tiny", controls=ControlSpec(ip_adapter="random")))


@pytest.mark.parametrize("cfg_type", ["full", "self"])
def test_stream_batch_with_an_image_prompt_equals_sequential_denoising(pipe, cfg_type):
    params = {**SIZE, "prompt": "a cat", "cfg_type": cfg_type, "guidance_scale": 1.6, "t_index_list": [10, 30, 45],
              "image_prompt": data_url(stripes((255, 0, 0))), "image_prompt_weight": 1.2}
    state = pipe.new_state(params)
    assert state.params.image_prompt.startswith("sha256:")  # the parameters in force name the picture, not its bytes
    frames = clip(5)
    outputs, plain = run_together(pipe, [state, pipe.new_state({**params, "image_prompt": None})], frames)
    for k in range(2, 5):
        expected = denoise_sequential(pipe, state, frames[k])
        assert_close(outputs[k], decode(pipe, expected))
    assert np.abs(outputs[4].astype(int) - plain[4].astype(int)).max() > 4  # the image prompt steers


def test_per_row_image_attention_equals_diffusers_ip_adapter_processors(pipe, tmp_path):
    """Save the adapter in h94/IP-Adapter's file format, load it back through our loader, and
    compare our UNet call with diffusers' own IP-Adapter processors on those weights."""
    adapter = pipe.models.controls.ip_adapter
    unet = pipe.models.unet
    flat = {f"image_proj.{k.replace('image_embeds.', 'proj.', 1)}": v for k, v in adapter.projection.state_dict().items()}
    for index, name in enumerate(cross_attentions(unet)):
        to_k_ip, to_v_ip = adapter.layers[name]
        flat[f"ip_adapter.{2 * index + 1}.to_k_ip.weight"] = to_k_ip.weight.contiguous()
        flat[f"ip_adapter.{2 * index + 1}.to_v_ip.weight"] = to_v_ip.weight.contiguous()
    save_file(flat, tmp_path / "ip-adapter.safetensors")
    adapter.image_encoder.save_pretrained(tmp_path / "image_encoder")
    loaded = load_ip_adapter(str(tmp_path / "ip-adapter.safetensors"), unet, torch.float32, torch.device("cpu"))
    picture = torch.rand(1, 3, 40, 56, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(loaded.tokens(picture), adapter.tokens(picture))

    theirs_models = load_diffusion_models("tiny")
    grouped = {"image_proj": {k.removeprefix("image_proj."): v for k, v in flat.items() if k.startswith("image_proj.")},
               "ip_adapter": {k.removeprefix("ip_adapter."): v for k, v in flat.items() if k.startswith("ip_adapter.")}}
    theirs_models.unet._load_ip_adapter_weights([grouped], low_cpu_mem_usage=False)
    for processor in theirs_models.unet.attn_processors.values():
        if hasattr(processor, "scale"):
            processor.scale = [0.8]
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    timesteps = torch.tensor([700, 200])
    embeds = pipe.models.encode_prompt(["a cat", "a dog"])
    image_embeds = adapter.image_encoder((torch.nn.functional.interpolate(picture, size=(32, 32)) - 0.45) / 0.27).image_embeds
    tokens = adapter.projection(image_embeds)[0]
    theirs = theirs_models.unet(latents, timesteps, encoder_hidden_states=embeds.hidden, return_dict=False,
                                added_cond_kwargs={"image_embeds": [image_embeds.expand(2, -1).unsqueeze(1)]})[0]
    ours = predict_with_controls(pipe.models, latents, timesteps, embeds, [RowControl(ip_tokens=tokens, ip_weight=0.8)] * 2)
    assert (ours - pipe.models.predict(latents, timesteps, embeds)).abs().max() > 1e-2
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_streams_with_other_image_prompts_or_none_in_one_batch_equal_each_alone(pipe):
    base = {**SIZE, "prompt": "a cat", "cfg_type": "none", "t_index_list": [20, 40]}
    configs = [{**base, "image_prompt": data_url(stripes((255, 0, 0)))},
               {**base, "image_prompt": data_url(stripes((0, 0, 255))), "image_prompt_weight": 2.0}, base]
    frames = clip(4)
    together = run_together(pipe, [pipe.new_state(c) for c in configs], frames)
    for config, outputs in zip(configs, together):
        alone = run_together(pipe, [pipe.new_state(config)], frames)[0]
        for k in range(4):
            assert_close(outputs[k], alone[k])


def test_a_picture_is_embedded_once_per_stream(pipe, monkeypatch):
    calls = []
    adapter = pipe.models.controls.ip_adapter
    original = adapter.tokens
    monkeypatch.setattr(adapter, "tokens", lambda pictures: calls.append(len(pictures)) or original(pictures))
    red, blue = data_url(stripes((255, 0, 0))), data_url(stripes((0, 0, 255)))
    state = pipe.new_state({**SIZE, "image_prompt": red})
    pipe.update(state, {"image_prompt_weight": 1.5})
    pipe.update(state, {"image_prompt": blue})
    red_tokens = state.controls.ip_cache[control_images.store_data_url(red)]
    pipe.update(state, {"image_prompt": red})  # back to a picture this stream embedded: no new embedding
    assert calls == [1, 1] and state.controls.ip_tokens is red_tokens


def test_input_takes_the_next_input_frame_as_the_image_prompt(pipe):
    state = pipe.new_state({**SIZE, "t_index_list": [30], "image_prompt": "input"})
    assert state.controls.ip_tokens is None and state.controls.take_input
    frame = clip(1, seed=5)[0]
    pipe.step([(state, VideoFrame(frame, 0))])
    expected = pipe.models.controls.ip_adapter.tokens(torch.from_numpy(frame).permute(2, 0, 1).unsqueeze(0).float() / 255)[0]
    torch.testing.assert_close(state.controls.ip_tokens, expected, atol=1e-4, rtol=1e-4)
    kept = state.controls.ip_tokens
    pipe.step([(state, VideoFrame(clip(1, seed=6)[0], 1))])
    assert state.controls.ip_tokens is kept  # taken once, not every frame


def test_bad_image_prompts_are_refused_with_a_reason_and_leave_the_stream_as_it_was(pipe):
    state = pipe.new_state({**SIZE, "image_prompt": data_url(stripes((255, 0, 0)))})
    before = state.params.image_prompt
    for value, message in [("data:image/png;base64,%%%", "base64 does not decode"),
                           ("data:image/png;base64," + base64.b64encode(b"not a picture").decode(), "not a picture that decodes"),
                           ("https://example.com/cat.png", "data:image/png|jpeg|webp;base64"),
                           ("sha256:" + "0" * 64, "no picture sha256:0000")]:
        with pytest.raises(ParamError, match=message) as err:
            pipe.update(state, {"image_prompt": value})
        assert err.value.field == "image_prompt" and state.params.image_prompt == before
    plain = StreamDiffusionPipeline(load_diffusion_models("tiny"))
    with pytest.raises(ParamError, match="no IP-Adapter is loaded"):
        plain.new_state({**SIZE, "image_prompt": "input"})
    with pytest.raises(ParamError, match="image_prompt 'input' needs an input frame"):
        pipe.new_state({**SIZE, "mode": "txt2img", "cfg_type": "none", "image_prompt": "input"})


def test_sdxl_with_an_image_prompt_and_a_lora_equals_sequential_denoising():
    """SDXL's conditioning (pooled embeddings, time ids) with per-row image attention and LoRA deltas."""
    pipe = StreamDiffusionPipeline(load_diffusion_models("tiny-sdxl", controls=ControlSpec(loras={"ink": "random"}, ip_adapter="random")))
    state = pipe.new_state({**SIZE, "prompt": "a cat", "cfg_type": "full", "guidance_scale": 1.5, "t_index_list": [20, 40],
                            "loras": {"ink": 0.8}, "image_prompt": data_url(stripes((0, 255, 0)))})
    frames = clip(4)
    outputs = run_together(pipe, [state], frames)[0]
    for k in range(1, 4):
        assert_close(outputs[k], decode(pipe, denoise_sequential(pipe, state, frames[k])))
