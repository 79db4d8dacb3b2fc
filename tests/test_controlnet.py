"""ControlNet for stream-diffusion: Stream Batch with control equals sequential denoising.

Every frame is denoised under its own control image at every step (it travels with the frame
through the slots), in every residual-CFG mode, for SD and SDXL conditioning, with the
TemporalNet-style previous-output control, and beside streams without control in one batch.
Also: the preprocessors, hot scale changes, refusals, and loading a saved ControlNet.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.control.controlnet import ControlLoadError, random_controlnet
from models.control.registry import ControlSpec
from models.loading import load_diffusion_models
from pipelines.base import ParamError
from pipelines.pictures import picture_to_tensor
from pipelines.stream_diffusion.control import frame_images
from pipelines.stream_diffusion.control_params import ControlNetChoice
from pipelines.stream_diffusion.pipeline import StreamDiffusionPipeline
from pipelines.stream_diffusion.preprocessors import canny, soft_edges
from pipelines.stream_diffusion.reference import denoise_sequential
from streaming.frames import VideoFrame

from control_streams import assert_close, clip, decode, differs, run_together, run_with_latents

SIZE = {"width": 64, "height": 64}
CANNY = {"model": "edges", "preprocessor": "canny", "scale": 0.9, "low_threshold": 50, "high_threshold": 150}


def images_of(params: dict, picture: np.ndarray) -> dict:
    """A frame's control images, made the way the pipeline makes them."""
    choices = [ControlNetChoice(**c) for c in params["controlnets"]]
    tensor = picture_to_tensor(picture, params["width"], params["height"], torch.device("cpu"), torch.float32)
    return {c.image_key: image for c, image in zip(choices, frame_images([(c, tensor) for c in choices]))}


@pytest.fixture(scope="module")
def pipe():
    spec = ControlSpec(controlnets={"edges": "random", "temporal": "random"})
    return StreamDiffusionPipeline(load_diffusion_models("tiny", controls=spec))


@pytest.mark.parametrize("cfg_type", ["none", "full", "self", "onetime"])
def test_stream_batch_with_a_controlnet_equals_sequential_denoising(pipe, cfg_type, monkeypatch):
    params = {**SIZE, "prompt": "a cat", "negative_prompt": "blurry", "cfg_type": cfg_type, "guidance_scale": 1.8, "delta": 0.7,
              "t_index_list": [10, 30, 45], "controlnets": [CANNY]}
    state = pipe.new_state(params)
    frames = clip(6, step=2)
    outputs, latents = run_with_latents(pipe, state, frames, monkeypatch)
    plain = run_together(pipe, [pipe.new_state({**params, "controlnets": []})], frames)[0]
    for k in range(2, 6):
        expected = denoise_sequential(pipe, state, frames[k], control_images=images_of(params, frames[k]))
        torch.testing.assert_close(latents[k], expected[0], atol=1e-4, rtol=1e-4)
        assert_close(outputs[k], decode(pipe, expected))
        assert differs(outputs[k], plain[k])  # the ControlNet steers: the equality above is not the plain model's


def test_each_frame_keeps_its_own_control_image_through_the_slots(pipe, monkeypatch):
    """With the newest frame's control image on every slot (upstream's fork), frame k would not
    equal its own sequential denoising: this is what carrying images per slot buys."""
    params = {**SIZE, "prompt": "a cat", "cfg_type": "none", "t_index_list": [5, 25, 45], "controlnets": [{**CANNY, "scale": 2.0}]}
    state = pipe.new_state(params)
    frames = clip(6, step=2)
    frames[5] = np.full_like(frames[5], 40)  # the next frame has no edges at all
    _, latents = run_with_latents(pipe, state, frames, monkeypatch)
    k = 4
    own = denoise_sequential(pipe, state, frames[k], control_images=images_of(params, frames[k]))
    newest = denoise_sequential(pipe, state, frames[k], control_images=images_of(params, frames[k + 1]))
    torch.testing.assert_close(latents[k], own[0], atol=1e-4, rtol=1e-4)
    assert (own - newest).abs().max() > 0.05, (own - newest).abs().max()


def test_previous_output_control_equals_sequential_with_that_output(pipe):
    params = {**SIZE, "prompt": "a cat", "cfg_type": "self", "guidance_scale": 1.4, "t_index_list": [20, 40],
              "controlnets": [{"model": "temporal", "preprocessor": "previous_output", "scale": 1.0}]}
    state = pipe.new_state(params)
    frames = clip(6, step=2)
    outputs = run_together(pipe, [state], frames)[0]
    n = 2
    for k in range(n, 6):
        # frame k went in when frame k-n had just come out: that picture is its control image
        control = images_of({**params, "controlnets": [{**params["controlnets"][0], "preprocessor": "input"}]}, outputs[k - n])
        control = {("previous_output", 0, 0): next(iter(control.values()))}
        assert_close(outputs[k], decode(pipe, denoise_sequential(pipe, state, frames[k], control_images=control)))


def test_streams_with_and_without_control_in_one_batch_equal_each_alone(pipe):
    base = {**SIZE, "prompt": "a cat", "cfg_type": "full", "guidance_scale": 1.5, "t_index_list": [10, 30, 45]}
    configs = [{**base, "controlnets": [CANNY, {"model": "temporal", "preprocessor": "soft_edge", "scale": 0.5}]},
               {**base, "prompt": "a dog"}, {**base, "controlnets": [{**CANNY, "scale": 0.3}]}]
    frames = clip(5, step=2)
    together = run_together(pipe, [pipe.new_state(c) for c in configs], frames)
    for config, outputs in zip(configs, together):
        alone = run_together(pipe, [pipe.new_state(config)], frames)[0]
        for k in range(5):
            assert_close(outputs[k], alone[k])


