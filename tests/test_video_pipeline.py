"""The rolling-KV video pipeline on tiny-video.

Central checks: the stream batch (every step in one forward, a cache per step) gives the pictures
that plain sequential per-slot generation with the same noise gives; streams batched together
give what each gives alone; a long run keeps memory flat and the cache bounded. The rest pins
down chunking, identity and timing of frames, draining, the modes, updates and the CLI.
"""

import argparse
import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from app import render
from pipelines.base import ParamError, PipelineKind, UpdateClass, update_class_of
from pipelines.registry import ModelOptions, load_pipeline
from pipelines.rolling_kv.reference import generate_sequential
from streaming.frames import VideoFrame

from media import make_clip, read_media

REPO = Path(__file__).resolve().parents[1]
SIZE = 64


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline("rolling-kv-video", ModelOptions(preset="tiny-video"))


def clip(n, seed=0):
    """A moving bright square on a textured background."""
    rng = np.random.default_rng(seed)
    base = (rng.integers(0, 256, (SIZE, SIZE, 3)) * 0.5).astype(np.uint8)
    frames = []
    for k in range(n):
        img = base.copy()
        img[8 + k % 40 : 24 + k % 40, 10:26] = 255
        frames.append(img)
    return frames


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_video(pipe, state, pictures):
    """Feed every picture, drain, and return the output frames."""
    out = []
    for k, picture in enumerate(pictures):
        result = pipe.step([(state, VideoFrame(picture, k, k / 16, "s"))])[0]
        assert result.consumed
        out.extend(result.frames)
    while pipe.in_flight(state):
        out.extend(pipe.step([(state, None)])[0].frames)
    return out


def run_text(pipe, state, count):
    out = []
    while len(out) < count:
        frames = pipe.step([(state, None)])[0].frames
        assert len(frames) == (2 if frames and frames[0].frame_id == 0 else 1)  # one per tick; the first chunk's 5 start with 2
        out.extend(frames)
    return out[:count]


def assert_same_pictures(ours, reference):
    ours, reference = np.stack(ours).astype(int), np.stack(reference).astype(int)
    assert ours.shape == reference.shape
    diff = np.abs(ours - reference)
    assert diff.max() <= 1 and diff.mean() < 1e-3  # equal up to float rounding at a uint8 boundary


@pytest.mark.parametrize("steps", [1, 2, 3, 4])
def test_text_to_video_stream_batch_equals_sequential_per_slot_generation(pipe, steps):
    params = pipe.params_model(prompt="a red fox", mode="txt2img", steps=steps)
    frames = run_text(pipe, pipe.new_state(params), 5 + 4 * 9)
    assert_same_pictures([f.image for f in frames], generate_sequential(pipe, params, 10))


@pytest.mark.parametrize("steps", [2, 3])
def test_video_to_video_stream_batch_equals_sequential_per_slot_generation(pipe, steps):
    params = pipe.params_model(prompt="oil painting", steps=steps)
    pictures = clip(5 + 4 * 7)
    frames = run_video(pipe, pipe.new_state(params), pictures)
    assert [f.frame_id for f in frames] == list(range(len(pictures)))
    assert_same_pictures([f.image for f in frames], generate_sequential(pipe, params, 8, pictures))


def test_cache_modes_keep_different_keys_and_are_not_interchangeable(pipe):
    pictures = clip(5 + 4 * 5)
    results, keys = {}, {}
    for mode in ("stream-batch", "single-slot", "clean-context"):
        state = pipe.new_state({"prompt": "x", "steps": 2, "kv_mode": mode})
        frames = run_video(pipe, state, pictures)
        assert [f.frame_id for f in frames] == list(range(len(pictures)))
        results[mode] = np.stack([f.image for f in frames]).astype(int)
        assert state.cache.rows == (2 if mode == "stream-batch" else 1)
        cache = state.cache
        keys[mode] = cache.k[-1, cache.rows - 1, :, cache.frame_tokens(cache.tables[-1].frame.index(0))].clone()
    # Frame 0's keys in the last cache row: stream-batch keeps step 1's (input at t=500),
    # single-slot the same step's but from another context, clean-context the t=0 pass's.
    for a, b in [("stream-batch", "clean-context"), ("single-slot", "clean-context")]:
        assert not torch.allclose(keys[a], keys[b], atol=1e-3)
        assert (results[a][5:] != results[b][5:]).any()  # and the later chunks differ
    np.testing.assert_array_equal(results["stream-batch"][:5], results["single-slot"][:5])  # the first chunk alike


