"""Stage pipelines: the block scheduler's policy with simulated stage times, and real pipelines
split over two CPU processes (gloo) giving the same output as one process, before and after
layers move between them."""

from __future__ import annotations

import asyncio
import multiprocessing

import numpy as np
import pytest

from pipelines.registry import ModelOptions, load_pipeline
from pipelines.rolling_kv.stages import layer_ranges, split_across
from pipelines.stream_diffusion.stages import split_rows
from streaming.client import StreamClient
from streaming.frames import VideoFrame
from streaming.stages.balance import Rebalancer, balanced_split, stage_times
from streaming.stages.group import HostSpec, StageGroup

from conftest import make_settings, serve_in_thread

# ---- policy -------------------------------------------------------------------------------------


def test_the_balanced_split_evens_out_measured_stage_times():
    assert balanced_split(30, [1.0, 1.0], [0.0, 0.0]) == [15, 15]
    # Rank 0 also encodes and decodes (8 layers' worth): it gets fewer layers.
    assert balanced_split(30, [1.0, 1.0], [8.0, 0.0]) == [11, 19]
    # A device twice as fast per layer takes twice the layers.
    split = balanced_split(30, [1.0, 0.5, 1.0], [0.0] * 3)
    assert split == [8, 15, 7] and max(stage_times(split, [1.0, 0.5, 1.0], [0.0] * 3)) == 8.0
    assert balanced_split(2, [5.0, 1.0], [0.0, 0.0]) == [1, 1]  # rank 0 keeps a layer whatever it costs


def test_the_rebalancer_waits_for_measurements_moves_once_and_ignores_small_gains():
    rebalancer = Rebalancer(units=30, counts=[15, 15], warmup=4, min_interval=4, threshold=0.1, window=4)
    for _ in range(3):  # rank 0 also encodes and decodes (6 layers' worth): 21 against 15
        rebalancer.observe([1.0, 1.0], [6.0, 0.0])
    assert rebalancer.propose() is None  # still warming up
    rebalancer.observe([1.0, 1.0], [6.0, 0.0])
    assert rebalancer.propose() == [12, 18]  # 18 and 18: 14% faster
    rebalancer.moved([12, 18])
    for _ in range(4):
        rebalancer.observe([1.0, 1.05], [6.0, 0.0])  # balanced up to noise: no move back and forth
    assert rebalancer.propose() is None
    for _ in range(4):
        rebalancer.observe([1.1, 1.0], [6.0, 0.0])  # 19.2 against 18: one layer would gain 1%
    assert rebalancer.propose() is None
    for _ in range(4):
        rebalancer.observe([2.0, 1.0], [6.0, 0.0])  # rank 0 got much slower: 30 against 18
    assert rebalancer.propose() == [8, 22]


# ---- real pipelines over two processes -----------------------------------------------------------


def clip(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(n)]


def run_streams(pipe, params_list, pictures_list, between=None) -> list[list[np.ndarray]]:
    """Feed the streams' pictures together, one per stream per step, then drain; `between(k)`
    runs before step k (to rebalance mid-stream)."""
    states = [pipe.new_state(p, stream_id=f"s{i}") for i, p in enumerate(params_list)]
    outputs: list[list[np.ndarray]] = [[] for _ in states]
    for k in range(len(pictures_list[0])):
        if between is not None:
            between(k)
        batch = [(state, VideoFrame(pictures[k], k, k / 16, state.stream_id)) for state, pictures in zip(states, pictures_list)]
        for out, result in zip(outputs, pipe.step(batch)):
            out.extend(f.image for f in result.frames)
    while any(pipe.in_flight(s) for s in states):
        for out, result in zip(outputs, pipe.step([(s, None) for s in states])):
            out.extend(f.image for f in result.frames)
    return outputs


