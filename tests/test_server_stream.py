"""The stream API end to end: a real server on 127.0.0.1 and the real Python client."""

from __future__ import annotations

import asyncio
import time

import httpx
import numpy as np
import pytest

from pipelines.passthrough import PassthroughPipeline
from streaming.client import StreamClient, StreamClientError

from conftest import make_settings, serve_in_thread
from fake_pipelines import FAIL_PROMPT, ChunkPipeline, TintPipeline, prompt_color
from media import moving_picture

SLOW_STEP_S = 0.2

PIPELINES = {
    "passthrough": PassthroughPipeline(),
    "tint": TintPipeline(),
    "tint-batched": TintPipeline("tint-batched", delay_s=0.03),
    "tint-slow": TintPipeline("tint-slow", delay_s=SLOW_STEP_S),
    "chunk": ChunkPipeline(),
}


@pytest.fixture(scope="module")
def base_url():
    with serve_in_thread(make_settings(stats_interval_s=0.2, max_sessions=16), lambda: PIPELINES) as url:
        yield url


def picture(seed: int, width: int = 64, height: int = 48) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def mean_color(image: np.ndarray) -> np.ndarray:
    return image.reshape(-1, 3).mean(axis=0)


async def test_frames_round_trip_with_ids_and_pts(base_url):
    async with await StreamClient.connect(base_url) as client:
        started = await client.start("passthrough", output_format="rgb24")
        assert started["pipeline"] == "passthrough" and started["needs_input"]
        sent = {}
        for i, fmt in enumerate(["rgb24", "jpeg", "webp", "rgb24"]):
            image = moving_picture(i, 64, 48)
            frame_id = await client.send_frame(image, frame_id=1000 + 7 * i, pts=123.25 + i / 30, format=fmt, quality=100)
            sent[frame_id] = (image, 123.25 + i / 30, fmt)
            out = await client.receive_frame(10)  # one at a time: nothing is dropped
            image, pts, fmt = sent[out.frame_id]
            assert out.frame_id == frame_id and out.pts == pts and (out.width, out.height) == (64, 48)
            if fmt == "rgb24":
                assert np.array_equal(out.image, image)
            else:
                assert np.abs(out.image.astype(int) - image).mean() < 8  # lossy codecs, same picture


async def test_update_is_acknowledged_and_takes_effect_on_the_next_frame(base_url):
    async with await StreamClient.connect(base_url) as client:
        await client.start("tint", {"prompt": "red fox", "strength": 1.0}, output_format="rgb24")
        await client.send_frame(picture(1), format="rgb24")
        assert np.allclose(mean_color((await client.receive_frame()).image), prompt_color("red fox"), atol=1)

        ack = await client.update({"prompt": "blue whale"})
        assert ack["type"] == "ack" and ack["applied"] == ["prompt"] and ack["update_class"] == "hot"
        assert ack["params"]["prompt"] == "blue whale" and ack["params"]["strength"] == 1.0
        await client.send_frame(picture(2), format="rgb24")
        assert np.allclose(mean_color((await client.receive_frame()).image), prompt_color("blue whale"), atol=1)

        ack = await client.update({"width": 32})
        assert ack["update_class"] == "reset" and ack["reset"] is True


async def test_two_sessions_with_different_prompts_do_not_mix_and_share_steps(base_url):
    pipeline = PIPELINES["tint-batched"]
    pipeline.batch_sizes.clear()

    async def run(prompt: str, seed: int) -> list:
        async with await StreamClient.connect(base_url) as client:
            await client.start("tint-batched", {"prompt": prompt}, output_format="rgb24")
            for i in range(20):
                await client.send_frame(picture(seed + i), format="rgb24")
                await asyncio.sleep(1 / 60)
            await asyncio.sleep(0.3)
            frames = []
            while not client.frames.empty():
                frames.append(client.frames.get_nowait())
            return frames

    fox, whale = await asyncio.gather(run("fox", 0), run("whale", 100))
    assert len(fox) >= 5 and len(whale) >= 5
    assert all(np.allclose(mean_color(f.image), prompt_color("fox"), atol=1) for f in fox)
    assert all(np.allclose(mean_color(f.image), prompt_color("whale"), atol=1) for f in whale)
    assert max(pipeline.batch_sizes) >= 2, "the two streams were never served by one batched step"


