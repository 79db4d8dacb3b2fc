"""A cluster of two Ray nodes on this machine (127.0.0.2 and 127.0.0.3, one CPU each, tiny preset) behind
`latentcast cluster`, with real clients: sessions spread over both workers; a worker killed mid-stream ends its
client's session with `worker_failed`, new sessions land on the survivor, and Ray brings the worker back; REST,
WHIP and WHEP send clients to the worker; the demo follows a redirect; a drained worker lets its sessions go on
until its timeout, then stops. The cluster has an API token, which the front door hands to its workers: clients
use short-lived tokens from the front door, which every worker accepts. The whole module shares one cluster;
nothing of it is left running afterwards.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from urllib.parse import parse_qs, urlsplit

import httpx
import numpy as np
import pytest
from playwright import sync_api

from benchmarks.local_cluster import LocalCluster
from streaming.client import StreamClient, StreamClientError

from browser import launch_chromium, open_page, write_y4m

# Each worker holds 2 sessions, so four fill the cluster and a fifth is refused. The tiny preset, eager engine
# and one thread keep two workers on two shared cores.
FRONT_DOOR_ARGS = ["--preset=tiny", "--engine=eager", "--threads=1", "--max-sessions=2"]
FIRST, SECOND = "127.0.0.2-0", "127.0.0.3-0"
SMALL = {"width": 64, "height": 64}
TOKEN = "cluster-test-secret"
API = {"Authorization": f"Bearer {TOKEN}"}
FRAME = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(nodes=2, front_door_args=FRONT_DOOR_ARGS, drain_timeout_s=5.0, api_token=TOKEN) as running:
        yield running
    assert not running.left_running(), running.left_running()


def workers(cluster: LocalCluster) -> dict[str, dict]:
    return {w["name"]: w for w in httpx.get(f"{cluster.url}/v1/cluster/workers", headers=API, timeout=10).json()}


def browser_token(cluster: LocalCluster) -> str:
    return httpx.post(f"{cluster.url}/v1/tokens", headers=API, timeout=10).json()["token"]


def without_query(url: str) -> str:
    return url.split("?", 1)[0]


def url_token(url: str) -> str:
    return parse_qs(urlsplit(url).query)["token"][0]


def worker_of(cluster: LocalCluster, session_id: str) -> str:
    """The worker the front door sends a session's requests to, once it has seen the session there (its status
    poll: a worker that dies before is not known to have held it, docs/cluster.md)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        answer = httpx.get(f"{cluster.url}/v1/sessions/{session_id}", headers=API, timeout=10)
        if answer.status_code == 307:
            base = answer.headers["location"].split("/v1/", 1)[0]
            return next(name for name, w in workers(cluster).items() if w["url"] == base)
        time.sleep(0.2)
    raise AssertionError(f"the front door has not seen session {session_id} on any worker")


async def streaming_client(cluster: LocalCluster, pipeline: str = "passthrough") -> StreamClient:
    """A client that started a session through the front door, and streams. Passthrough costs next to nothing, so
    two workers with one such session each are equally loaded (stream-diffusion's measured costs differ by worker).
    Its token is a short-lived one from the front door: the worker it is sent to accepts it."""
    client = await StreamClient.connect(cluster.url, token=browser_token(cluster))
    assert client.hello["role"] == "front-door"
    await client.start(pipeline, SMALL if pipeline == "stream-diffusion" else {}, slo={"target_fps": 4})
    assert client.placed_by == cluster.url
    await frames_come_back(client)
    return client


async def frames_come_back(client: StreamClient, count: int = 2) -> None:
    received = 0
    for _ in range(40):
        await client.send_frame(FRAME)
        await asyncio.sleep(0.1)
        while not client.frames.empty():
            client.frames.get_nowait()
            received += 1
        if received >= count:
            return
    raise AssertionError(f"{received} frame(s) came back of {count}")


