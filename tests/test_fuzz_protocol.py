"""Property-based tests (Hypothesis) of the WebSocket protocol: the binary media header and the JSON
control messages, on their own and against the real server.

Properties: every header the format allows survives pack/unpack; any bytes at all are either a
header or a `StreamError` with a documented code, never another exception; any text is either a
control message or a documented error; and a server fed such messages over a socket answers each
with a documented error code (never `internal`) and goes on serving the stream. Bounded by
`max_examples`, derandomized so that a run is repeatable.
"""

from __future__ import annotations

import json
import math
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import ClientConnection, connect

from streaming.errors import ErrorCode, StreamError
from streaming.protocol import (
    HEADER,
    MAGIC,
    MAX_JSON_DEPTH,
    MediaFormat,
    MediaHeader,
    MediaKind,
    StartMessage,
    UpdateMessage,
    json_depth,
    pack_media,
    parse_control,
    request_id_of,
    unpack_media,
)

from conftest import make_settings, serve_in_thread
from fake_pipelines import TintPipeline

UNIT = settings(max_examples=300, deadline=None, derandomize=True, database=None)
LIVE = settings(max_examples=60, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))

HEADER_CODES = {ErrorCode.BAD_HEADER, ErrorCode.UNSUPPORTED_VERSION, ErrorCode.UNSUPPORTED_FORMAT}
CONTROL_CODES = {ErrorCode.BAD_JSON, ErrorCode.UNKNOWN_TYPE, ErrorCode.BAD_MESSAGE}
# What the server may answer a media message with, and a control message on a started stream.
MEDIA_ANSWERS = HEADER_CODES | {ErrorCode.FRAME_TOO_LARGE, ErrorCode.MESSAGE_TOO_LARGE, ErrorCode.BAD_IMAGE,
                                ErrorCode.AUDIO_OVERFLOW, ErrorCode.INPUT_REJECTED}
CONTROL_ANSWERS = CONTROL_CODES | {ErrorCode.MESSAGE_TOO_LARGE, ErrorCode.BAD_PARAMS, ErrorCode.ALREADY_STARTED}

u8, u16 = st.integers(0, 2**8 - 1), st.integers(0, 2**16 - 1)
u32, u64 = st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1)

headers = st.builds(MediaHeader, st.sampled_from(MediaKind), st.sampled_from(MediaFormat), u64,
                    st.none() | st.floats(allow_nan=False), u32, u32, u8)


@UNIT
@given(header=headers, payload=st.binary(max_size=64))
def test_every_header_survives_pack_and_unpack(header, payload):
    back, rest = unpack_media(pack_media(header, payload))
    assert back == header and bytes(rest) == payload


def raw_headers() -> st.SearchStrategy[bytes]:
    """Headers with any value in every field, mostly with the right magic and version so that the
    later fields are read too."""
    return st.builds(lambda magic, version, kind, fmt, flags, reserved, frame_id, pts, width, height:
                     HEADER.pack(magic, version, kind, fmt, flags, reserved, frame_id, pts, width, height),
                     st.just(MAGIC) | st.binary(min_size=2, max_size=2), st.just(1) | u8, u8, u8, u8, u16, u64,
                     st.floats(allow_nan=True, allow_infinity=True), u32, u32)


@UNIT
@given(message=st.binary(max_size=80) | st.builds(bytes.__add__, raw_headers(), st.binary(max_size=16)))
def test_any_bytes_are_a_header_or_a_documented_error(message):
    try:
        header, payload = unpack_media(message)
    except StreamError as err:
        assert err.code in HEADER_CODES and err.message
        return
    assert header.kind in MediaKind and header.format in MediaFormat and len(payload) == len(message) - HEADER.size
    assert header.pts is None or not math.isnan(header.pts)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
                           lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
                           max_leaves=20)
# Objects shaped like control messages: a known type (mostly), then fields of any name and value.
message_like = st.fixed_dictionaries(
    {"type": st.sampled_from(["start", "update", "stats", "stop"]) | st.text(max_size=8)},
    optional={"request_id": st.text(max_size=8) | json_values, "params": st.dictionaries(st.text(max_size=8), json_values, max_size=3),
              "slo": st.dictionaries(st.sampled_from(["target_fps", "latency_budget_ms", "degrade", "x"]), json_values, max_size=3),
              "version": json_values, "queue": json_values, "output": json_values, "pipeline": json_values,
              "session_id": json_values, "extra": json_values})


@UNIT
@given(text=st.text(max_size=60) | json_values.map(json.dumps) | message_like.map(json.dumps))
def test_any_text_is_a_control_message_or_a_documented_error(text):
    request_id_of(text)  # never raises: it names the request an error answers
    try:
        message = parse_control(text)
    except StreamError as err:
        assert err.code in CONTROL_CODES and err.message
        return
    assert message.type in ("start", "update", "stats", "stop")


