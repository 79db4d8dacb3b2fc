"""The SLO-aware scheduler inside the real server: admission refused with a reason or queued with
its position, quality stepped down and back up with events to the client, stale inputs counted.
Pipelines with controlled per-stream costs stand in for models; the worker's warm-up profile
measures them, as it measures a real model."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from pipelines.scheduling import SchedulingProfile, smaller_size
from streaming.client import StreamClient, StreamClientError
from streaming.frames import VideoFrame

from fake_pipelines import TintPipeline, TintState

STEP_S = 0.012  # per stream at 64x64: a session at 30 fps needs 36% of the worker


def sized_cost(params) -> tuple[int, ...]:
    return params.width, params.height


class CostlyPipeline(TintPipeline):
    """Tint, costing STEP_S per stream per step at 64x64 and proportionally to the pixels (a CPU)."""

    scheduling = SchedulingProfile(
        slo_defaults={"target_fps": 30.0, "latency_budget_ms": 400.0},
        cost_shape=sized_cost,
        lower_quality=lambda params, knob: smaller_size(params, 16, 16, 0.5) if knob == "resolution" else None,
    )

    def step(self, batch: Sequence[tuple[TintState, VideoFrame | None]]) -> list[Any]:
        time.sleep(sum(STEP_S * s.params.width * s.params.height / 64 ** 2 for s, _ in batch))
        return super().step(batch)


@pytest.fixture
def costly_url(server_factory):
    return server_factory({"costly": CostlyPipeline("costly")}, warmup=True, max_sessions=8)


async def test_a_session_that_would_break_running_slos_is_refused_or_queued(costly_url):
    clients = [await StreamClient.connect(costly_url) for _ in range(4)]
    try:
        for client in clients[:2]:
            started = await client.start("costly")
            assert started["slo"] == {"target_fps": 30.0, "latency_budget_ms": 400.0}  # the pipeline's defaults
            assert started["slo_estimate"]["meets_slo"] is True
        with pytest.raises(StreamClientError) as refused:
            await clients[2].start("costly")
        assert refused.value.code == "busy" and "miss their SLO" in refused.value.message and "target_fps of at most" in refused.value.message
        assert (await clients[2].start("costly", slo={"target_fps": 5}))["slo_estimate"]["meets_slo"]  # a rate that fits

        queued = asyncio.create_task(clients[3].start("costly", queue=True))
        while not clients[3].queue_positions:
            await asyncio.sleep(0.02)
        assert clients[3].queue_positions == [1] and not queued.done()
        await clients[0].close()  # room appears: the head of the line is admitted
        started = await asyncio.wait_for(queued, 10)
        assert started["session_id"] and started["slo"]["target_fps"] == 30.0
    finally:
        for client in clients:
            await client.close()


async def test_quality_steps_down_under_load_and_back_up_with_events(costly_url):
    async with await StreamClient.connect(costly_url) as client:
        # 120 fps at 64x64 needs 1.4x the worker: the session allowed smaller pictures.
        await client.start("costly", {"width": 64, "height": 64}, slo={"target_fps": 120, "degrade": ["resolution"]})
        down = await asyncio.wait_for(client.quality_events.get(), 10)
        assert down["direction"] == "down" and down["knob"] == "resolution" and down["level"] == 1
        assert down["params"] == {"width": 32, "height": 32} and "compute" in down["reason"]
        assert (await client.update({}))["params"]["width"] == 32
        await client.update(slo={"target_fps": 20, "degrade": ["resolution"]})  # load falls
        up = await asyncio.wait_for(client.quality_events.get(), 15)
        assert up["direction"] == "up" and up["level"] == 0 and up["params"] == {"width": 64, "height": 64}
        assert client.quality_events.empty()


async def test_inputs_older_than_the_budget_are_dropped_and_counted(server_factory):
    url = server_factory({"slow": TintPipeline("slow", delay_s=0.25)}, warmup=True)
    async with await StreamClient.connect(url) as client:
        await client.start("slow", slo={"latency_budget_ms": 100}, output_format="rgb24")
        for i in range(6):  # in pairs: the first starts a 0.25 s step at once, the second waits it out
            await client.send_frame(np.zeros((16, 16, 3), np.uint8), frame_id=i, format="rgb24")
            await asyncio.sleep(0.02 if i % 2 == 0 else 0.4)
        await asyncio.sleep(0.6)
        stats = await client.stats()
    assert stats["dropped_stale"] >= 1
    assert stats["frames_stepped"] + stats["dropped_input"] + stats["dropped_stale"] == stats["frames_in"] == 6
