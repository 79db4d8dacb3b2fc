"""A stage process that dies mid-stream (killed, as the OOM killer or a driver fault would): the
server reports it, ends the sessions of the pipeline split across it with a reason, refuses new
ones for that pipeline, and keeps serving the others."""

from __future__ import annotations

import asyncio
import multiprocessing

import httpx
import numpy as np
import pytest

from streaming.client import StreamClient, StreamClientError

from conftest import make_settings, serve_app_in_thread


async def test_a_dead_stage_process_ends_its_pipelines_sessions_and_the_server_goes_on():
    settings = make_settings(preset="tiny-video", device="cpu", pipelines=["rolling-kv-video", "passthrough"],
                             stage_devices=["cpu", "cpu"], warmup=True)
    with serve_app_in_thread(settings) as (url, context):
        [stage] = multiprocessing.active_children()
        async with await StreamClient.connect(url) as victim, await StreamClient.connect(url) as bystander:
            await victim.start("rolling-kv-video", {"steps": 1, "kv_mode": "single-slot"}, output_format="rgb24")
            await bystander.start("passthrough", output_format="rgb24")
            picture = np.full((64, 64, 3), 100, np.uint8)
            await victim.send_frame(picture, frame_id=0, format="rgb24")
            while (await victim.stats())["frames_stepped"] < 1:
                await asyncio.sleep(0.05)

            stage.kill()
            for frame_id in range(1, 4):  # the stream goes on sending into the split pipeline
                await victim.send_frame(picture, frame_id=frame_id, format="rgb24")
            stopped = await asyncio.wait_for(victim.stopped, 30)
            assert stopped["reason"] == "pipeline_failed" and stage.name in stopped["message"], stopped

            await bystander.send_frame(picture, frame_id=7, format="rgb24")
            while (await bystander.receive_frame(10)).frame_id != 7:
                pass
            async with httpx.AsyncClient(base_url=url) as http:
                health = (await http.get("/health")).json()
                assert health["status"] == "ready" and stage.name in health["failed_pipelines"]["rolling-kv-video"]
                refused = await http.post("/v1/sessions", json={"pipeline": "rolling-kv-video"})
                assert refused.status_code == 503 and refused.json()["error"]["code"] == "pipeline_failed"
                assert [s["pipeline"] for s in (await http.get("/v1/sessions")).json()] == ["passthrough"]
            async with await StreamClient.connect(url) as latecomer:
                with pytest.raises(StreamClientError) as err:
                    await latecomer.start("rolling-kv-video")
                assert err.value.code == "pipeline_failed"
    assert multiprocessing.active_children() == []