async def test_slow_pipeline_keeps_latency_bounded_and_counts_drops(base_url):
    """Input at 30 fps into a 5 fps pipeline: latest wins, so latency stays near one step."""
    async with await StreamClient.connect(base_url) as client:
        await client.start("tint-slow", output_format="jpeg")
        sent_at: dict[int, float] = {}
        latencies: list[float] = []

        async def receive():
            while True:
                frame = await client.receive_frame(5)
                latencies.append(time.monotonic() - sent_at[frame.frame_id])

        receiver = asyncio.create_task(receive())
        for i in range(90):
            sent_at[i] = time.monotonic()
            await client.send_frame(picture(i), frame_id=i)
            await asyncio.sleep(1 / 30)
        await asyncio.sleep(3 * SLOW_STEP_S)
        receiver.cancel()
        stats = await client.stats()

    assert 5 <= len(latencies) <= 30
    # An unbounded queue would reach ~2.5 s by the end; latest-wins stays near one to two steps.
    assert max(latencies) < 5 * SLOW_STEP_S, latencies
    assert stats["frames_in"] == 90 and stats["frames_out"] == len(latencies)
    assert stats["dropped_input"] >= 50
    assert stats["dropped_input"] + stats["frames_out"] >= 88  # every input used or counted as dropped


async def test_bursts_from_the_model_are_paced_out_by_pts_not_dropped(base_url):
    async with await StreamClient.connect(base_url) as client:
        await client.start("chunk", slo={"target_fps": 20}, output_format="rgb24")
        for i in range(8):  # 20 fps of input: the pipeline answers every 4th frame with 4 frames at once
            await client.send_frame(picture(i), frame_id=i, pts=i / 20, format="rgb24")
            await asyncio.sleep(1 / 20)
        frames = [await client.receive_frame(5) for _ in range(8)]
        stats = await client.stats()
    assert [f.frame_id for f in frames] == list(range(8)) and stats["dropped_output"] == 0
    for chunk in (frames[:4], frames[4:]):
        gaps = np.diff([f.received_at for f in chunk])
        assert np.median(gaps) > 0.025, gaps  # spread out like their pts (50 ms apart), not all at once


async def test_txt2img_pushes_frames_at_the_target_fps_without_input(base_url):
    async with await StreamClient.connect(base_url) as client:
        started = await client.start("tint", {"mode": "txt2img", "prompt": "sky"}, slo={"target_fps": 20}, output_format="rgb24")
        assert started["needs_input"] is False
        await asyncio.sleep(1.0)
        frames = [client.frames.get_nowait() for _ in range(client.frames.qsize())]
    assert 10 <= len(frames) <= 30
    assert [f.frame_id for f in frames] == list(range(frames[0].frame_id, frames[0].frame_id + len(frames)))
    gaps = np.diff([f.pts for f in frames])
    assert np.all(gaps > 0) and abs(np.median(gaps) - 0.05) < 0.02
    assert np.allclose(mean_color(frames[-1].image), prompt_color("sky"), atol=1)


async def test_audio_is_kept_in_order_and_an_overflow_is_refused_not_dropped(base_url):
    async with await StreamClient.connect(base_url) as client:
        await client.start("passthrough")
        tone = (np.sin(np.arange(4800) / 10) * 8000).astype(np.int16)
        for i in range(5):
            await client.send_audio(tone[i * 960:(i + 1) * 960, None], 48000, chunk_id=i, pts=i * 0.02)
        received = [await asyncio.wait_for(client.audio.get(), 5) for _ in range(5)]
        assert [a.chunk_id for a in received] == list(range(5))
        assert np.array_equal(np.concatenate([a.samples[:, 0] for a in received]), tone)

        await client.send_audio(np.zeros((48000 * 3, 1), np.int16), 48000, chunk_id=99)  # 3 s > the 2 s buffer
        error = await client.next_error()
        assert error.code == "audio_overflow" and error.frame_id == 99
        assert (await client.stats())["audio"]["refused"] == 1


