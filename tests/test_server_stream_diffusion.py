"""The server with the real stream-diffusion pipeline on the `tiny` preset, loaded and warmed the
way `latentcast serve` does it. Frames go in lockstep (send one, wait for what comes out), so
nothing is dropped and runs can be compared frame by frame."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from streaming.client import StreamClient

from conftest import make_settings, serve_in_thread
from media import moving_picture

SIZE = 64
PARAMS = {"width": SIZE, "height": SIZE, "t_index_list": [32, 45], "seed": 7}
# Lockstep clients send a frame only once the last one was stepped: a low rate is what they ask
# for, so admission control lets two of them in even on a slow or busy machine.
LOCKSTEP_SLO = {"target_fps": 2}


@pytest.fixture(scope="module")
def base_url():
    settings = make_settings(preset="tiny", device="cpu", pipelines=["stream-diffusion", "passthrough"], warmup=True)
    with serve_in_thread(settings) as url:
        yield url


async def lockstep(client: StreamClient, frames: range, between=None) -> dict[int, np.ndarray]:
    """Send frames one by one, each once the pipeline took the previous one (so latest-wins drops
    none); with N steps, stream batch returns frame k once frame k+N-1 went in."""
    depth = len((await client.update({}))["params"]["t_index_list"]) - 1
    outputs: dict[int, np.ndarray] = {}
    for n, i in enumerate(frames):
        if between is not None and i == between[0]:
            await between[1]()
        await client.send_frame(moving_picture(i, SIZE, SIZE), frame_id=i, pts=i / 30, format="rgb24")
        while (await client.stats())["frames_stepped"] <= n:
            await asyncio.sleep(0.02)
        if n >= depth:
            out = await client.receive_frame(60)
            assert out.frame_id == i - depth and out.pts == (i - depth) / 30
            outputs[out.frame_id] = out.image.astype(int)
    return outputs


async def test_serve_loads_and_warms_stream_diffusion_first(base_url):
    async with await StreamClient.connect(base_url) as client:
        assert client.hello["pipelines"] == ["stream-diffusion", "passthrough"]
        assert client.hello["default_pipeline"] == "stream-diffusion"


async def test_two_sessions_with_different_prompts_do_not_mix(base_url):
    async def run(prompt: str) -> dict[int, np.ndarray]:
        async with await StreamClient.connect(base_url) as client:
            await client.start("stream-diffusion", {**PARAMS, "prompt": prompt, "t_index_list": [35]}, slo=LOCKSTEP_SLO,
                               output_format="rgb24")
            return await lockstep(client, range(3))

    alone = await run("a red fox in the snow")
    together, other = await asyncio.gather(run("a red fox in the snow"), run("a blue whale in the deep sea"))
    assert alone.keys() == together.keys() == other.keys() == {0, 1, 2}
    for k in alone:
        # Sharing batched steps with another stream does not change a stream's frames (beyond float
        # rounding), while the other stream's prompt does. (The tiny preset's random weights make
        # dark pictures, so a prompt moves few pixels: compare total change.)
        mixed, prompt_effect = np.abs(together[k] - alone[k]), np.abs(other[k] - alone[k])
        assert mixed.max() <= 1 and mixed.sum() * 10 < prompt_effect.sum(), k


async def test_an_update_is_acknowledged_and_changes_the_next_frame(base_url):
    async def session(update: bool) -> tuple[dict[int, np.ndarray], dict | None]:
        async with await StreamClient.connect(base_url) as client:
            await client.start("stream-diffusion", {**PARAMS, "prompt": "a lighthouse"}, slo=LOCKSTEP_SLO, output_format="rgb24")
            acks = []

            async def change_prompt():
                acks.append(await client.update({"prompt": "a forest of glass"}))

            return await lockstep(client, range(5), between=(3, change_prompt) if update else None), (acks or [None])[0]

    (before_and_after, ack), (reference, _) = await asyncio.gather(session(True), session(False))
    assert ack["applied"] == ["prompt"] and ack["update_class"] == "hot" and ack["reset"] is False
    assert ack["params"]["prompt"] == "a forest of glass"
    for k in range(2):  # frames out before the update: as without it
        assert np.abs(before_and_after[k] - reference[k]).max() <= 1, k
    for k in range(2, 4):  # from the first frame out after the ack: the new prompt (dark tiny pictures: total change)
        assert np.abs(before_and_after[k] - reference[k]).sum() > 50, k


async def test_a_reset_update_empties_the_pipe(base_url):
    async with await StreamClient.connect(base_url) as client:
        await client.start("stream-diffusion", {**PARAMS, "prompt": "x"}, output_format="rgb24")
        await lockstep(client, range(3))
        ack = await client.update({"t_index_list": [20, 40]})
        assert ack["update_class"] == "reset" and ack["reset"] is True and ack["discarded_frames"] == 1


async def test_txt2img_pushes_frames_without_input(base_url):
    async with await StreamClient.connect(base_url) as client:
        started = await client.start("stream-diffusion", {**PARAMS, "mode": "txt2img", "cfg_type": "none", "prompt": "stars"},
                                     slo={"target_fps": 10}, output_format="rgb24")
        assert started["needs_input"] is False
        first = await client.receive_frame(60)
        second = await client.receive_frame(60)
    assert second.frame_id == first.frame_id + 1 and second.pts > first.pts
    assert first.image.shape == (SIZE, SIZE, 3)
