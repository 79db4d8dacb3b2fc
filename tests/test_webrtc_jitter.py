"""The marker-bit release of received video frames: a complete frame leaves at its last packet;
with loss, reordering or a missing marker the buffer behaves exactly like aiortc's own."""

from __future__ import annotations

import random

import pytest
from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtp import RtpPacket

from streaming.webrtc.jitter import release_frames_on_marker, stock_release

PACKETS_PER_FRAME = 3


def packet(frame: int, part: int) -> RtpPacket:
    p = RtpPacket(sequence_number=(frame * PACKETS_PER_FRAME + part) % 65536, timestamp=frame * 3000,
                  marker=int(part == PACKETS_PER_FRAME - 1))
    p._data = bytes([frame % 256, part])
    return p


def feed(packets: list[RtpPacket], marker: bool) -> list[tuple[int, int, bytes]]:
    """(index of the packet whose arrival released it, timestamp, data) per frame released."""
    release_frames_on_marker() if marker else stock_release()
    try:
        buffer = JitterBuffer(capacity=128, is_video=True)
        released = []
        for index, p in enumerate(packets):
            _, frame = buffer.add(p)
            if frame is not None:
                released.append((index, frame.timestamp, frame.data))
        return released
    finally:
        release_frames_on_marker()


@pytest.fixture(autouse=True, scope="module")
def restore():
    yield
    stock_release()


def test_a_complete_frame_leaves_with_its_last_packet():
    packets = [packet(f, part) for f in range(5) for part in range(PACKETS_PER_FRAME)]
    early, stock = feed(packets, True), feed(packets, False)
    assert [i for i, _, _ in early] == [2, 5, 8, 11, 14]        # at each frame's marker
    assert [i for i, _, _ in stock] == [3, 6, 9, 12]            # one packet of the next frame later
    assert [d for _, _, d in early][:4] == [d for _, _, d in stock]


def test_loss_reordering_and_missing_markers_never_give_a_broken_frame_or_a_later_one():
    rng = random.Random(7)
    for _ in range(50):
        packets = [packet(f, part) for f in range(30) for part in range(PACKETS_PER_FRAME)]
        packets = [p for p in packets if rng.random() > 0.1]        # lost
        for i in range(len(packets) - 1):                           # reordered neighbours
            if rng.random() < 0.1:
                packets[i], packets[i + 1] = packets[i + 1], packets[i]
        for p in packets:                                           # marker not set
            if p.marker and rng.random() < 0.1:
                p.marker = 0
        early, stock = feed(packets, True), feed(packets, False)
        stock_frames = {t: (i, d) for i, t, d in stock}
        for position, (index, timestamp, data) in enumerate(early):
            if timestamp in stock_frames:
                stock_index, stock_data = stock_frames[timestamp]
                assert index <= stock_index and data == stock_data
            elif position > 0:
                # Released where stock would still wait (on a later gap): only ever a whole
                # frame. The first may lack what came before the first packet received,
                # exactly as stock would hand it over.
                frame = timestamp // 3000
                assert data == b"".join(bytes([frame % 256, part]) for part in range(PACKETS_PER_FRAME))
