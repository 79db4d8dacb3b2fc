"""OSC control of session parameters: real UDP packets on 127.0.0.1 to the real server change a session a
WebSocket client is streaming (it sees the values in force in its stats and in the pixels), get an ack or
an error back at their source port, and a refused value leaves the session as it was."""

from __future__ import annotations

import asyncio
import socket

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pythonosc.osc_bundle_builder import IMMEDIATELY, OscBundleBuilder
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder

from app.cli import main
from pipelines.passthrough import PassthroughPipeline
from streaming.client import StreamClient

from conftest import make_settings, serve_in_thread
from fake_pipelines import TintPipeline, prompt_color
from media import moving_picture

PIPELINES = {"tint": TintPipeline(), "slow": TintPipeline("slow", delay_s=0.3), "passthrough": PassthroughPipeline()}


def osc_message(address: str, *args) -> bytes:
    builder = OscMessageBuilder(address)
    for arg in args:
        builder.add_arg(arg)
    return builder.build().dgram


class OscPeer:
    """A controller: sends OSC datagrams to the server from its own port and reads the replies there."""

    def __init__(self, port: int):
        self.server = ("127.0.0.1", port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))

    def send(self, address: str, *args) -> None:
        self.sock.sendto(osc_message(address, *args), self.server)

    def send_raw(self, data: bytes) -> None:
        self.sock.sendto(data, self.server)

    async def reply(self, timeout: float = 10.0) -> tuple[str, list]:
        def receive() -> bytes:
            self.sock.settimeout(timeout)
            return self.sock.recv(65536)

        message = OscMessage(await asyncio.to_thread(receive))
        return message.address, list(message.params)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def base_url():
    with serve_in_thread(make_settings(osc_port=0, stats_interval_s=0.3), lambda: PIPELINES) as url:
        yield url


@pytest.fixture
async def http(base_url):
    async with httpx.AsyncClient(base_url=base_url) as client:
        yield client


@pytest.fixture
async def osc(http):
    peer = OscPeer((await http.get("/v1/live-control")).json()["osc"]["port"])
    yield peer
    peer.close()


async def params_in_force(client: StreamClient) -> dict:
    return (await client.stats())["params"]


async def test_osc_changes_a_streaming_sessions_parameters_and_acks_the_sender(base_url, http, osc):
    async with await StreamClient.connect(base_url) as client:
        started = await client.start("tint", {"prompt": "owl", "strength": 0.5}, output_format="rgb24")
        sid = started["session_id"]
        address = (await http.get(f"/v1/sessions/{sid}/osc")).json()
        assert address == {"enabled": True, "host": "127.0.0.1", "port": osc.server[1], "address": f"/latentcast/session/{sid}"}

        osc.send(f"{address['address']}/prompt", "lamp")
        assert await osc.reply() == ("/latentcast/ack", [sid, "prompt", "lamp", "hot"])
        osc.send(f"{address['address']}/strength", 1.0)
        assert await osc.reply() == ("/latentcast/ack", [sid, "strength", 1.0, "hot"])
        # The WebSocket client sees the values in force, and the next frame is made with them.
        assert (await params_in_force(client))["prompt"] == "lamp"
        await client.send_frame(moving_picture(0, 32, 32), format="rgb24")
        frame = await client.receive_frame()
        assert np.allclose(frame.image.reshape(-1, 3).mean(0), prompt_color("lamp"), atol=1)

        # A controller's float (32-bit in OSC) is the decimal it meant; a fader position scales onto the range.
        osc.send(f"{address['address']}/strength", 0.3)
        assert (await osc.reply())[1][2] == 0.30000001192092896  # the reply is a 32-bit float too
        assert (await params_in_force(client))["strength"] == 0.3
        osc.send(f"{address['address']}/width/scaled", 1.0)
        assert await osc.reply() == ("/latentcast/ack", [sid, "width", 512, "reset"])
        osc.send(f"{address['address']}/width/scaled", 0.0)
        assert (await osc.reply())[1][2] == 16
        assert (await params_in_force(client))["width"] == 16


