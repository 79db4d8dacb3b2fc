"""The stream-batched diffusion pipeline on the built-in presets.

The central checks are equivalences: after warm-up, Stream Batch gives for frame k what plain
sequential denoising of frame k gives (every CFG mode), and streams batched together give what
each gives alone. The rest pins down warm-up, draining, updates and the similarity filter.
"""

import numpy as np
import pytest
import torch

from pipelines.base import ParamError, UpdateClass, update_class_of
from pipelines.registry import ModelOptions, load_pipeline
from pipelines.stream_diffusion.reference import denoise_sequential
from streaming.frames import VideoFrame

SIZE = {"width": 64, "height": 64}


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline("stream-diffusion", ModelOptions(preset="tiny"))


@pytest.fixture(scope="module")
def sdxl_pipe():
    return load_pipeline("stream-diffusion", ModelOptions(preset="tiny-sdxl"))


def clip(n, seed=0, shape=(64, 64, 3)):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, shape, dtype=np.uint8)
    # a moving bright square on a fixed background, so consecutive frames differ but are related
    frames = []
    for k in range(n):
        img = base.copy()
        img[8 + k : 24 + k, 8 : 24] = 255
        frames.append(img)
    return frames


def run_stream(pipe, state, frames, start_id=0):
    """Feed frames one per step, then drain; return {frame_id: output image}."""
    out = {}
    for k, image in enumerate(frames):
        for f in pipe.step([(state, VideoFrame(image, start_id + k, (start_id + k) / 30))])[0].frames:
            out[f.frame_id] = f
    while pipe.in_flight(state):
        for f in pipe.step([(state, None)])[0].frames:
            out[f.frame_id] = f
    return out