async def test_a_client_that_disconnects_frees_its_session_and_state_at_once(base_url):
    pipeline = PIPELINES["tint"]
    client = await StreamClient.connect(base_url)
    started = await client.start("tint")
    session_id = started["session_id"]
    await client.send_frame(picture(0))
    await client.receive_frame()
    assert any(s.stream_id == session_id for s in pipeline.live_states)
    await client.close()
    deadline = time.monotonic() + 2
    async with httpx.AsyncClient(base_url=base_url) as http:
        while time.monotonic() < deadline:
            listed = (await http.get("/v1/sessions")).json()
            if all(s["id"] != session_id for s in listed) and not any(s.stream_id == session_id for s in pipeline.live_states):
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the session or its pipeline state outlived its client")
        assert (await http.get(f"/v1/sessions/{session_id}/stats")).status_code == 404


async def test_one_failing_stream_does_not_disturb_the_others(base_url):
    async with await StreamClient.connect(base_url) as bad, await StreamClient.connect(base_url) as good:
        await bad.start("tint-batched", {"prompt": FAIL_PROMPT})
        await good.start("tint-batched", {"prompt": "fine"}, output_format="rgb24")
        for i in range(10):
            await asyncio.gather(bad.send_frame(picture(i), frame_id=i), good.send_frame(picture(i), frame_id=i, format="rgb24"))
            await asyncio.sleep(0.02)
        error = await bad.next_error()
        assert error.code == "internal" and "asked to fail" in error.message
        frame = await good.receive_frame()
        assert np.allclose(mean_color(frame.image), prompt_color("fine"), atol=1)
        await bad.update({"prompt": "recovered"})  # the failing session is still there and usable
        await bad.send_frame(picture(50), frame_id=50)
        while (await bad.receive_frame()).frame_id != 50:
            pass


async def test_stats_on_the_stream_over_rest_and_in_prometheus(base_url):
    async with await StreamClient.connect(base_url) as client:
        started = await client.start("passthrough", slo={"target_fps": 30, "latency_budget_ms": 250})
        for i in range(10):
            await client.send_frame(picture(i), frame_id=i)
            await client.receive_frame()
        await asyncio.sleep(0.3)
        pushed = client.latest_stats
        assert pushed is not None and pushed["session_id"] == started["session_id"]
        async with httpx.AsyncClient(base_url=base_url) as http:
            stats = (await http.get(f"/v1/sessions/{started['session_id']}/stats")).json()
            metrics = (await http.get("/metrics")).text
    assert stats["frames_in"] == stats["frames_out"] == 10 and stats["dropped_input"] == 0
    assert stats["time_to_first_frame_ms"] > 0 and stats["latency_ms"]["p50"] > 0 and stats["latency_ms"]["p99"] >= stats["latency_ms"]["p50"]
    assert stats["fps_in"] > 0 and stats["queue_wait_ms"]["p50"] is not None and stats["model_ms"]["p95"] is not None
    for series in ("latentcast_frame_latency_seconds_bucket", "latentcast_model_seconds_count", "latentcast_queue_wait_seconds_count",
                   "latentcast_time_to_first_frame_seconds_count", "latentcast_frames_dropped_total", "latentcast_deadline_misses_total",
                   f'latentcast_session_fps_out{{pipeline="passthrough",session="{started["session_id"]}"}}'):
        assert series in metrics, series


async def test_update_errors_name_the_field_and_leave_the_session_as_it_was(base_url):
    async with await StreamClient.connect(base_url) as client:
        await client.start("tint", {"prompt": "kept", "strength": 0.5})
        with pytest.raises(StreamClientError) as err:
            await client.update({"strength": 7})
        assert err.value.code == "bad_params" and err.value.field == "strength"
        ack = await client.update({})
        assert ack["params"]["strength"] == 0.5 and ack["params"]["prompt"] == "kept"


async def test_a_txt2img_chunk_is_spread_over_the_stream_clock(base_url):
    async with await StreamClient.connect(base_url) as client:
        await client.start("chunk", {"mode": "txt2img"}, slo={"target_fps": 20}, output_format="rgb24")
        await asyncio.sleep(1.0)
        frames = [client.frames.get_nowait() for _ in range(client.frames.qsize())]
    assert 12 <= len(frames) <= 28  # ~20 fps although each step makes 4 frames
    assert [f.frame_id for f in frames] == list(range(frames[0].frame_id, frames[0].frame_id + len(frames)))
    assert np.allclose(np.diff([f.pts for f in frames[:4]]), 0.05, atol=0.01)