def test_single_slot_hands_out_a_picture_per_tick_once_the_first_chunk_is_done(pipe):
    state = pipe.new_state({"prompt": "x", "steps": 3, "kv_mode": "single-slot"})
    outputs = [pipe.step([(state, VideoFrame(p, k, k / 16.0))])[0].frames for k, p in enumerate(clip(13))]
    assert [len(o) for o in outputs] == [0, 0, 0, 0, 2, 1, 1, 1, 1, 1, 1, 1, 1]
    assert [f.frame_id for o in outputs for f in o] == list(range(10))
    assert pipe.in_flight(state) == 3  # finished, waiting for their tick
    assert [f.frame_id for f in pipe.step([(state, None)])[0].frames] == [10, 11, 12]  # the input ended: all out


def test_stream_batch_first_chunk_comes_out_at_once_then_after_steps_chunks(pipe):
    state = pipe.new_state({"prompt": "x", "steps": 3})
    counts = [len(pipe.step([(state, VideoFrame(p, k, k / 16.0))])[0].frames) for k, p in enumerate(clip(25))]
    # the first chunk's 5 pictures leave from its own tick on (its steps run at once), then the
    # stream batch warms up for 2 chunks (8 ticks) before a picture leaves every tick
    assert counts[:8] == [0, 0, 0, 0, 2, 1, 1, 1] and sum(counts[8:16]) == 0 and counts[16:] == [1] * 9
    assert pipe.in_flight(state) == 25 - sum(counts) == 2 * 4 + 3  # two chunks in the pipe, three pictures waiting


def test_frames_keep_identity_and_timing_and_a_partial_chunk_is_drained(pipe):
    state = pipe.new_state({"prompt": "x", "steps": 2})
    pictures = clip(11)  # 5 + 4 + 2: the last chunk is padded, padding is never sent
    frames = run_video(pipe, state, pictures)
    assert [f.frame_id for f in frames] == list(range(11))
    assert [f.pts for f in frames] == [k / 16 for k in range(11)]
    assert all(f.stream_id == "s" and f.image.shape == (SIZE, SIZE, 3) and f.image.dtype == np.uint8 for f in frames)
    assert pipe.in_flight(state) == 0 and pipe.step([(state, None)])[0].consumed is False


def test_inputs_of_another_size_are_cropped_and_resized_and_bad_input_is_reported(pipe):
    state = pipe.new_state({"prompt": "x", "steps": 1, "kv_mode": "single-slot"})
    wide = [np.full((48, 96, 3), 40 * k, np.uint8) for k in range(5)]
    frames = [f for k, p in enumerate(wide) for f in pipe.step([(state, VideoFrame(p, k))])[0].frames]
    assert len(frames) == 2 and frames[0].image.shape == (SIZE, SIZE, 3)
    bad = pipe.step([(state, VideoFrame(np.zeros((4, 4), np.uint8), 9))])[0]
    assert bad.error and bad.consumed and not bad.frames


def test_streams_batched_together_equal_each_alone(pipe):
    specs = [({"prompt": "a", "steps": 2, "seed": 1}, 0), ({"prompt": "b", "steps": 3, "seed": 2}, 1),
             ({"prompt": "c", "steps": 2, "kv_mode": "single-slot"}, 2), ({"prompt": "d", "mode": "txt2img", "steps": 2}, None)]
    n = 5 + 4 * 5
    alone = []
    for params, seed in specs:
        state = pipe.new_state(params)
        alone.append(run_text(pipe, state, n) if seed is None else run_video(pipe, state, clip(n, seed)))
    states = [pipe.new_state(params) for params, _ in specs]
    inputs = [None if seed is None else clip(n, seed) for _, seed in specs]
    together = [[] for _ in specs]
    for k in range(n):
        batch = [(s, None if pics is None else VideoFrame(pics[k], k, k / 16, "s")) for s, pics in zip(states, inputs)]
        for out, result in zip(together, pipe.step(batch)):
            out.extend(result.frames)
    for i, (state, pics) in enumerate(zip(states, inputs)):
        while pics is not None and pipe.in_flight(state):
            together[i].extend(pipe.step([(state, None)])[0].frames)
    for a, b in zip(alone, together):
        b = b[:n]  # txt2img: n ticks hand out n + 1 pictures (the first chunk starts with 2)
        assert [f.frame_id for f in a] == [f.frame_id for f in b]
        assert_same_pictures([f.image for f in b], [f.image for f in a])


