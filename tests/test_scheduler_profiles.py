"""What the real pipelines tell the scheduler: SLO defaults, cost shapes, pipe depth and quality
knobs, and that a lowered quality is a valid state of the pipeline (the video pipeline's longer
chunks still equal the sequential reference)."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.base import merge_params
from pipelines.registry import ModelOptions, load_pipeline
from pipelines.rolling_kv.reference import generate_sequential
from pipelines.scheduling import scheduling_profile
from pipelines.stream_diffusion.scheduling import fewer_steps
from streaming.frames import VideoFrame


@pytest.fixture(scope="module")
def video():
    return load_pipeline("rolling-kv-video", ModelOptions(preset="tiny-video"))


@pytest.fixture(scope="module")
def diffusion():
    return load_pipeline("stream-diffusion", ModelOptions(preset="tiny"))


def ladder(pipeline, params, knob: str) -> list[dict]:
    """Every level down one knob, from the parameters asked for to the floor."""
    profile, levels = scheduling_profile(pipeline), []
    while (changes := profile.lower_quality(params, knob)) is not None:
        levels.append(changes)
        params = merge_params(params, changes)
    return levels


def test_fewer_steps_keep_the_first_and_last_index():
    assert fewer_steps([0, 16, 32, 45]) == [0, 32, 45]
    assert fewer_steps([0, 32, 45]) == [0, 45]
    assert fewer_steps([32, 45]) == [32]


def test_stream_diffusion_declares_its_slo_cost_depth_and_knobs(diffusion):
    profile = scheduling_profile(diffusion)
    params = diffusion.params_model(t_index_list=[0, 16, 32, 45], width=256, height=256)
    assert profile.slo_defaults == {"target_fps": 30.0, "latency_budget_ms": 500.0}
    assert profile.cost_shape(params) == (256, 256, 4) and profile.pipe_depth(params) == 3
    assert ladder(diffusion, params, "steps") == [{"t_index_list": [0, 32, 45]}, {"t_index_list": [0, 45]}, {"t_index_list": [0]}]
    assert ladder(diffusion, params, "resolution") == [{"width": 192, "height": 192}, {"width": 128, "height": 128}]
    assert ladder(diffusion, params, "chunk") == []


def test_rolling_kv_declares_its_slo_cost_depth_and_knobs(video):
    profile = scheduling_profile(video)
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