@UNIT
@given(depth=st.integers(0, 3 * MAX_JSON_DEPTH), array=st.booleans())
def test_nesting_deeper_than_the_limit_is_bad_json_and_never_a_recursion_error(depth, array):
    value = "0"
    for _ in range(depth):
        value = f"[{value}]" if array else f'{{"k": {value}}}'
    text = '{"type": "update", "request_id": "r", "params": {"p": ' + value + "}}"
    assert json_depth(text) == depth + 2
    if depth + 2 > MAX_JSON_DEPTH:
        with pytest.raises(StreamError) as err:
            parse_control(text)
        assert err.value.code is ErrorCode.BAD_JSON
    else:
        assert isinstance(parse_control(text), UpdateMessage)


@UNIT
@given(request_id=st.text(min_size=1, max_size=200), prompt=st.text(max_size=30),
       fps=st.floats(min_value=0, max_value=240, exclude_min=True))
def test_valid_messages_parse_to_what_was_sent(request_id, prompt, fps):
    update = parse_control(json.dumps({"type": "update", "request_id": request_id, "params": {"prompt": prompt},
                                       "slo": {"target_fps": fps}}))
    assert isinstance(update, UpdateMessage) and update.request_id == request_id
    assert update.params == {"prompt": prompt} and update.slo.target_fps == fps
    start = parse_control(json.dumps({"type": "start", "request_id": request_id, "params": {"prompt": prompt}}))
    assert isinstance(start, StartMessage) and start.params == {"prompt": prompt}


# --- against the server --------------------------------------------------------------------------


LIMITS = {"max_frame_width": 256, "max_frame_height": 256, "max_message_bytes": 64 * 1024, "max_control_bytes": 2048}


@pytest.fixture(scope="module")
def stream_url():
    with serve_in_thread(make_settings(**LIMITS), lambda: {"tint": TintPipeline()}) as url:
        yield url.replace("http://", "ws://") + "/v1/stream"


class Stream:
    """A started stream on a synchronous socket: send anything, then see every error it caused."""

    def __init__(self, socket: ClientConnection):
        self.socket = socket
        assert json.loads(self.socket.recv(10))["type"] == "hello"
        self.socket.send(json.dumps({"type": "start", "request_id": "s", "pipeline": "tint", "output": {"format": "rgb24"}}))
        self.errors: list[dict] = []
        self.until("started", "s")
        self.probes = 0

    def until(self, kind: str, request_id: str) -> dict:
        while True:
            message = self.socket.recv(10)
            if isinstance(message, bytes):
                continue
            body = json.loads(message)
            if body["type"] == "error":
                self.errors.append(body)
            if body["type"] == kind and body.get("request_id") == request_id:
                return body

    def answered(self, message: bytes | str) -> list[dict]:
        """Send `message`, then a stats request: the errors seen until its answer."""
        self.errors = []
        self.socket.send(message)
        self.probes += 1
        probe = f"probe{self.probes}"
        self.socket.send(json.dumps({"type": "stats", "request_id": probe}))
        self.until("stats", probe)
        return self.errors

    def still_serving(self) -> None:
        """The stream, set back to stepping on its input at the default SLO, turns a frame around."""
        self.socket.send(json.dumps({"type": "update", "request_id": "reset", "params": {"mode": "img2img"}, "slo": {}}))
        self.until("ack", "reset")
        image = np.arange(16 * 16 * 3, dtype=np.uint8).reshape(16, 16, 3)
        self.socket.send(pack_media(MediaHeader(MediaKind.VIDEO, MediaFormat.RGB24, 424242, 1.0, 16, 16), image.tobytes()))
        while True:
            message = self.socket.recv(10)
            if isinstance(message, bytes) and struct.unpack_from("<Q", message, 8)[0] == 424242:
                return


@pytest.fixture(scope="module")
def stream(stream_url):
    with connect(stream_url, max_size=2**22) as socket:
        connection = Stream(socket)
        yield connection
        connection.still_serving()


@LIVE
@given(message=st.builds(bytes.__add__, raw_headers(), st.binary(max_size=64)) | st.binary(max_size=48))
def test_the_server_answers_any_media_message_with_a_documented_error(stream, message):
    for error in stream.answered(message):
        assert ErrorCode(error["code"]) in MEDIA_ANSWERS, error


@LIVE
@given(text=message_like.filter(lambda m: m["type"] != "stop").map(json.dumps) | st.text(max_size=40))
def test_the_server_answers_any_control_text_with_a_documented_error(stream, text):
    for error in stream.answered(text):
        assert ErrorCode(error["code"]) in CONTROL_ANSWERS, error