def test_sdxl_controlnet_stream_batch_equals_sequential():
    pipe = StreamDiffusionPipeline(load_diffusion_models("tiny-sdxl", controls=ControlSpec(controlnets={"edges": "random"})))
    params = {**SIZE, "prompt": "a cat", "cfg_type": "full", "guidance_scale": 2.0, "t_index_list": [20, 40], "controlnets": [CANNY]}
    state = pipe.new_state(params)
    frames = clip(4, step=2)
    outputs = run_together(pipe, [state], frames)[0]
    for k in range(1, 4):
        assert_close(outputs[k], decode(pipe, denoise_sequential(pipe, state, frames[k], control_images=images_of(params, frames[k]))))


def test_scale_changes_are_hot_and_bad_choices_are_refused_leaving_the_stream_as_it_was(pipe):
    state = pipe.new_state({**SIZE, "t_index_list": [10, 30, 45], "controlnets": [CANNY]})
    for k, image in enumerate(clip(2, step=2)):
        pipe.step([(state, VideoFrame(image, k))])
    result = pipe.update(state, {"controlnets": [{**CANNY, "scale": 0.2}]})
    assert not result.reset and pipe.in_flight(state) == 2 and state.params.controlnets[0].scale == 0.2
    with pytest.raises(ParamError, match="no ControlNet 'depth' is loaded; loaded: edges, temporal") as err:
        pipe.update(state, {"controlnets": [{"model": "depth"}]})
    assert err.value.field == "controlnets" and state.params.controlnets[0].scale == 0.2
    with pytest.raises(ParamError, match="low_threshold 200 is above high_threshold 100"):
        pipe.update(state, {"controlnets": [{**CANNY, "low_threshold": 200, "high_threshold": 100}]})
    with pytest.raises(ParamError, match="controlnets.0.preprocessor"):
        pipe.update(state, {"controlnets": [{**CANNY, "preprocessor": "depth"}]})
    with pytest.raises(ParamError, match="preprocessor 'canny' needs an input frame"):
        pipe.new_state({**SIZE, "mode": "txt2img", "cfg_type": "none", "controlnets": [CANNY]})


def test_txt2img_with_previous_output_control_runs_and_is_steered(pipe):
    params = {**SIZE, "mode": "txt2img", "cfg_type": "none", "prompt": "a cat", "t_index_list": [30],
              "controlnets": [{"model": "temporal", "preprocessor": "previous_output", "scale": 1.5}]}
    state = pipe.new_state(params)
    first = [pipe.step([(state, None)])[0].frames[0].image for _ in range(3)]
    assert first[0].shape == (64, 64, 3)
    assert "control-0" in pipe.stream_pictures(state)


def test_the_preprocessors_find_the_edges_of_a_square():
    picture = np.zeros((64, 64, 3), np.uint8)
    picture[16:48, 16:48] = 255
    tensor = picture_to_tensor(picture, 64, 64, torch.device("cpu"), torch.float32)
    edges = canny(tensor, [100], [200])[0, 0]
    assert edges.shape == (64, 64) and set(edges.unique().tolist()) == {0.0, 1.0}
    assert edges[16:48, 15:17].any() and not edges[24:40, 24:40].any() and not edges[:8].any()
    soft = soft_edges(tensor)[0, 0]
    assert soft.max() == 1.0 and soft[32, 16] > 0.5 and soft[32, 32] == 0 and soft[2, 2] == 0


def test_a_saved_controlnet_loads_through_from_pretrained_and_a_mismatched_one_is_refused(tmp_path):
    sd = load_diffusion_models("tiny")
    random_controlnet(sd.unet, 8, seed=3).save_pretrained(tmp_path / "edges")
    loaded = load_diffusion_models("tiny", controls=ControlSpec(controlnets={"edges": str(tmp_path / "edges")}))
    saved = random_controlnet(sd.unet, 8, seed=3).state_dict()
    assert all(torch.equal(v, saved[k]) for k, v in loaded.controls.controlnet("edges").state_dict().items())
    xl = load_diffusion_models("tiny-sdxl")
    random_controlnet(xl.unet, 8).save_pretrained(tmp_path / "xl")
    with pytest.raises(ControlLoadError, match="made for another base model"):
        load_diffusion_models("tiny", controls=ControlSpec(controlnets={"xl": str(tmp_path / "xl")}))
    with pytest.raises(ControlLoadError, match="could not load ControlNet 'gone'"):
        load_diffusion_models("tiny", controls=ControlSpec(controlnets={"gone": str(tmp_path / "missing")}))


def test_the_cost_shape_says_what_controls_cost(pipe):
    profile = pipe.scheduling
    base = {**SIZE, "t_index_list": [10, 30, 45]}
    plain = pipe.new_state(base).params
    assert profile.cost_shape(plain) == (64, 64, 3)  # as before: plain streams are measured as they always were
    one = pipe.new_state({**base, "controlnets": [CANNY]}).params
    two = pipe.new_state({**base, "controlnets": [CANNY, {**CANNY, "model": "temporal", "scale": 0.5}]}).params
    off = pipe.new_state({**base, "controlnets": [{**CANNY, "scale": 0.0}]}).params
    assert profile.cost_shape(one) == (64, 64, 3, 2) and profile.cost_shape(two) == (64, 64, 3, 3)
    assert profile.cost_shape(off) == (64, 64, 3)  # a ControlNet at scale 0 does not run
