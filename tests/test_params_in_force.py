"""One source of truth for a stream's parameters: whatever sequence of starts, client updates and
quality steps set them, every reader sees the same normalised values. The readers: the `ack`,
`GET /v1/sessions/{id}`, the stats message and REST stats, the quality message, the cost shape
the scheduler measures steps under (`/health` step costs), and the `ack` of a later update.

The real server with the real stream-diffusion pipeline on the `tiny` preset (its schedule fields
`strength`, `steps` and `t_index_list` are the ones that drifted apart before).
"""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest

from pipelines.stream_diffusion.params import strength_to_t_index_list
from streaming.client import StreamClient

from conftest import make_settings, serve_app_in_thread

SIZE = {"width": 64, "height": 64}
SCHEDULE = ("t_index_list", "steps", "strength")


@pytest.fixture(scope="module")
def served():
    settings = make_settings(preset="tiny", device="cpu", pipelines=["stream-diffusion"], warmup=True)
    with serve_app_in_thread(settings) as served:
        yield served


@pytest.fixture
def base_url(served):
    return served[0]


def schedule(params: dict) -> dict:
    return {name: params[name] for name in SCHEDULE}


async def readers_agree(client: StreamClient, http: httpx.AsyncClient, expected: dict) -> dict:
    """Every reader of the parameters in force shows `expected` (a subset); returns the full set."""
    acked = (await client.update({}))["params"]
    rest = (await http.get(f"/v1/sessions/{client.session_id}")).json()["params"]
    stats = (await client.stats())["params"]
    rest_stats = (await http.get(f"/v1/sessions/{client.session_id}/stats")).json()["params"]
    assert acked == rest == stats == rest_stats
    assert {name: acked[name] for name in expected} == expected
    assert acked["steps"] == len(acked["t_index_list"])
    if acked["strength"] is not None:
        assert acked["t_index_list"] == strength_to_t_index_list(acked["strength"], acked["steps"])
    return acked


async def cost_shape_measured(client: StreamClient, http: httpx.AsyncClient, params: dict) -> None:
    """A step runs and the scheduler's cost model records it under the shape in force: width x
    height x steps, one stream."""
    key = f"{params['width']}x{params['height']}x{params['steps']}*1"
    before = (await http.get("/health")).json()["step_costs_ms"]["stream-diffusion"].get(key)
    rng = np.random.default_rng(0)
    for _ in range(5):  # a few frames: the last may still be in the pipe, the measured steps are not
        await client.send_frame(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), format="rgb24")
        await asyncio.sleep(0.15)
    for _ in range(50):
        after = (await http.get("/health")).json()["step_costs_ms"]["stream-diffusion"].get(key)
        if after is not None and after != before:
            return
        await asyncio.sleep(0.1)
    pytest.fail(f"no step was measured under the cost shape {key}")


async def test_an_explicit_schedule_replaces_strength_for_every_reader(base_url):
    """The reported bug: strength 0.5, then t_index_list [10, 40]; the pipeline ran [10, 40] while
    the ack, REST, stats and the cost shape kept [24, 45]."""
    async with await StreamClient.connect(base_url) as client, httpx.AsyncClient(base_url=base_url) as http:
        started = await client.start("stream-diffusion", {**SIZE, "strength": 0.5}, slo={"target_fps": 5}, output_format="rgb24")
        assert schedule(started["params"]) == {"t_index_list": [24, 45], "steps": 2, "strength": 0.5}
        ack = await client.update({"t_index_list": [10, 40]})
        assert schedule(ack["params"]) == {"t_index_list": [10, 40], "steps": 2, "strength": None}
        assert set(ack["applied"]) == {"t_index_list", "strength"} and ack["update_class"] == "reset"
        params = await readers_agree(client, http, {"t_index_list": [10, 40], "strength": None})
        await cost_shape_measured(client, http, params)

        # steps on an explicit schedule resamples it (first and last index kept)...
        ack = await client.update({"steps": 3})
        assert schedule(ack["params"]) == {"t_index_list": [10, 25, 40], "steps": 3, "strength": None}
        params = await readers_agree(client, http, {"t_index_list": [10, 25, 40]})
        await cost_shape_measured(client, http, params)
        # ...and strength then derives it again, with the steps in force.
        ack = await client.update({"strength": 0.7})
        assert schedule(ack["params"]) == {"t_index_list": strength_to_t_index_list(0.7, 3), "steps": 3, "strength": 0.7}
        await readers_agree(client, http, {"strength": 0.7, "steps": 3})