async def test_the_server_splits_a_pipeline_over_stage_processes_and_stops_them_with_it():
    settings = make_settings(preset="tiny-video", device="cpu", pipelines=["rolling-kv-video"], stage_devices=["cpu", "cpu"],
                             warmup=True)
    with serve_in_thread(settings) as url:
        assert len(multiprocessing.active_children()) == 1  # rank 1
        async with await StreamClient.connect(url) as client:
            await client.start("rolling-kv-video", {"steps": 1, "kv_mode": "single-slot"}, output_format="rgb24")
            for k in range(5):
                await client.send_frame(clip(1, seed=k)[0], frame_id=k, format="rgb24")
                while (await client.stats())["frames_stepped"] <= k:
                    await asyncio.sleep(0.02)
            assert (await client.receive_frame(30)).frame_id == 0
    assert multiprocessing.active_children() == []


@pytest.fixture(scope="module")
def split():
    """The video and the diffusion pipeline, each split over this process and one other."""
    video = load_pipeline("rolling-kv-video", ModelOptions(preset="tiny-video", device="cpu"))
    diffusion = load_pipeline("stream-diffusion", ModelOptions(preset="tiny", device="cpu"))
    counts = [1, video.models.transformer.config.num_layers - 1]
    group = StageGroup(["cpu", "cpu"], {
        "video": HostSpec("pipelines.rolling_kv.stages:LayerStageHost", {"source": video.models.source, "counts": counts}),
        "sd": HostSpec("pipelines.stream_diffusion.stages:RowStageHost", {"source": diffusion.models.source}),
    })
    try:
        split_across(video, group, counts, "video")
        split_rows(diffusion, group, None, "sd")
        yield {"video": video, "sd": diffusion}
    finally:
        group.close()
    assert all(not p.is_alive() for p in group.processes)


def test_a_video_pipeline_split_over_two_processes_equals_one_process_before_and_after_rebalancing(split):
    single = load_pipeline("rolling-kv-video", ModelOptions(preset="tiny-video", device="cpu"))
    params = [single.params_model(prompt="charcoal", steps=2, kv_mode="stream-batch", eviction="importance"),
              single.params_model(prompt="a harbour at dusk", steps=2, kv_mode="single-slot", step_rewrite="next-slot", seed=5)]
    pictures = [clip(5 + 4 * 8, seed=1), clip(5 + 4 * 8, seed=2)]
    reference = run_streams(single, params, pictures)

    staged = split["video"].denoiser
    layers = sum(staged.counts)
    moves = {13: [layers, 0], 25: [1, layers - 1]}  # all layers to rank 0 and back, caches moving with them
    seen = []

    def rebalance(k: int) -> None:
        if k in moves:
            staged.rebalance(moves[k])
            seen.append(list(staged.counts))

    outputs = run_streams(split["video"], params, pictures, between=rebalance)
    assert seen == list(moves.values())
    assert staged.last_stage_s[1] > 0  # rank 1 did compute
    for ours, theirs in zip(outputs, reference):
        assert len(ours) == len(theirs) == len(pictures[0])
        diff = np.abs(np.stack(ours).astype(int) - np.stack(theirs).astype(int))
        assert diff.max() <= 1 and diff.mean() < 1e-3


def test_layer_ranges_cover_the_model_in_order():
    assert layer_ranges([1, 0, 3]) == [range(1), range(1, 1), range(1, 4)]


def test_a_stream_diffusion_pipeline_split_by_step_groups_equals_one_process(split):
    single = load_pipeline("stream-diffusion", ModelOptions(preset="tiny", device="cpu"))
    params = [single.params_model(prompt="fox", t_index_list=[20, 32, 45], width=64, height=64, cfg_type="full"),
              single.params_model(prompt="owl", t_index_list=[30, 45], width=64, height=64, seed=9)]
    pictures = [clip(8, seed=3), clip(8, seed=4)]
    reference, outputs = run_streams(single, params, pictures), run_streams(split["sd"], params, pictures)
    assert sum(split["sd"].denoiser.last_counts[1:]) > 0  # rank 1 took rows
    for ours, theirs in zip(outputs, reference):
        assert len(ours) == len(theirs) == 8
        diff = np.abs(np.stack(ours).astype(int) - np.stack(theirs).astype(int))
        assert diff.max() <= 1 and diff.mean() < 1e-2

