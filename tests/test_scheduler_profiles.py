"""What the real pipelines tell the scheduler: SLO defaults, cost shapes, pipe depth and quality
knobs, and that a lowered quality is a valid state of the pipeline (the video pipeline's longer
chunks still equal the sequential reference)."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.base import merge_params
from pipelines.registry import ModelOptions, load_pipeline
from pipelines.rolling_kv.reference import generate_sequential
from pipelines.stream_diffusion.params import resample_t_index_list
from streaming.frames import VideoFrame


@pytest.fixture(scope="module")
def video():
    return load_pipeline("rolling-kv-video", ModelOptions(preset="tiny-video"))


@pytest.fixture(scope="module")
def diffusion():
    return load_pipeline("stream-diffusion", ModelOptions(preset="tiny"))


def ladder(pipeline, params, knob: str, shown: tuple[str, ...] | None = None) -> list[dict]:
    """Every level down one knob, from the parameters asked for to the floor: the changes the
    knob asks for, or with `shown` the values in force of those fields once normalised."""
    profile, levels = pipeline.scheduling, []
    while (changes := profile.lower_quality(params, knob)) is not None:
        params = merge_params(params, changes)
        levels.append({name: getattr(params, name) for name in shown} if shown else changes)
    return levels


def test_resampled_schedules_keep_the_first_and_last_index():
    assert resample_t_index_list([0, 16, 32, 45], 3) == [0, 32, 45]
    assert resample_t_index_list([0, 32, 45], 2) == [0, 45]
    assert resample_t_index_list([32, 45], 1) == [32]
    assert resample_t_index_list([10, 40], 3) == [10, 25, 40]
    assert resample_t_index_list([45], 2) == [45, 46]  # one step: the second is strength's rule
    assert resample_t_index_list([47, 49], 3) == [47, 48, 49]
    with pytest.raises(ValueError, match="starts too late"):
        resample_t_index_list([48], 3)


def test_stream_diffusion_declares_its_slo_cost_depth_and_knobs(diffusion):
    profile = diffusion.scheduling
    params = diffusion.params_model(t_index_list=[0, 16, 32, 45], width=256, height=256)
    assert profile.slo_defaults == {"target_fps": 30.0, "latency_budget_ms": 500.0}
    assert profile.cost_shape(params) == (256, 256, 4) and profile.pipe_depth(params) == 3
    assert ladder(diffusion, params, "steps") == [{"steps": 3}, {"steps": 2}, {"steps": 1}]
    assert ladder(diffusion, params, "steps", ("t_index_list", "steps")) == [
        {"t_index_list": [0, 32, 45], "steps": 3}, {"t_index_list": [0, 45], "steps": 2}, {"t_index_list": [0], "steps": 1}]
    with_strength = diffusion.params_model(strength=0.5, steps=3, width=256, height=256)
    assert ladder(diffusion, with_strength, "steps", ("t_index_list", "strength")) == [  # derived again from strength
        {"t_index_list": [24, 45], "strength": 0.5}, {"t_index_list": [24], "strength": 0.5}]
    assert ladder(diffusion, params, "resolution") == [{"width": 192, "height": 192}, {"width": 128, "height": 128}]
    assert ladder(diffusion, params, "chunk") == []


def test_rolling_kv_declares_its_slo_cost_depth_and_knobs(video):
    profile = video.scheduling
    params = video.params_model(steps=3, width=64, height=64)
    assert profile.slo_defaults["target_fps"] == 16.0
    assert profile.cost_shape(params) == (64, 64, 3)
    assert profile.pipe_depth(params) == 4 * 3 + 3
    assert ladder(video, params, "steps") == [{"steps": 2}, {"steps": 1}]
    assert ladder(video, params, "resolution") == [{"width": 48, "height": 48}, {"width": 32, "height": 32}]
    assert ladder(video, params, "chunk") == [{"chunk_latents": 2}]  # the 3-frame window holds at most 2


def test_longer_video_chunks_equal_the_sequential_reference(video):
    params = video.params_model(prompt="ink wash", steps=2, chunk_latents=2)
    rng = np.random.default_rng(1)
    pictures = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(5 + 8 * 4)]
    state, frames = video.new_state(params), []
    for k, picture in enumerate(pictures):
        frames.extend(video.step([(state, VideoFrame(picture, k, k / 16, "s"))])[0].frames)
    while video.in_flight(state):
        frames.extend(video.step([(state, None)])[0].frames)
    assert [f.frame_id for f in frames] == list(range(len(pictures)))
    reference = np.stack(generate_sequential(video, params, 5, pictures)).astype(int)
    diff = np.abs(np.stack([f.image for f in frames]).astype(int) - reference)
    assert diff.max() <= 1 and diff.mean() < 1e-3