@pytest.mark.parametrize("address_tail, args, code, says", [
    ("/strength", [2.0], "bad_params", "strength"),
    ("/strength", ["very"], "bad_params", "strength"),
    ("/colour", ["red"], "bad_params", "colour: not a parameter"),
    ("/strength", [], "bad_params", "carries no value"),
    ("/strength", [0.1, 0.2], "bad_params", "takes one value"),
    ("/prompt/scaled", [0.5], "bad_params", "no range"),
    ("/width", [b"\x00\x01"], "bad_params", "blobs"),
    ("", ["x"], "bad_message", "name one parameter"),
])
async def test_a_refused_osc_value_gets_an_error_reply_and_leaves_the_session_as_it_was(base_url, osc, address_tail, args, code, says):
    async with await StreamClient.connect(base_url) as client:
        sid = (await client.start("tint", {"prompt": "owl", "strength": 0.5}))["session_id"]
        before = await params_in_force(client)
        address = f"/latentcast/session/{sid}{address_tail}"
        osc.send(address, *args)
        reply_address, (reply_code, message, asked) = await osc.reply()
        assert (reply_address, reply_code, asked) == ("/latentcast/error", code, address)
        assert says in message
        assert await params_in_force(client) == before
        assert (await client.update({"prompt": "still here"}))["params"]["prompt"] == "still here"  # the stream goes on


async def test_addresses_and_packets_that_are_not_ours_get_an_error_and_the_listener_goes_on(base_url, osc):
    osc.send("/latentcast/session/0123456789abcdef/prompt", "x")
    assert (await osc.reply())[1][:2] == ["unknown_session", "no session '0123456789abcdef' (it may have ended or timed out)"]
    osc.send("/other/app", 1)
    assert (await osc.reply())[1][0] == "bad_message"
    osc.send_raw(b"\x00garbage that is no OSC packet")
    assert (await osc.reply())[1][0] == "bad_message"
    async with await StreamClient.connect(base_url) as client:
        sid = (await client.start("tint"))["session_id"]
        osc.send(f"/latentcast/session/{sid}/prompt", "ok")
        assert (await osc.reply())[0] == "/latentcast/ack"


async def test_the_latest_address_drives_the_session_created_last(base_url, osc):
    async with await StreamClient.connect(base_url) as first, await StreamClient.connect(base_url) as second:
        first_id = (await first.start("tint", {"prompt": "owl"}))["session_id"]
        second_id = (await second.start("tint", {"prompt": "owl"}))["session_id"]
        osc.send("/latentcast/latest/prompt", "moth")
        assert await osc.reply() == ("/latentcast/ack", [second_id, "prompt", "moth", "hot"])
        assert (await params_in_force(second))["prompt"] == "moth"
        assert (await params_in_force(first))["prompt"] == "owl"

        await second.stop()
        osc.send("/latentcast/latest/prompt", "lamp")
        assert (await osc.reply())[1][:3] == [first_id, "prompt", "lamp"]
        assert (await params_in_force(first))["prompt"] == "lamp"


async def test_a_bundle_applies_each_of_its_messages(base_url, osc):
    async with await StreamClient.connect(base_url) as client:
        sid = (await client.start("tint"))["session_id"]
        bundle = OscBundleBuilder(IMMEDIATELY)
        for name, value in [("prompt", "kite"), ("strength", 0.75)]:
            builder = OscMessageBuilder(f"/latentcast/session/{sid}/{name}")
            builder.add_arg(value)
            bundle.add_content(builder.build())
        osc.send_raw(bundle.build().dgram)
        acks = {(await osc.reply())[1][1] for _ in range(2)}
        assert acks == {"prompt", "strength"}
        in_force = await params_in_force(client)
        assert (in_force["prompt"], in_force["strength"]) == ("kite", 0.75)


async def test_a_fader_sweep_is_coalesced_and_its_last_value_wins(base_url, osc):
    """20 values sent while a slow pipeline is mid-step: the newest waiting value replaces the older ones."""
    async with await StreamClient.connect(base_url) as client:
        sid = (await client.start("slow", {"mode": "txt2img"}))["session_id"]
        await client.receive_frame()  # the pipeline is stepping (0.3 s a step): updates wait for a tick boundary
        values = [round(0.05 * i, 2) for i in range(1, 21)]
        for value in values:
            osc.send(f"/latentcast/session/{sid}/strength", value)
        acks = []
        while not acks or acks[-1] != values[-1]:
            acks.append((await osc.reply())[1][2])
        assert len(acks) < len(values) and acks == sorted(acks)  # fewer updates than values, never an older one after a newer
        assert (await params_in_force(client))["strength"] == values[-1]