def test_text_to_video_hands_out_one_picture_per_tick_with_timestamps(pipe):
    state = pipe.new_state({"prompt": "x", "mode": "txt2img", "steps": 2, "fps": 8})
    frames = run_text(pipe, state, 13)
    assert [f.frame_id for f in frames] == list(range(13))
    assert frames[12].pts == pytest.approx(12 / 8)
    assert pipe.in_flight(state) == 0


def test_prompt_change_blends_in_over_the_transition_and_keeps_the_cache(pipe):
    state = pipe.new_state({"prompt": "a calm lake", "mode": "txt2img", "steps": 1, "transition_chunks": 3})
    run_text(pipe, state, 9)
    cache = state.cache
    target = pipe.models.text_kv(pipe.models.prompt_states("a volcano")).k[0]
    result = pipe.update(state, {"prompt": "a volcano"})
    assert result.applied == ["prompt"] and not result.reset and state.cache is cache
    distances = []
    for _ in range(4):  # one chunk per 4 ticks; the blend moves once per chunk
        run_text(pipe, state, 4)
        distances.append(float((state.text.k[0] - target).abs().mean()))
    assert distances[0] > distances[1] > 0 and distances[2] == 0 and state.transition is None


def test_updates_are_atomic_and_reset_changes_rebuild_the_pipe(pipe):
    state = pipe.new_state({"prompt": "x", "steps": 2})
    for k, p in enumerate(clip(9)):
        pipe.step([(state, VideoFrame(p, k))])
    before = state.cache
    with pytest.raises(ParamError) as err:
        pipe.update(state, {"prompt": "y", "sink_frames": 5})  # would leave 1 rolling frame
    assert "kv_cache_frames" in str(err.value) and state.params.prompt == "x" and state.cache is before
    with pytest.raises(ParamError):
        pipe.update(state, {"steps": 9})
    result = pipe.update(state, {"steps": 3, "strength": 0.6})
    assert result.reset and result.discarded_frames == 4 and state.cache is not before and state.cache.rows == 3
    assert pipe.update(state, {"steps": 3}).applied == []
    assert update_class_of(pipe.params_model, "prompt") == UpdateClass.HOT
    assert update_class_of(pipe.params_model, "kv_cache_frames") == UpdateClass.RESET


def test_schema_defaults_come_from_the_preset_and_policies_are_selectable(pipe):
    assert pipe.kind is PipelineKind.VIDEO_TO_VIDEO and pipe.name == "rolling-kv-video"
    defaults = pipe.params_model()
    assert (defaults.width, defaults.height, defaults.steps, defaults.kv_cache_frames, defaults.sink_frames) == (64, 64, 2, 6, 3)
    with pytest.raises(ParamError):
        pipe.new_state({"width": 72})  # not a multiple of 16
    for eviction in ("fifo", "adaptive-sink", "importance"):
        for positions in ("absolute", "periodic-reset", "cache-relative", "sink-realign"):
            state = pipe.new_state({"prompt": "x", "mode": "txt2img", "steps": 1, "eviction": eviction, "positions": positions,
                                    "kv_cache_frames": 4, "sink_frames": 1, "reset_at": 6})
            frames = run_text(pipe, state, 5 + 4 * 8)
            assert len(frames) == 37 and len(state.cache.cached_frames(0)) == 4