async def test_sessions_spread_and_a_killed_worker_ends_its_sessions_then_comes_back(cluster):
    first = await streaming_client(cluster)
    second = await streaming_client(cluster)
    on_first, on_second = worker_of(cluster, first.session_id), worker_of(cluster, second.session_id)
    assert {on_first, on_second} == {FIRST, SECOND}, "the second session went to the emptier worker"

    killed = workers(cluster)[on_first]
    os.kill(killed["pid"], signal.SIGKILL)
    stopped = await asyncio.wait_for(first.stopped, 30)
    assert stopped["reason"] == "worker_failed" and on_first in stopped["message"], stopped
    gone = httpx.get(f"{cluster.url}/v1/sessions/{first.session_id}", headers=API, timeout=10)
    assert gone.status_code == 502 and gone.json()["error"]["code"] == "worker_failed", gone.text
    await frames_come_back(second)  # the other worker's session never noticed

    assert workers(cluster)[on_first]["state"] != "up"  # still coming back: its models load again
    third = await streaming_client(cluster, "stream-diffusion")
    assert worker_of(cluster, third.session_id) == on_second, "a new session goes to the survivor"

    deadline = time.monotonic() + 150
    while not ((back := workers(cluster)[on_first])["state"] == "up" and back["restarts"] == 1):
        assert time.monotonic() < deadline, f"the killed worker did not come back: {back}"
        await asyncio.sleep(1)
    assert back["pid"] != killed["pid"]
    fourth = await streaming_client(cluster, "stream-diffusion")  # the survivor is full now: the restarted worker takes it
    fifth = await streaming_client(cluster, "stream-diffusion")
    assert worker_of(cluster, fourth.session_id) == worker_of(cluster, fifth.session_id) == on_first

    refused = httpx.post(f"{cluster.url}/v1/sessions", json={"pipeline": "stream-diffusion", "params": SMALL}, headers=API, timeout=30)
    assert refused.status_code == 503 and refused.headers["retry-after"], refused.text
    error = refused.json()["error"]
    assert error["code"] == "busy" and FIRST in error["message"] and SECOND in error["message"], error
    async with await StreamClient.connect(cluster.url, token=TOKEN) as sixth:
        with pytest.raises(StreamClientError) as busy:
            await sixth.start("stream-diffusion", SMALL)
        assert busy.value.code == "busy"

    metrics = httpx.get(f"{cluster.url}/metrics", headers=API, timeout=10).text
    assert re.search(rf'latentcast_worker_restarts_total\{{node="[\d.]+",worker="{on_first}"\}} 1\.0', metrics), metrics
    assert re.search(r"latentcast_cluster_session_slots\{use=\"used\"\} 4\.0", metrics), metrics
    assert "latentcast_cluster_worker_failures_total 1.0" in metrics
    for client in (first, second, third, fourth, fifth):
        await client.close()