async def test_the_osc_address_is_reported_only_when_the_server_listens():
    with serve_in_thread(make_settings(), lambda: {"tint": TintPipeline()}) as url:
        async with httpx.AsyncClient(base_url=url) as http:
            assert (await http.get("/v1/live-control")).json() == {"osc": None, "midi": None}
            sid = (await http.post("/v1/sessions", json={"pipeline": "tint"})).json()["id"]
            assert (await http.get(f"/v1/sessions/{sid}/osc")).json()["enabled"] is False
            missing = await http.get("/v1/sessions/nope/osc")
            assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_session"


async def test_a_listener_that_requires_session_ids_answers_only_those_who_name_a_running_session():
    with serve_in_thread(make_settings(osc_port=0, osc_require_session_id=True), lambda: {"tint": TintPipeline()}) as url:
        async with httpx.AsyncClient(base_url=url) as http:
            info = (await http.get("/v1/live-control")).json()["osc"]
            assert info["require_session_id"] is True and info["latest_address"] is None
            osc = OscPeer(info["port"])
            try:
                async with await StreamClient.connect(url) as client:
                    sid = (await client.start("tint", {"prompt": "owl"}))["session_id"]
                    osc.send("/latentcast/latest/prompt", "moth")              # refused, unanswered
                    osc.send("/latentcast/session/0123456789abcdef/prompt", "x")  # a guessed id: unanswered
                    osc.send_raw(b"no OSC at all")                             # unanswered
                    osc.send(f"/latentcast/session/{sid}/strength", 3.0)         # names the session: told why not
                    osc.send(f"/latentcast/session/{sid}/prompt", "lamp")
                    # Replies come in order: the first is about the fourth message, so the first three got none.
                    address, (code, message, asked) = await osc.reply()
                    assert (address, code, asked) == ("/latentcast/error", "bad_params", f"/latentcast/session/{sid}/strength")
                    assert message.startswith("strength:")
                    assert await osc.reply() == ("/latentcast/ack", [sid, "prompt", "lamp", "hot"])
                    assert (await params_in_force(client))["prompt"] == "lamp"
            finally:
                osc.close()


def test_random_datagrams_never_stop_the_listener(base_url):
    """Hostile input: whatever arrives on the port, the server keeps answering OSC and REST."""
    port = httpx.get(f"{base_url}/v1/live-control").json()["osc"]["port"]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(10)
    osc_like = st.builds(lambda address, tail: osc_message(address) + tail,
                         st.from_regex(r"\A/latentcast/(latest|session/[0-9a-f]{0,16})(/[a-z_]{0,10}){0,3}\Z"), st.binary(max_size=40))

    @settings(max_examples=150, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
    @given(st.one_of(st.binary(max_size=200), osc_like))
    def send(data: bytes) -> None:
        sock.sendto(data, ("127.0.0.1", port))

    try:
        send()
        sock.sendto(osc_message("/latentcast/nowhere"), ("127.0.0.1", port))
        while True:  # the replies to the fuzz, then the one to the last message
            address, args = (lambda m: (m.address, m.params))(OscMessage(sock.recv(65536)))
            if address == "/latentcast/error" and args[2:] == ["/latentcast/nowhere"]:
                break
        assert httpx.get(f"{base_url}/health").status_code == 200
    finally:
        sock.close()


def test_an_osc_port_that_cannot_be_bound_stops_serve_with_one_clear_line(capsys):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        assert main(["serve", "--pipelines", "passthrough", "--osc-port", str(port)]) == 2
    assert f"cannot listen for OSC on 127.0.0.1:{port}: Address already in use" in capsys.readouterr().err
    assert main(["serve", "--pipelines", "passthrough", "--osc-port", "70000"]) == 2
    assert "--osc-port" in capsys.readouterr().err
