"""The server with the rolling-KV video pipeline on tiny-video, loaded and warmed the way
`latentcast serve --pipelines rolling-kv-video --preset tiny-video` does it, driven over the
WebSocket API: video-to-video in chunks and text-to-video on the server's clock."""

from __future__ import annotations

import asyncio

import pytest

from streaming.client import StreamClient

from conftest import make_settings, serve_in_thread
from media import moving_picture

SIZE = 64


@pytest.fixture(scope="module")
def base_url():
    settings = make_settings(preset="tiny-video", device="cpu", pipelines=["rolling-kv-video"], warmup=True)
    with serve_in_thread(settings) as url:
        yield url


async def test_video_to_video_session_returns_every_frame_in_order(base_url):
    async with await StreamClient.connect(base_url) as client:
        assert client.hello["pipelines"] == ["rolling-kv-video"]
        await client.start("rolling-kv-video", {"prompt": "charcoal sketch", "steps": 2, "kv_mode": "single-slot"},
                           output_format="rgb24")
        outputs = []
        for n in range(13):  # in lockstep, so latest-wins drops none: chunks of 5, 4 and 4 pictures
            await client.send_frame(moving_picture(n, SIZE, SIZE), frame_id=n, pts=n / 30, format="rgb24")
            while (await client.stats())["frames_stepped"] <= n:
                await asyncio.sleep(0.02)
            # the first chunk's pictures leave from its last picture's tick on, 2 then 1 per tick
            for _ in range(0 if n < 4 else 2 if n == 4 else 1):
                outputs.append(await client.receive_frame(60))
        assert [o.frame_id for o in outputs] == list(range(10))
        assert [o.pts for o in outputs] == pytest.approx([n / 30 for n in range(10)])
        assert outputs[0].image.shape == (SIZE, SIZE, 3)


async def test_text_to_video_session_runs_on_its_own_and_takes_prompt_updates(base_url):
    async with await StreamClient.connect(base_url) as client:
        await client.start("rolling-kv-video", {"prompt": "a beach", "mode": "txt2img", "steps": 1}, output_format="rgb24")
        # The server's clock drives the stream; its output is latest-wins, so count, don't demand, every id.
        first = [(await client.receive_frame(60)).frame_id for _ in range(6)]
        assert first == sorted(set(first))
        ack = await client.update({"prompt": "a storm at sea"})
        assert ack["applied"] == ["prompt"] and ack["reset"] is False
        assert (await client.receive_frame(60)).frame_id > first[-1]


async def test_a_video_stream_reports_its_temporal_consistency_in_stats_and_metrics(base_url):
    """Every video stream is measured while it runs (one frame pair in 8, off the compute
    thread): warp error against the input's flow and flicker in the stats message, and as
    Prometheus gauges of the session."""
    import httpx

    async with await StreamClient.connect(base_url) as client:
        await client.start("rolling-kv-video", {"prompt": "ink", "steps": 1, "kv_mode": "single-slot"}, output_format="rgb24")
        for n in range(29):  # 29 inputs, in lockstep: 26 outputs, three sampled pairs
            await client.send_frame(moving_picture(n, SIZE, SIZE), frame_id=n, pts=n / 30, format="rgb24")
            while (await client.stats())["frames_stepped"] <= n:
                await asyncio.sleep(0.02)
        deadline = asyncio.get_running_loop().time() + 30
        while (section := (await client.stats())["consistency"])["samples"] < 3:
            assert asyncio.get_running_loop().time() < deadline, section
            await asyncio.sleep(0.05)
        assert section["every"] == 8 and section["warp_error"] >= 0 and section["warp_error_input"] >= 0
        assert section["flicker"] >= 0 and section["cost_ms"] > 0 and section["drift"] is None  # not 6 s of output yet
        async with httpx.AsyncClient() as http:
            metrics = (await http.get(f"{base_url}/metrics")).text
        session = client.session_id
        assert f'latentcast_session_warp_error{{pipeline="rolling-kv-video",session="{session}",source="output"}}' in metrics
        assert f'latentcast_session_flicker{{pipeline="rolling-kv-video",session="{session}",source="input"}}' in metrics
