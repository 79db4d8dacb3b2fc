"""MIDI control through the mapping file: control changes and notes sent over a real mido transport (MIDI over
TCP, `mido.sockets`) to the real server change the latest session's parameters with the right scaling; a
note sets its values or flips its boolean; a bad mapping file or port stops `serve` with one clear line.

The machine's own MIDI system (rtmidi, ALSA on Linux) needs /dev/snd/seq: its test skips where that is
missing, and the TCP tests cover the same mapping path."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import mido
import mido.sockets
import numpy as np
import pytest
from pydantic import Field

from app.cli import main
from streaming.client import StreamClient
from streaming.errors import StreamError
from streaming.remote_control import param_schema, scale_to_param

from conftest import make_settings, serve_in_thread
from fake_pipelines import TintParams, TintPipeline, prompt_color
from media import moving_picture

ALSA_SEQUENCER = Path("/dev/snd/seq")
EXAMPLE_MAP = Path(__file__).parent.parent / "examples" / "midi-map.toml"

MAPPING = """
[[cc]]
control = 1
param = "strength"

[[cc]]
control = 7
channel = 2
param = "width"

[[cc]]
control = 8
param = "strength"
min = 0.9
max = 0.1

[[note]]
note = 60
set = { prompt = "lamp", strength = 1.0 }

