"""Release a received video frame as soon as its last packet is in.

aiortc's jitter buffer hands a video frame to the decoder only when a packet of the *next*
frame arrives: it ignores the RTP marker bit, which senders set on each frame's last packet.
Every received frame so waits one frame interval (33 ms at 30 fps) for nothing. With this, a run
of contiguous packets from the buffer's start that share one timestamp and end with the marker
goes out at once. Anything else (a gap, the marker not yet in) is left to aiortc's own rule, so
loss, reordering and retransmission are handled exactly as before.
"""

from __future__ import annotations

from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtp import RtpPacket

_stock_remove_frame = JitterBuffer._remove_frame


def _remove_frame(self: JitterBuffer, sequence_number: int) -> JitterFrame | None:
    frame = _stock_remove_frame(self, sequence_number)
    if frame is not None or not self._is_video or self._origin is None:
        return frame
    packets: list[RtpPacket] = []
    for count in range(self._capacity):
        packet = self._packets[(self._origin + count) % self._capacity]
        if packet is None or (packets and packet.timestamp != packets[0].timestamp):
            return None
        packets.append(packet)
        if packet.marker:
            self.remove(count + 1)
            # _data: the depayloaded bytes aiortc's receiver sets on each packet (not declared on RtpPacket)
            return JitterFrame(data=b"".join(p._data for p in packets), timestamp=packet.timestamp)  # type: ignore[attr-defined]
    return None


def release_frames_on_marker() -> None:
    """Install the marker rule for every aiortc video receiver in this process."""
    JitterBuffer._remove_frame = _remove_frame  # type: ignore[method-assign]  # patching aiortc's class is the point


def stock_release() -> None:
    """Back to aiortc's own rule (for comparisons)."""
    JitterBuffer._remove_frame = _stock_remove_frame  # type: ignore[method-assign]  # restoring the stock method
