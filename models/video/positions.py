"""Which temporal RoPE position a frame's keys and queries get, and how stored keys move.

- `AbsolutePositions`: frame f at position f, forever (CausVid, Self-Forcing). Positions grow
  past anything the model saw in training on a long stream.
- `PeriodicReset`: frame f at f until `reset_at`, then the write position restarts at
  `reset_to` and climbs again (StreamDiffusionV2's RoPE refresh, 50 -> 5). Stored keys keep their
  rotations, so the sinks-to-current distance drops back to what training saw.
- `CacheRelative`: positions within the cache (StreamingLLM): the sinks at 0..S-1, the rolling
  frames after them in age order, the newest last; when the window slides every stored
  non-sink key moves back by one frame.
- `SinkRealign`: frames at absolute positions, but the sinks are moved to sit just before the
  oldest rolling frame (Deep Forcing's Deep Sink); only their temporal pairs rotate.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from models.video.kv_cache import CacheLayout, RowTable


class PositionPolicy(Protocol):
    def position(self, frame: int, frames_after: int, layout: CacheLayout) -> int:
        """Position of new frame `frame`, the row holding `frames_after` frames once it is in."""

    def realign(self, table: RowTable, layout: CacheLayout) -> dict[int, int]:
        """New positions of stored frame slots (slot -> position), after a write's placement."""

    def pool_shift(self, evicted_frames: int) -> int:
        """How far the importance pool's keys move when `evicted_frames` rolling frames left."""


class AbsolutePositions:
    def position(self, frame, frames_after, layout) -> int:
        return frame

    def realign(self, table, layout) -> dict[int, int]:
        return {}

    def pool_shift(self, evicted_frames) -> int:
        return 0


class PeriodicReset(AbsolutePositions):
    def __init__(self, reset_at: int = 50, reset_to: int = 5):
        if not 0 <= reset_to < reset_at:
            raise ValueError(f"need 0 <= reset_to < reset_at, got {reset_to}, {reset_at}")
        self.reset_at, self.reset_to = reset_at, reset_to

    def position(self, frame, frames_after, layout) -> int:
        if frame < self.reset_at:
            return frame
        return self.reset_to + (frame - self.reset_at) % (self.reset_at - self.reset_to)


class CacheRelative:
    def position(self, frame, frames_after, layout) -> int:
        return frames_after - 1

    def realign(self, table, layout) -> dict[int, int]:
        sinks = layout.sink_frames
        occupied = [s for s, f in enumerate(table.frame) if f >= 0]
        sink_slots = sorted((s for s in occupied if s < sinks), key=lambda s: table.frame[s])
        rolling = sorted((s for s in occupied if s >= sinks), key=lambda s: table.frame[s])
        order = sink_slots + rolling
        return {slot: rank for rank, slot in enumerate(order) if table.position[slot] != rank}

    def pool_shift(self, evicted_frames) -> int:
        return -evicted_frames


class SinkRealign(AbsolutePositions):
    def realign(self, table, layout) -> dict[int, int]:
        sinks = layout.sink_frames
        rolling = [table.position[s] for s in range(sinks, layout.capacity_frames) if table.frame[s] >= 0]
        sink_slots = sorted((s for s in range(sinks) if table.frame[s] >= 0), key=lambda s: table.frame[s])
        if not rolling or not sink_slots:
            return {}
        first = min(rolling) - len(sink_slots)
        return {slot: first + rank for rank, slot in enumerate(sink_slots) if table.position[slot] != first + rank}