def test_a_long_run_keeps_memory_flat_and_the_cache_bounded(pipe):
    """Hundreds of chunks: the cache is the same preallocated storage, positions stay bounded
    (periodic reset), nothing accumulates in the state, and the process does not grow."""
    state = pipe.new_state({"prompt": "x", "mode": "txt2img", "steps": 2, "kv_cache_frames": 5, "sink_frames": 2, "reset_at": 20})
    pointers = (state.cache.k.data_ptr(), state.cache.v.data_ptr())
    resident = []
    for _ in range(4):  # 4 x 80 chunks; allocators settle in the first part
        run_text(pipe, state, 4 * 80)
        resident.append(resident_bytes())
    assert state.next_latent_frame > 300
    assert (state.cache.k.data_ptr(), state.cache.v.data_ptr()) == pointers
    for row in range(state.cache.rows):
        table = state.cache.tables[row]
        assert len(state.cache.cached_frames(row)) == 5 and max(table.position) < 20
        assert state.cache.cached_frames(row)[:2] == [0, 1]  # the sinks persist
    assert len(state.ready) < 4 and not state.pending and sum(s is not None for s in state.slots) <= 1
    assert resident[3] - resident[1] < 4 * 2**20  # flat: under 4 MB over the last 160 chunks


def test_render_cli_runs_the_video_pipeline_on_a_file_and_reports_its_consistency(tmp_path):
    """`latentcast render` as a user calls it: a real subprocess on a small clip (14 frames: the
    last chunk is partial and drained), with `--report`: the consistency of every frame after the
    first, as a CSV and a plot."""
    source = make_clip(tmp_path / "in.mp4", width=96, height=64, frames=14, fps=12)
    out, report = tmp_path / "out.mp4", tmp_path / "consistency.csv"
    command = [sys.executable, "-m", "app.cli", "render", str(source), "-o", str(out), "--pipeline", "rolling-kv-video",
               "--preset", "tiny-video", "--prompt", "ink drawing", "--steps", "2", "--width", "64", "--height", "64", "-q",
               "--report", str(report)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    rendered = read_media(out)
    assert rendered.frame_count == 14 and rendered.frames[0].shape == (64, 64, 3)
    with report.open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["frame_id"]) for r in rows] == list(range(1, 14))
    assert float(rows[-1]["time_s"]) == pytest.approx(13 / 12, abs=1e-3)
    assert all(float(r["warp_error"]) >= 0 and float(r["flicker_input"]) >= 0 for r in rows)
    assert float(rows[0]["sharpness_ratio"]) > 0
    assert report.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_render_generates_video_from_a_prompt(tmp_path):
    parser = argparse.ArgumentParser(prog=render.PROG)
    render.add_arguments(parser)
    out = tmp_path / "gen.mp4"
    args = parser.parse_args(["-o", str(out), "--pipeline", "rolling-kv-video", "--preset", "tiny-video", "--prompt", "a forest",
                              "--frames", "10", "--width", "64", "--height", "64", "-q"])
    assert render.run(args) == 0
    assert read_media(out).frame_count == 10


def test_steps_follow_the_step_list_in_force(pipe):
    """`steps` keeps the first N of the mode's list (upstream's --step N); a shorter list, or a
    switch to a mode whose list is shorter, lowers it unless the request names `steps` too."""
    params = pipe.params_model(mode="txt2img", t2v_timesteps=[1000, 757, 522], steps=3)
    state = pipe.new_state(params)
    assert state.timesteps == [1000, 757, 522]
    with pytest.raises(ParamError, match="steps"):  # both named, and they disagree
        pipe.new_state({"mode": "txt2img", "steps": 4, "t2v_timesteps": [1000, 757, 522]})
    short = pipe.new_state({"mode": "txt2img", "t2v_timesteps": [1000, 500]})  # the preset's 2 steps fit
    assert short.params.steps == 2 and short.timesteps == [1000, 500]
    result = pipe.update(short, {"t2v_timesteps": [900]})
    assert result.params.steps == 1 and short.timesteps == [900]
    with pytest.raises(ParamError, match="more than the 1 timesteps"):
        pipe.update(short, {"steps": 2})
    with pytest.raises(ParamError, match="strictly decreasing"):
        pipe.new_state({"v2v_timesteps": [500, 700]})
    with pytest.raises(ParamError, match="strictly decreasing"):
        pipe.new_state({"v2v_timesteps": [700, 0]})  # 0 is for text-to-video's clean pass only
    assert pipe.new_state({"mode": "txt2img", "t2v_timesteps": [1000, 0]}).timesteps == [1000, 0]
    assert pipe.update(pipe.new_state({"v2v_timesteps": [700]}), {"mode": "txt2img"}).params.steps == 1
