"""The streaming core's parts on their own: wire header, control parsing, holders, pacing, scheduling."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from streaming.errors import ErrorCode, StreamError
from streaming.frames import AudioChunk
from streaming.pacing import PtsPacer
from streaming.protocol import HEADER_SIZE, MediaFormat, MediaHeader, MediaKind, UpdateMessage, pack_media, parse_control, unpack_media
from streaming.slots import AudioFifo, LatestSlot


def test_header_round_trip_keeps_every_field():
    header = MediaHeader(MediaKind.VIDEO, MediaFormat.WEBP, 2**40 + 7, 12.345678, 640, 480, flags=1)
    packed = pack_media(header, b"payload")
    assert len(packed) == HEADER_SIZE + 7 and packed[:2] == b"LC"
    back, payload = unpack_media(packed)
    assert back == header and bytes(payload) == b"payload"


def test_header_without_pts_uses_nan():
    packed = MediaHeader(MediaKind.AUDIO, MediaFormat.PCM_S16LE, 3, None, 48000, 2).pack()
    assert math.isnan(np.frombuffer(packed[16:24], "<f8")[0])
    assert unpack_media(packed)[0].pts is None


@pytest.mark.parametrize("message, code", [
    (b"LC\x01", ErrorCode.BAD_HEADER),
    (b"XY" + bytes(30), ErrorCode.BAD_HEADER),
    (b"LC\x02" + bytes(29), ErrorCode.UNSUPPORTED_VERSION),
    (b"LC\x01\x07\x01" + bytes(27), ErrorCode.BAD_HEADER),
    (b"LC\x01\x01\x63" + bytes(27), ErrorCode.UNSUPPORTED_FORMAT),
])
def test_bad_headers_are_named(message, code):
    with pytest.raises(StreamError) as err:
        unpack_media(message)
    assert err.value.code is code


@pytest.mark.parametrize("text, code", [
    ("{nope", ErrorCode.BAD_JSON),
    ("[1, 2]", ErrorCode.BAD_JSON),
    ('{"type": "dance"}', ErrorCode.UNKNOWN_TYPE),
    ('{"params": {}}', ErrorCode.UNKNOWN_TYPE),
    ('{"type": "update", "params": {}}', ErrorCode.BAD_MESSAGE),
    ('{"type": "start", "slo": {"target_fps": -1}}', ErrorCode.BAD_MESSAGE),
])
def test_control_errors_have_codes(text, code):
    with pytest.raises(StreamError) as err:
        parse_control(text)
    assert err.value.code is code


def test_update_message_parses():
    message = parse_control(json.dumps({"type": "update", "request_id": "7", "params": {"prompt": "x"}}))
    assert isinstance(message, UpdateMessage) and message.params == {"prompt": "x"}


def test_latest_slot_keeps_newest_and_counts_drops():
    slot: LatestSlot[int] = LatestSlot()
    assert not slot.put(1)
    assert slot.put(2) and slot.put(3)
    assert slot.dropped == 2 and slot.take() == 3 and slot.take() is None
    slot.put_back(3)
    slot.put(4)
    slot.put_back(3)  # a newer item arrived meanwhile: the old one is not restored
    assert slot.take() == 4


def test_audio_fifo_refuses_instead_of_dropping():
    fifo = AudioFifo(max_seconds=0.1)
    chunk = lambda i: AudioChunk(np.zeros((1600, 1), np.int16), 48000, i)  # noqa: E731 - 33 ms each
    for i in range(3):
        fifo.put(chunk(i))
    with pytest.raises(StreamError) as err:
        fifo.put(chunk(3))
    assert err.value.code is ErrorCode.AUDIO_OVERFLOW and fifo.refused == 1
    assert [c.chunk_id for c in fifo.drain()] == [0, 1, 2]
    fifo.put(chunk(4))


def test_pacer_spaces_a_burst_and_never_holds_a_late_frame():
    pacer = PtsPacer(max_wait=0.05)
    assert pacer.delay(10.0, now=100.0) == 0
    wait = pacer.delay(10.033, now=100.0)  # arrived together with the previous one
    assert 0.02 < wait <= 0.033
    assert pacer.delay(10.066, now=100.2) == 0  # late: sent at once, clock re-anchored
    assert pacer.delay(5.0, now=100.2) == 0     # pts went backwards (new clip): no wait
    assert pacer.delay(None, now=100.3) == 0
