"""Audio sent alongside video to a slow video pipeline (what OBS publishes): it comes back whole,
in order, behind by about the video's latency, with no refusals and nothing in the log.

Before, the audio waited for the compute worker, which a slow model keeps busy for a whole step:
the 2 s buffer filled and every further chunk was refused with a warning ("send in real time").
"""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np
import pytest

from streaming.audio_delay import AudioDelayLine
from streaming.client import StreamClient
from streaming.errors import StreamError
from streaming.frames import AudioChunk

from conftest import make_settings, serve_in_thread
from fake_pipelines import TintPipeline
from media import moving_picture

STEP_S = 1.2      # one step of the slow model: longer than the audio buffer below
AUDIO_BUFFER_S = 1.0
CHUNK_S = 0.02    # 20 ms of audio per chunk, as WebRTC and OBS send it
SECONDS = 4.0


@pytest.fixture(scope="module")
def base_url():
    pipelines = {"slow": TintPipeline("slow", delay_s=STEP_S)}
    with serve_in_thread(make_settings(stats_interval_s=0.5, audio_buffer_s=AUDIO_BUFFER_S), lambda: pipelines) as url:
        yield url


async def test_real_time_audio_beside_a_slow_video_stream_comes_back_whole_and_with_the_video(base_url, caplog):
    caplog.set_level(logging.WARNING)
    rng = np.random.default_rng(0)
    sent_at: dict[int, float] = {}
    async with await StreamClient.connect(base_url) as client:
        await client.start("slow", {"prompt": "sea"}, output_format="rgb24")
        samples = int(48000 * CHUNK_S)
        tone = (rng.normal(0, 3000, int(SECONDS / CHUNK_S) * samples)).astype(np.int16)
        began = time.monotonic()
        for i in range(int(SECONDS / CHUNK_S)):  # in real time, 30 fps video beside 50 chunks/s audio
            await asyncio.sleep(max(0.0, began + i * CHUNK_S - time.monotonic()))
            if i % 2 == 0:
                await client.send_frame(moving_picture(i, 64, 48), pts=i * CHUNK_S, format="rgb24")
            sent_at[i] = time.monotonic()
            await client.send_audio(tone[i * samples:(i + 1) * samples, None], 48000, chunk_id=i, pts=i * CHUNK_S)
        received, arrived = [], {}
        while len(received) < len(sent_at):
            chunk = await asyncio.wait_for(client.audio.get(), 10)
            arrived[chunk.chunk_id] = time.monotonic()
            received.append(chunk)
        stats = await client.stats()

    assert [c.chunk_id for c in received] == list(range(len(sent_at)))  # every chunk, in order
    assert np.array_equal(np.concatenate([c.samples[:, 0] for c in received]), tone)
    assert stats["audio"]["refused"] == 0 and stats["frames_out"] > 0
    # Held back with the video: once the video's latency is known (at least one slow step), the audio
    # that follows comes out about that much later than it went in (audio that did not wait for the video
    # would come back within a step, half a step late on average).
    late = [arrived[i] - sent_at[i] for i in range(len(sent_at) // 2, len(sent_at))]
    assert np.median(late) > 0.8 * STEP_S, np.median(late)
    assert stats["latency_ms"]["p50"] >= STEP_S * 1000 * 0.9
    assert [r.getMessage() for r in caplog.records if r.name.startswith(("streaming", "app"))] == []


async def test_the_delay_line_keeps_order_when_the_delay_shrinks_and_refuses_audio_faster_than_real_time():
    out: list[int] = []
    delay = [0.2]
    line = AudioDelayLine(lambda chunk: out.append(chunk.chunk_id), lambda: delay[0], max_ahead_s=0.1)

    def chunk(i: int, seconds: float = 0.02) -> AudioChunk:
        return AudioChunk(np.zeros((int(48000 * seconds), 1), np.int16), 48000, i, None)

    line.put(chunk(0))
    delay[0] = 0.0  # the video caught up: later audio must still not overtake what waits
    line.put(chunk(1))
    await asyncio.sleep(0.05)
    assert out == []
    await asyncio.sleep(0.3)
    assert out == [0, 1] and line.held_s == 0
    with pytest.raises(StreamError) as refused:
        line.put(chunk(2, seconds=0.5))  # half a second at once, with no video delay to explain it
    assert refused.value.code.value == "audio_overflow" and "faster than real time" in refused.value.message