[[note]]
note = 62
toggle = "mirror"
"""


class SwitchParams(TintParams):
    mirror: bool = Field(False, json_schema_extra={"update": "hot"})
    gain: float = Field(1.0, ge=0.0, json_schema_extra={"update": "hot"})  # no maximum: a knob needs the mapping's


class SwitchTintPipeline(TintPipeline):
    """TintPipeline with a boolean parameter for a note to toggle."""

    params_model = SwitchParams


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    mapping = tmp_path_factory.mktemp("midi") / "map.toml"
    mapping.write_text(MAPPING)
    with serve_in_thread(make_settings(midi_port="tcp:127.0.0.1:0", midi_map=mapping, stats_interval_s=0.3),
                         lambda: {"switch": SwitchTintPipeline()}) as url:
        midi = httpx.get(f"{url}/v1/live-control").json()["midi"]
        host, port = midi["port"].removeprefix("tcp:").rsplit(":", 1)
        yield url, host, int(port)


@pytest.fixture
def controller(server):
    _, host, port = server
    port = mido.sockets.connect(host, port)
    yield port
    port.close()


async def wait_for_params(client: StreamClient, check, timeout: float = 10.0) -> dict:
    """The parameters in force once `check` holds on them (polled through the stream's own stats)."""
    deadline = time.monotonic() + timeout
    while True:
        params = (await client.stats())["params"]
        if check(params) or time.monotonic() > deadline:
            return params
        await asyncio.sleep(0.05)


def test_the_server_reports_its_midi_input(server):
    url, host, port = server
    assert httpx.get(f"{url}/v1/live-control").json()["midi"] == {"port": f"tcp:{host}:{port}", "cc_mappings": 3, "note_mappings": 2}


async def test_a_control_change_drives_its_parameter_across_the_schemas_range(server, controller):
    async with await StreamClient.connect(server[0]) as client:
        await client.start("switch", {"strength": 0.5, "width": 64})
        controller.send(mido.Message("control_change", channel=0, control=1, value=127))
        assert (await wait_for_params(client, lambda p: p["strength"] == 1.0))["strength"] == 1.0
        controller.send(mido.Message("control_change", channel=0, control=1, value=0))
        assert (await wait_for_params(client, lambda p: p["strength"] == 0.0))["strength"] == 0.0
        controller.send(mido.Message("control_change", channel=5, control=1, value=32))  # any channel
        assert (await wait_for_params(client, lambda p: p["strength"] != 0.0))["strength"] == pytest.approx(32 / 127)

        # width: 16..512 in the schema, on channel 2 only.
        controller.send(mido.Message("control_change", channel=0, control=7, value=127))   # channel 1: not mapped
        controller.send(mido.Message("control_change", channel=1, control=7, value=64))    # channel 2
        params = await wait_for_params(client, lambda p: p["width"] != 64)
        assert params["width"] == round(16 + 496 * 64 / 127)

        # A range of the mapping's own, turned round (min above max).
        controller.send(mido.Message("control_change", channel=0, control=8, value=0))
        assert (await wait_for_params(client, lambda p: p["strength"] == 0.9))["strength"] == pytest.approx(0.9)


async def test_notes_set_their_values_and_toggle_their_boolean(server, controller):
    async with await StreamClient.connect(server[0]) as client:
        await client.start("switch", {"prompt": "owl", "strength": 0.2}, output_format="rgb24")
        controller.send(mido.Message("note_on", note=60, velocity=0))  # a note-off in disguise: nothing
        controller.send(mido.Message("note_on", note=61, velocity=100))  # not mapped: nothing
        controller.send(mido.Message("note_on", note=60, velocity=90))
        params = await wait_for_params(client, lambda p: p["prompt"] == "lamp")
        assert (params["prompt"], params["strength"]) == ("lamp", 1.0)
        await client.send_frame(moving_picture(0, 32, 32), format="rgb24")
        frame = await client.receive_frame()
        assert np.allclose(frame.image.reshape(-1, 3).mean(0), prompt_color("lamp"), atol=1)

        controller.send(mido.Message("note_on", note=62, velocity=100))
        assert (await wait_for_params(client, lambda p: p["mirror"]))["mirror"] is True
        # Two quick presses are two flips (presses are never coalesced as a fader's values are): back where it was.
        controller.send(mido.Message("note_on", note=62, velocity=100))
        controller.send(mido.Message("note_on", note=62, velocity=100))
        controller.send(mido.Message("control_change", control=1, value=0))  # a marker after the presses
        params = await wait_for_params(client, lambda p: p["strength"] == 0.0)
        assert params["mirror"] is True


async def test_midi_drives_the_latest_session(server, controller):
    async with await StreamClient.connect(server[0]) as first, await StreamClient.connect(server[0]) as second:
        await first.start("switch", {"strength": 0.5})
        await second.start("switch", {"strength": 0.5})
        controller.send(mido.Message("control_change", control=1, value=0))
        assert (await wait_for_params(second, lambda p: p["strength"] == 0.0))["strength"] == 0.0
        assert (await first.stats())["params"]["strength"] == 0.5


def test_scaling_follows_the_schema():
    schema = SwitchParams
    assert scale_to_param(param_schema(schema, "width"), "width", 0.0) == 16
    assert scale_to_param(param_schema(schema, "width"), "width", 1.0) == 512
    assert scale_to_param(param_schema(schema, "mode"), "mode", 0.49) == "img2img"
    assert scale_to_param(param_schema(schema, "mode"), "mode", 0.5) == "txt2img"
    assert scale_to_param(param_schema(schema, "mirror"), "mirror", 64 / 127) is True
    assert scale_to_param(param_schema(schema, "mirror"), "mirror", 63 / 127) is False
    # stream-diffusion's shapes: a multiple of 8, and a nullable number whose low end is excluded.
    from pipelines.stream_diffusion.params import StreamDiffusionParams

    width = param_schema(StreamDiffusionParams, "width")
    assert [scale_to_param(width, "width", p) for p in (0.0, 0.5, 1.0)] == [64, 1056, 2048]
    strength = param_schema(StreamDiffusionParams, "strength")
    lowest = scale_to_param(strength, "strength", 0.0)
    assert 0 < lowest < 0.01 and scale_to_param(strength, "strength", 1.0) == 1.0
    StreamDiffusionParams(strength=lowest)  # in range: the schema accepts it
    with pytest.raises(StreamError, match="no range"):
        scale_to_param(param_schema(StreamDiffusionParams, "prompt"), "prompt", 0.5)
    with pytest.raises(StreamError, match="no maximum"):
        scale_to_param(param_schema(schema, "gain"), "gain", 0.5)
    assert scale_to_param(param_schema(schema, "gain"), "gain", 0.5, 0.0, 4.0) == 2.0


def test_the_example_mapping_file_is_valid():
    from app.live_control.mapping import load_midi_map

    mapping = load_midi_map(EXAMPLE_MAP)
    assert mapping.cc and mapping.note


@pytest.mark.parametrize("text, says", [
    ("[[cc]\ncontrol = 1", "is not valid TOML"),
    ("[[cc]]\ncontrol = 200\nparam = 'strength'", "cc.0.control: Input should be less than or equal to 127"),
    ("[[cc]]\ncontrol = 1", "cc.0.param: Field required"),
    ("[[note]]\nnote = 60\nset = { prompt = 'a' }\ntoggle = 'mirror'", "give either `set`"),
    ("[[cc]]\ncontrol = 1\nparam = 'a'\n[[cc]]\ncontrol = 1\nchannel = 3\nparam = 'b'", "control change 1 is mapped twice on any channel"),
    ("[[knob]]\ncontrol = 1", "knob: Extra inputs are not permitted"),
    ("", "the file maps nothing"),
])
def test_a_bad_mapping_file_stops_serve_with_one_clear_line(tmp_path, capsys, text, says):
    mapping = tmp_path / "map.toml"
    mapping.write_text(text)
    assert main(["serve", "--pipelines", "passthrough", "--midi-port", "tcp:127.0.0.1:0", "--midi-map", str(mapping)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(mapping) in err and says in err, err


@pytest.mark.parametrize("args, says", [
    (["--midi-port", "tcp:127.0.0.1:0"], "--midi-port needs --midi-map"),
    (["--midi-map", "map.toml"], "--midi-map needs --midi-port"),
    (["--midi-port", "tcp:nowhere", "--midi-map", "map.toml"], "write tcp:HOST:PORT"),
    (["--midi-port", "tcp:127.0.0.1:0", "--midi-map", "missing.toml"], "cannot read the MIDI mapping file missing.toml"),
])
def test_a_midi_input_that_cannot_start_stops_serve(tmp_path, capsys, monkeypatch, args, says):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "map.toml").write_text(EXAMPLE_MAP.read_text())
    assert main(["serve", "--pipelines", "passthrough", *args]) == 2
    assert says in capsys.readouterr().err


# The two tests below are each other's complement: exactly one runs on any machine (the refusal
# where there is no ALSA sequencer, as here and in CI; the real virtual port where there is one).
@pytest.mark.skipif(ALSA_SEQUENCER.exists(), reason="this machine has an ALSA sequencer")
def test_without_a_midi_system_a_named_port_is_refused_with_the_reason(tmp_path, capsys):
    (tmp_path / "map.toml").write_text(EXAMPLE_MAP.read_text())
    assert main(["serve", "--pipelines", "passthrough", "--midi-port", "virtual:latentcast", "--midi-map", str(tmp_path / "map.toml")]) == 2
    assert "/dev/snd/seq is missing" in capsys.readouterr().err


@pytest.mark.skipif(not ALSA_SEQUENCER.exists(), reason="needs the ALSA sequencer (/dev/snd/seq is missing here); "
                    "the MIDI-over-TCP tests cover the same mapping")
async def test_a_control_change_through_a_virtual_alsa_port(tmp_path):
    mapping = tmp_path / "map.toml"
    mapping.write_text(MAPPING)
    with serve_in_thread(make_settings(midi_port="virtual:latentcast-test", midi_map=mapping), lambda: {"switch": SwitchTintPipeline()}) as url:
        async with await StreamClient.connect(url) as client:
            await client.start("switch", {"strength": 0.5})
            with mido.open_output(next(name for name in mido.get_output_names() if "latentcast-test" in name)) as out:
                out.send(mido.Message("control_change", control=1, value=127))
                assert (await wait_for_params(client, lambda p: p["strength"] == 1.0))["strength"] == 1.0