async def test_contradicting_schedule_fields_are_refused_and_change_nothing(base_url):
    async with await StreamClient.connect(base_url) as client, httpx.AsyncClient(base_url=base_url) as http:
        await client.start("stream-diffusion", {**SIZE, "strength": 0.5}, slo={"target_fps": 5})
        for bad, field in (({"t_index_list": [10, 40], "steps": 3}, "steps"), ({"t_index_list": [10, 40], "strength": 0.5}, None)):
            response = await http.patch(f"/v1/sessions/{client.session_id}", json={"params": bad})
            assert response.status_code == 400 and "give one of them" in response.json()["error"]["message"]
            assert field is None or response.json()["error"].get("field") in (field, None)
        await readers_agree(client, http, {"t_index_list": [24, 45], "steps": 2, "strength": 0.5})


async def test_a_size_change_reaches_every_reader_and_the_cost_shape(base_url):
    async with await StreamClient.connect(base_url) as client, httpx.AsyncClient(base_url=base_url) as http:
        await client.start("stream-diffusion", {**SIZE, "steps": 1}, slo={"target_fps": 5}, output_format="rgb24")
        response = await http.patch(f"/v1/sessions/{client.session_id}", json={"params": {"width": 128, "height": 96}})
        assert response.status_code == 200 and response.json()["reset"]
        params = await readers_agree(client, http, {"width": 128, "height": 96, "steps": 1})
        await cost_shape_measured(client, http, params)
        frame = await client.receive_frame(30)
        assert (frame.width, frame.height) == (128, 96)


async def test_a_quality_step_and_later_client_updates_agree_everywhere(served):
    """Under load the server takes a step off (strength stays, the schedule is derived again);
    the client's later changes keep the level; when load falls the step comes back on top of
    what the client chose since, not over it."""
    base_url, context = served
    async with await StreamClient.connect(base_url) as client, httpx.AsyncClient(base_url=base_url) as http:
        await client.start("stream-diffusion", {**SIZE, "strength": 0.5}, slo={"target_fps": 2})
        await client.update(slo={"target_fps": 240, "degrade": ["steps"]})  # far more than the worker can do
        down = await asyncio.wait_for(client.quality_events.get(), 10)
        assert (down["direction"], down["knob"], down["level"]) == ("down", "steps", 1)
        assert down["params"] == {"t_index_list": [24], "steps": 1}  # the changed values in force; strength kept
        await readers_agree(client, http, {"t_index_list": [24], "steps": 1, "strength": 0.5})
        assert (await client.stats())["quality_level"] == 1
        await asyncio.sleep(0.6)
        assert client.quality_events.empty()  # at the floor of its knob: no step down is proposed again

        ack = await client.update({"prompt": "a fox"})  # unrelated: the level stays
        assert schedule(ack["params"]) == {"t_index_list": [24], "steps": 1, "strength": 0.5}
        ack = await client.update({"strength": 0.7})  # the client's own value, at the lowered steps
        assert schedule(ack["params"]) == {"t_index_list": strength_to_t_index_list(0.7, 1), "steps": 1, "strength": 0.7}
        session = context.sessions.get(client.session_id)
        assert [level.knob for level in session.quality] == ["steps"]

        await client.update(slo={"target_fps": 2, "degrade": ["steps"]})  # load falls
        up = await asyncio.wait_for(client.quality_events.get(), 15)
        assert (up["direction"], up["level"]) == ("up", 0)
        # The step comes back; the schedule follows the client's strength, not the one it replaced.
        assert up["params"] == {"t_index_list": strength_to_t_index_list(0.7, 2), "steps": 2}
        await readers_agree(client, http, {"steps": 2, "strength": 0.7, "t_index_list": strength_to_t_index_list(0.7, 2)})
        assert (await client.stats())["quality_level"] == 0


async def test_a_client_schedule_replaces_a_quality_step(base_url):
    """A level whose parameters the client has set since is dropped: when load falls nothing
    comes back over the client's own schedule."""
    async with await StreamClient.connect(base_url) as client, httpx.AsyncClient(base_url=base_url) as http:
        await client.start("stream-diffusion", {**SIZE, "t_index_list": [10, 25, 40]}, slo={"target_fps": 2})
        await client.update(slo={"target_fps": 240, "degrade": ["steps"]})
        down = await asyncio.wait_for(client.quality_events.get(), 10)
        assert down["params"] == {"t_index_list": [10, 40], "steps": 2}
        # The client's own schedule, and a rate the worker can serve, in one update.
        ack = await client.update({"t_index_list": [5, 30]}, slo={"target_fps": 2, "degrade": ["steps"]})
        assert schedule(ack["params"]) == {"t_index_list": [5, 30], "steps": 2, "strength": None}
        await readers_agree(client, http, {"t_index_list": [5, 30]})
        assert (await client.stats())["quality_level"] == 0
        await asyncio.sleep(4.0)  # longer than the degradation policy waits before stepping up
        assert client.quality_events.empty()
        await readers_agree(client, http, {"t_index_list": [5, 30], "steps": 2})