def decode(pipe, latent):
    return ((pipe.models.decode_latents(latent)[0].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy()


def assert_images_close(a, b):
    """uint8 images equal up to rounding of float noise (at most 1 level, on few pixels)."""
    diff = np.abs(a.astype(int) - b.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (diff.max(), (diff > 0).mean())


# ---- warm-up, order, drain -----------------------------------------------------------------------


@pytest.mark.parametrize("t_index_list", [[40], [32, 45], [10, 25, 40], [0, 16, 32, 45]])
def test_each_frame_comes_out_once_in_order_after_n_minus_1_frames(pipe, t_index_list):
    state = pipe.new_state({**SIZE, "prompt": "a cat", "t_index_list": t_index_list})
    n = len(t_index_list)
    emitted = []
    for k, image in enumerate(clip(6)):
        result = pipe.step([(state, VideoFrame(image, 100 + k, 0.5 + k / 30))])[0]
        assert result.consumed
        emitted.append([(f.frame_id, f.pts) for f in result.frames])
    # warm-up emits nothing (no junk frame), then one frame per call, N-1 frames behind
    assert emitted[: n - 1] == [[]] * (n - 1)
    assert [e[0][0] for e in emitted[n - 1 :]] == [100 + k for k in range(6 - n + 1)]
    assert pipe.in_flight(state) == n - 1
    drained = []
    while pipe.in_flight(state):
        drained += [f.frame_id for f in pipe.step([(state, None)])[0].frames]
    assert drained == [100 + k for k in range(6 - n + 1, 6)]
    assert emitted[n - 1][0][1] == pytest.approx(0.5)  # pts of the input it came from
    assert pipe.step([(state, None)])[0].consumed is False  # nothing left to drain


def test_output_has_the_stream_size_whatever_the_input_size(pipe):
    state = pipe.new_state({"width": 96, "height": 64, "t_index_list": [30]})
    out = pipe.step([(state, VideoFrame(clip(1, shape=(90, 160, 3))[0], 0))])[0].frames[0]
    assert out.image.shape == (64, 96, 3) and out.image.dtype == np.uint8


# ---- equivalence with sequential denoising ----------------------------------------------------------


@pytest.mark.parametrize("cfg_type", ["none", "full", "self", "onetime"])
@pytest.mark.parametrize("add_noise", [True, False])
def test_stream_batch_equals_sequential_denoising(pipe, cfg_type, add_noise):
    params = {**SIZE, "prompt": "a cat", "negative_prompt": "blurry", "cfg_type": cfg_type,
              "guidance_scale": 1.8, "delta": 0.7, "t_index_list": [10, 30, 45], "add_noise": add_noise}
    state = pipe.new_state(params)
    frames = clip(7)
    outputs = run_stream(pipe, state, frames)
    assert sorted(outputs) == list(range(7))
    for k in range(2, 7):  # after warm-up every slot of the batch held a real frame
        expected = decode(pipe, denoise_sequential(pipe, state, frames[k]))
        assert_images_close(outputs[k].image, expected)


def test_stream_batch_equals_sequential_for_sdxl_conditioning(sdxl_pipe):
    state = sdxl_pipe.new_state({**SIZE, "prompt": "a cat", "cfg_type": "full", "guidance_scale": 2.0, "t_index_list": [20, 40]})
    frames = clip(4)
    outputs = run_stream(sdxl_pipe, state, frames)
    for k in range(1, 4):
        assert_images_close(outputs[k].image, decode(sdxl_pipe, denoise_sequential(sdxl_pipe, state, frames[k])))


def test_txt2img_stream_batch_equals_sequential(pipe):
    state = pipe.new_state({**SIZE, "mode": "txt2img", "prompt": "a cat", "cfg_type": "full",
                            "guidance_scale": 3.0, "t_index_list": [0, 16, 32, 45]})
    generator = torch.Generator().set_state(state.generator.get_state())
    starts = [torch.randn((1, 4, 8, 8), generator=generator) for _ in range(6)]
    outputs = {}
    for _ in range(6):
        outputs.update({f.frame_id: f for f in pipe.step([(state, None)])[0].frames})
    assert sorted(outputs) == [0, 1, 2]  # 4 steps: frames 0..2 have left the pipe after 6 calls
    for k in outputs:
        assert_images_close(outputs[k].image, decode(pipe, denoise_sequential(pipe, state, start=starts[k])))


def test_streams_batched_together_equal_each_alone(pipe):
    configs = [
        {**SIZE, "prompt": "a cat", "cfg_type": "self", "guidance_scale": 1.5, "t_index_list": [32, 45], "seed": 1},
        {**SIZE, "prompt": "a dog", "cfg_type": "full", "guidance_scale": 2.0, "t_index_list": [10, 25, 40], "seed": 2},
        {**SIZE, "prompt": "pixel art", "cfg_type": "onetime", "guidance_scale": 1.4, "t_index_list": [40], "seed": 3},
        {"width": 96, "height": 64, "prompt": "a boat", "cfg_type": "none", "t_index_list": [20, 45], "seed": 4},
        {**SIZE, "mode": "txt2img", "prompt": "stars", "cfg_type": "none", "t_index_list": [0, 45], "seed": 5},
    ]
    inputs = [clip(5, seed=i, shape=(64, c["width"], 3)) for i, c in enumerate(configs)]
    alone = []
    for config, frames in zip(configs, inputs):
        state = pipe.new_state(config)
        alone.append([[f.image for f in pipe.step([(state, None if config.get("mode") else VideoFrame(img, k))])[0].frames]
                      for k, img in enumerate(frames)])
    states = [pipe.new_state(c) for c in configs]
    for k in range(5):
        batch = [(s, None if c.get("mode") else VideoFrame(inputs[i][k], k)) for i, (s, c) in enumerate(zip(states, configs))]
        for i, result in enumerate(pipe.step(batch)):
            together = [f.image for f in result.frames]
            assert len(together) == len(alone[i][k])
            for a, b in zip(together, alone[i][k]):
                assert_images_close(a, b)


def test_batched_streams_cost_one_unet_call(pipe, monkeypatch):
    calls = []
    denoise = pipe.denoiser
    monkeypatch.setattr(pipe, "denoiser", lambda x, t, e: (calls.append(len(x)), denoise(x, t, e))[1])
    states = [pipe.new_state({**SIZE, "prompt": p, "cfg_type": "none", "t_index_list": [20, 40]}) for p in ("a", "b", "c")]
    pipe.step([(s, VideoFrame(clip(1, seed=i)[0], 0)) for i, s in enumerate(states)])
    assert calls == [6]  # 3 streams x 2 slots in one forward


# ---- updates --------------------------------------------------------------------------------------


def snapshot(state):
    return (state.params, state.cond.hidden.clone(), state.init_noise.clone(), state.buffer.clone(), list(state.slots))


def test_bad_updates_are_rejected_and_leave_the_stream_as_it_was(pipe):
    state = pipe.new_state({**SIZE, "prompt": "a cat"})
    run_stream(pipe, state, clip(1))
    pipe.step([(state, VideoFrame(clip(1)[0], 5))])
    before = snapshot(state)
    for bad, field in [({"guidance_scale": -1}, "guidance_scale"), ({"t_index_list": [45, 10]}, None),
                       ({"t_index_list": [1, 2, 3, 4, 5]}, "t_index_list"), ({"width": 100}, "width"),
                       ({"seed": "x"}, "seed"), ({"colour": 1}, "colour"), ({"prompt": "ok", "strength": 2}, "strength"),
                       ({"prompts": [{"text": "a", "weight": 0}]}, None)]:
        with pytest.raises(ParamError) as err:
            pipe.update(state, bad)
        assert field is None or err.value.field == field
        after = snapshot(state)
        assert after[0] == before[0] and after[4] == before[4]
        assert all(torch.equal(a, b) for a, b in zip(after[1:4], before[1:4]))


def test_txt2img_refuses_residual_cfg_with_a_reason(pipe):
    with pytest.raises(ParamError, match="needs an input image"):
        pipe.new_state({**SIZE, "mode": "txt2img", "cfg_type": "self", "guidance_scale": 1.5})


def test_prompt_change_takes_effect_on_the_next_frame_in_every_cfg_mode(pipe):
    # Upstream rebuilds the embeddings without the negative rows on a prompt change, which breaks
    # full and onetime CFG; here the next frame must equal a stream started with the new prompt.
    for cfg in ("none", "full", "self", "onetime"):
        params = {**SIZE, "cfg_type": cfg, "guidance_scale": 2.0, "t_index_list": [35]}
        frames = clip(3)
        state = pipe.new_state({**params, "prompt": "a cat"})
        run_stream(pipe, state, frames[:2])
        result = pipe.update(state, {"prompt": "a red boat"})
        assert result.applied == ["prompt"] and not result.reset
        changed = pipe.step([(state, VideoFrame(frames[2], 2))])[0].frames[0].image
        fresh = pipe.new_state({**params, "prompt": "a red boat"})
        expected = pipe.step([(fresh, VideoFrame(frames[2], 2))])[0].frames[0].image
        assert_images_close(changed, expected)


def test_schedule_change_resets_the_pipe_and_reports_discarded_frames(pipe):
    state = pipe.new_state({**SIZE, "t_index_list": [10, 25, 40]})
    for k, image in enumerate(clip(2)):
        pipe.step([(state, VideoFrame(image, k))])
    assert update_class_of(pipe.params_model, "t_index_list") == UpdateClass.RESET
    result = pipe.update(state, {"strength": 0.5, "steps": 2})
    assert result.reset and result.discarded_frames == 2
    assert state.params.t_index_list == [24, 45] and pipe.in_flight(state) == 0
    result = pipe.update(state, {"t_index_list": [30]})
    assert state.params.strength is None and state.params.t_index_list == [30]
    assert pipe.step([(state, VideoFrame(clip(1)[0], 9))])[0].frames[0].frame_id == 9


def test_seed_and_prompt_blending(pipe):
    state = pipe.new_state({**SIZE, "seeds": [{"seed": 1, "weight": 1}, {"seed": 2, "weight": 1}], "seed_interpolation": "linear"})
    one, two = (pipe.new_state({**SIZE, "seed": s}).init_noise for s in (1, 2))
    assert torch.allclose(state.init_noise, (one + two) / 2**0.5, atol=1e-6)  # unit variance kept
    assert pipe.new_state({**SIZE, "seeds": [{"seed": 1, "weight": 1}]}).init_noise.equal(one)

    cat, boat = (pipe.new_state({**SIZE, "prompt": p}).cond.hidden for p in ("a cat", "a boat"))
    only_cat = pipe.new_state({**SIZE, "prompts": [{"text": "a cat", "weight": 1}, {"text": "a boat", "weight": 0}]})
    assert torch.allclose(only_cat.cond.hidden, cat, atol=1e-6)
    half = pipe.new_state({**SIZE, "prompts": [{"text": "a cat", "weight": 1}, {"text": "a boat", "weight": 1}]}).cond.hidden
    linear = pipe.new_state({**SIZE, "prompts": [{"text": "a cat", "weight": 1}, {"text": "a boat", "weight": 1}],
                             "prompt_interpolation": "linear"}).cond.hidden
    assert torch.allclose(linear, (cat + boat) / 2, atol=1e-6)
    assert half.norm() > linear.norm()  # slerp keeps the norm that the straight line loses


def test_same_seed_same_frames_different_seed_different_frames(pipe):
    frames = clip(4)
    first, second, other = (run_stream(pipe, pipe.new_state({**SIZE, "seed": s}), frames) for s in (7, 7, 8))
    assert all(np.array_equal(first[k].image, second[k].image) for k in first)
    assert not np.array_equal(first[3].image, other[3].image)


# ---- similarity filter and bad input ---------------------------------------------------------------


def test_similarity_filter_skips_still_frames_without_running_the_model(pipe, monkeypatch):
    calls = []
    denoise = pipe.denoiser
    monkeypatch.setattr(pipe, "denoiser", lambda x, t, e: (calls.append(1), denoise(x, t, e))[1])
    state = pipe.new_state({**SIZE, "t_index_list": [30], "filter_threshold": 0.9, "filter_max_skip": 3})
    still = clip(1)[0]
    results = [pipe.step([(state, VideoFrame(still, k))])[0] for k in range(9)]
    # identical frames have similarity 1, so every allowed skip happens; each 4th frame is forced
    assert [r.skipped for r in results] == [False, True, True, True, False, True, True, True, False]
    assert len(calls) == 3
    assert results[1].frames[0].frame_id == 1
    assert np.array_equal(results[1].frames[0].image, results[0].frames[0].image)
    changed = pipe.step([(state, VideoFrame(255 - still, 9))])[0]
    assert not changed.skipped  # a different picture is never skipped at this threshold


def test_a_bad_frame_is_reported_and_the_other_streams_are_served(pipe):
    good, bad = (pipe.new_state({**SIZE, "t_index_list": [30]}) for _ in range(2))
    results = pipe.step([(bad, VideoFrame(np.zeros((64, 64), np.uint8), 0)), (good, VideoFrame(clip(1)[0], 0))])
    assert results[0].error and "uint8 RGB" in results[0].error and not results[0].frames
    assert len(results[1].frames) == 1


def test_params_schema_carries_preset_defaults_and_update_classes(pipe):
    schema = pipe.params_model.model_json_schema()["properties"]
    assert schema["width"]["default"] == 256 and schema["width"]["update"] == "reset"
    assert schema["prompt"]["update"] == "hot"