async def test_rest_whip_and_whep_send_clients_to_the_sessions_worker(cluster):
    async with httpx.AsyncClient(base_url=cluster.url, headers=API, timeout=30) as http:
        made = await http.post("/v1/sessions", json={"pipeline": "passthrough"})
        assert made.status_code == 201, made.text
        session = made.json()
        worker = workers(cluster)[session["worker"]]
        assert without_query(session["urls"]["stream"]) == worker["url"].replace("http", "ws") + "/v1/stream"

        one = await http.get(f"/v1/sessions/{session['id']}")
        assert one.status_code == 307 and without_query(one.headers["location"]) == without_query(session["urls"]["session"])
        # The front door's URLs carry a short-lived token (redirects drop Authorization): the worker takes it.
        there = await http.get(one.headers["location"], headers={"Authorization": ""})
        assert there.status_code == 200 and there.json()["id"] == session["id"], there.text
        for method, route in [("GET", "stats"), ("PUT", "images/image_prompt"), ("GET", "pictures/control-0"), ("GET", "osc")]:
            sub = await http.request(method, f"/v1/sessions/{session['id']}/{route}", content=b"x")
            assert sub.status_code == 307 and without_query(sub.headers["location"]) == f"{worker['url']}/v1/sessions/{session['id']}/{route}"
        whip = await http.post("/v1/whip?pipeline=passthrough&target_fps=10", content=b"v=0\r\n", headers={"Content-Type": "application/sdp"})
        assert whip.status_code == 307, whip.text
        assert re.fullmatch(r"http://127\.0\.0\.[23]:\d+/v1/whip\?pipeline=passthrough&target_fps=10&token=lc1\.\S+", whip.headers["location"])
        whep = await http.post(f"/v1/whep/{session['id']}", content=b"v=0\r\n", headers={"Content-Type": "application/sdp"})
        assert whep.status_code == 307 and without_query(whep.headers["location"]) == f"{worker['url']}/v1/whep/{session['id']}"

        # The demo page comes from the front door and sends its WebRTC offer to the worker: another origin.
        preflight = await http.options(f"{worker['url']}/v1/webrtc/offer", headers={
            "Origin": cluster.url, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"})
        assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == "*", preflight.headers
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()

        bad = await http.post("/v1/sessions", json={"pipeline": "stream-diffusion", "params": {"strength": 5}})
        assert bad.status_code == 400 and bad.json()["error"]["field"] == "strength", bad.text
        unknown = await http.get("/v1/sessions/0123456789abcdef")
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_session"

        async with await StreamClient.connect(session["urls"]["stream"], token=url_token(session["urls"]["stream"])) as client:
            started = await client.start(session_id=session["id"])
            assert started["session_id"] == session["id"]
            deleted = await http.delete(f"/v1/sessions/{session['id']}", follow_redirects=True)
            assert deleted.status_code == 204
            assert (await asyncio.wait_for(client.stopped, 10))["reason"] == "deleted"


def test_the_demo_follows_the_redirect_to_its_worker(cluster, tmp_path):
    clip = write_y4m(tmp_path / "clip.y4m")
    with sync_api.sync_playwright() as playwright:
        browser = launch_chromium(playwright, f"--use-file-for-fake-video-capture={clip}")
        try:
            page, console_errors = open_page(browser, f"{cluster.url}/?transport=websocket&token={browser_token(cluster)}")
            page.wait_for_function("window.latentcast && window.latentcast.status === 'idle'", timeout=30_000)
            page.select_option("#pipeline", "passthrough")
            page.click("#start")
            page.wait_for_function("window.latentcast.framesReceived > 5", timeout=30_000)
            session_id = page.evaluate("window.latentcast.sessionId")
            assert worker_of(cluster, session_id) in (FIRST, SECOND)
            page.click("#stop")
            page.wait_for_function("window.latentcast.status === 'stopped'", timeout=10_000)
            assert not console_errors, console_errors
        finally:
            browser.close()


async def test_a_drained_worker_lets_its_sessions_run_until_the_timeout_then_stops(cluster):
    clients = [await streaming_client(cluster) for _ in range(4)]  # two on each worker
    by_worker: dict[str, list[StreamClient]] = {}
    for client in clients:
        by_worker.setdefault(worker_of(cluster, client.session_id), []).append(client)
    (leaves, stays), others = by_worker[FIRST], by_worker[SECOND]
    url = workers(cluster)[FIRST]["url"]

    refused = httpx.post(f"{cluster.url}/v1/cluster/workers/{FIRST}/drain", headers={"Authorization": f"Bearer {browser_token(cluster)}"})
    assert refused.status_code == 401, "a browser token may not drain workers"
    drain = httpx.post(f"{cluster.url}/v1/cluster/workers/{FIRST}/drain", json={"timeout_s": 8}, headers=API, timeout=30)
    assert drain.status_code == 202 and drain.json()["state"] == "draining", drain.text
    await leaves.stop()                    # a session may end by itself meanwhile
    await frames_come_back(stays)          # and the others go on
    await others[0].stop()
    newcomer = await streaming_client(cluster)
    assert worker_of(cluster, newcomer.session_id) == SECOND, "nothing is placed on a draining worker"
    async with await StreamClient.connect(url, token=TOKEN) as direct:  # nor may a client start one there itself
        with pytest.raises(StreamClientError, match="draining"):
            await direct.start("passthrough")

    stopped = await asyncio.wait_for(stays.stopped, 30)
    assert stopped["reason"] == "shutdown" and "drained" in stopped["message"], stopped
    deadline = time.monotonic() + 30
    while FIRST in workers(cluster):
        assert time.monotonic() < deadline, "the drained worker is still listed"
        await asyncio.sleep(0.5)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/health", headers=API, timeout=5)
    for client in (*clients, newcomer):
        await client.close()
