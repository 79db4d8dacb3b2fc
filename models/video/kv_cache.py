"""A preallocated, per-layer KV cache of sink frames plus a rolling window, for several rows.

Layout: for every layer, keys and values of shape (rows, heads, tokens, head_dim), where tokens =
(sink_frames + window_frames) * frame_tokens + pool_tokens. A row is one independent sequence
(one stream-batch slot); frame slots are written in place, so a new frame never reallocates or
shifts the cache: when the cache is full it overwrites the slot the eviction policy names (a ring
over the rolling slots for FIFO). Attention needs no order, so slot order never matters.

Keys are stored already rotated (RoPE) with the temporal position of every frame slot recorded.
A position policy may move stored keys to other positions: rotations compose, so rotating a
stored key by Δ on the temporal pairs is the same as having rotated it at position + Δ.

One write of new frames into some rows runs in two phases, because the placement may depend on
the new keys (adaptive sink refresh reads them at the first layer):
  plan = cache.begin_write(rows, frames)     # positions of the new frames, before any layer
  per layer: out = cache.attend(layer, plan, q, k, v)   # place (first layer), evict, rotate,
                                                        # write, then attend over the cache
Every layer keeps the same frames in the same slots (one position table per row); only the
importance pool keeps different tokens per layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from models.video.eviction import EvictionPolicy, FifoEviction
from models.video.positions import AbsolutePositions, PositionPolicy
from models.video.rope import Rope3D, apply_rotary

EMPTY = -1


@dataclass(frozen=True)
class CacheLayout:
    """The shape of one cache: how many layers, heads, tokens per frame, sinks and window."""

    layers: int
    heads: int
    head_dim: int
    frame_tokens: int
    sink_frames: int
    window_frames: int
    pool_tokens: int = 0

    def __post_init__(self):
        if self.sink_frames < 0 or self.window_frames < 1:
            raise ValueError(f"need sink_frames >= 0 and window_frames >= 1, got {self.sink_frames}, {self.window_frames}")

    @property
    def capacity_frames(self) -> int:
        return self.sink_frames + self.window_frames

    @property
    def tokens(self) -> int:
        return self.capacity_frames * self.frame_tokens + self.pool_tokens

    def bytes_per_row(self, dtype: torch.dtype) -> int:
        """Memory of one row's keys and values over all layers."""
        return 2 * self.layers * self.heads * self.tokens * self.head_dim * torch.empty((), dtype=dtype).element_size()


@dataclass
class LayerBlock:
    """Consecutive layers of a cache, everything per layer: keys, values and the pool's
    bookkeeping. What moves between processes when a stage's layers change hands."""

    k: torch.Tensor              # (layers, rows, heads, tokens, head_dim)
    v: torch.Tensor
    pool_frame: torch.Tensor     # (layers, rows, pool_tokens)
    pool_position: torch.Tensor

    @property
    def layers(self) -> int:
        return self.k.shape[0]


@dataclass
class RowTable:
    """Which frame sits in each frame slot of one row, and at which temporal position."""

    frame: list[int]
    position: list[int]
    pool_filled: int = 0

    def occupied(self) -> list[int]:
        return [s for s, f in enumerate(self.frame) if f != EMPTY]

    def slot_of(self, frame: int) -> int | None:
        return self.frame.index(frame) if frame in self.frame else None


@dataclass
class Evicted:
    """A rolling frame that a new frame pushed out: where it was, which frame, at which position."""

    slot: int
    frame: int
    position: int


@dataclass
class RowWrite:
    """What one row does in a write: its new frames, their positions and (after placement)
    their slots, the frames evicted to make room, and the rotations of the keys it keeps."""

    row: int
    frames: list[int]
    positions: list[int]
    slots: list[int] = field(default_factory=list)
    evicted: list[Evicted] = field(default_factory=list)
    pool_before: int = 0
    token_delta: torch.Tensor | None = None  # (tokens,) temporal shift per stored key, None if none
    pool_shift: int = 0


@dataclass
class WritePlan:
    rows: range
    writes: list[RowWrite]
    placed: bool = False
    mask: torch.Tensor | None = None  # (rows, 1, 1, tokens) keys to attend to; None: all of them

    @property
    def positions(self) -> torch.Tensor:
        """(rows, frames) temporal positions of the new frames: the rotary angles of q and k."""
        return torch.tensor([w.positions for w in self.writes], dtype=torch.long)


class RollingKVCache:
    def __init__(
        self,
        layout: CacheLayout,
        rows: int,
        rope: Rope3D,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        eviction: EvictionPolicy | None = None,
        positions: PositionPolicy | None = None,
    ):
        self.layout = layout
        self.rows = rows
        self.rope = rope
        self.eviction = eviction or FifoEviction()
        self.positions = positions or AbsolutePositions()
        if self.eviction.pool_tokens != layout.pool_tokens:
            raise ValueError(f"the layout has {layout.pool_tokens} pool tokens but the eviction policy keeps {self.eviction.pool_tokens}")
        shape = (layout.layers, rows, layout.heads, layout.tokens, layout.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.tables = [RowTable([EMPTY] * layout.capacity_frames, [0] * layout.capacity_frames) for _ in range(rows)]
        # Per layer and row: which frame each pool token came from and its position (importance policy).
        pool = (layout.layers, rows, layout.pool_tokens)
        self.pool_frame = torch.full(pool, EMPTY, dtype=torch.long)
        self.pool_position = torch.zeros(pool, dtype=torch.long)

    @property
    def device(self) -> torch.device:
        return self.k.device

    def frame_tokens(self, slot: int) -> slice:
        n = self.layout.frame_tokens
        return slice(slot * n, (slot + 1) * n)

    @property
    def pool_start(self) -> int:
        return self.layout.capacity_frames * self.layout.frame_tokens

    def cached_frames(self, row: int) -> list[int]:
        """The frames this row holds, oldest first."""
        return sorted(f for f in self.tables[row].frame if f != EMPTY)

    # ---- layer ownership (one stage of a forward split across processes) ---------------------

    def layer_block(self, start: int, stop: int) -> LayerBlock:
        """Layers [start, stop) of this cache (its own indices), as views."""
        return LayerBlock(self.k[start:stop], self.v[start:stop], self.pool_frame[start:stop], self.pool_position[start:stop])

    def empty_block(self, layers: int) -> LayerBlock:
        """`layers` layers that hold nothing yet (the frame tables say what is valid)."""
        k = self.k.new_zeros((layers, *self.k.shape[1:]))
        frame = self.pool_frame.new_full((layers, *self.pool_frame.shape[1:]), EMPTY)
        return LayerBlock(k, k.clone(), frame, self.pool_position.new_zeros(frame.shape))

    def set_layers(self, blocks: list[LayerBlock]) -> None:
        """Hold exactly `blocks`, in order: a stage's new layer range. The frame tables are shared
        by every layer, so they stay as they are."""
        self.k = torch.cat([b.k.to(self.device, self.k.dtype) for b in blocks])
        self.v = torch.cat([b.v.to(self.device, self.v.dtype) for b in blocks])
        self.pool_frame = torch.cat([b.pool_frame.cpu() for b in blocks])
        self.pool_position = torch.cat([b.pool_position.cpu() for b in blocks])
        self.layout = replace(self.layout, layers=self.k.shape[0])

    def follow(self, plan: WritePlan) -> None:
        """Place a write without attending: a stage that holds none of the layers keeps its frame
        tables in step with the stages that do."""
        if not plan.placed:
            frames = len(plan.writes[0].frames)
            shape = (len(plan.writes), self.layout.heads, frames * self.layout.frame_tokens, self.layout.head_dim)
            zeros = torch.zeros(shape, device=self.device, dtype=self.k.dtype)
            self._place(plan, zeros, zeros)

    # ---- writing ------------------------------------------------------------------------------

    def begin_write(self, rows: range, frames: list[list[int]]) -> WritePlan:
        """Plan writing `frames[i]` (increasing frame indices) into row rows[i]. A frame the row
        already holds is written again in its own slot at its own position (several denoising
        steps of one frame); a new frame gets its position from the position policy."""
        writes = []
        for row, row_frames in zip(rows, frames):
            table = self.tables[row]
            new = [f for f in row_frames if table.slot_of(f) is None]
            after = min(len(table.occupied()) + len(new), self.layout.capacity_frames)
            positions = []
            for f in row_frames:
                slot = table.slot_of(f)
                positions.append(table.position[slot] if slot is not None else self.positions.position(f, after, self.layout))
            writes.append(RowWrite(row, list(row_frames), positions))
        return WritePlan(rows, writes)

    def _place(self, plan: WritePlan, k_new: torch.Tensor, v_new: torch.Tensor) -> None:
        """Choose the slot of every new frame (first layer only), update the tables and work out
        which stored keys the position policy moves."""
        layout = self.layout
        for i, w in enumerate(plan.writes):
            table = self.tables[w.row]
            for j, (frame, position) in enumerate(zip(w.frames, w.positions)):
                slot = table.slot_of(frame)
                if slot is None:
                    tokens = self.frame_tokens(j)
                    slot = self.eviction.choose_slot(self, w.row, k_new[i, :, tokens], v_new[i, :, tokens], len(w.frames))
                    if table.frame[slot] != EMPTY and slot >= layout.sink_frames:
                        w.evicted.append(Evicted(slot, table.frame[slot], table.position[slot]))
                    table.frame[slot], table.position[slot] = frame, position
                w.slots.append(slot)
            # Stored frames the position policy moves; the new frames are written where planned.
            delta = torch.zeros(layout.tokens, dtype=torch.long)
            for slot, target in self.positions.realign(table, layout).items():
                if slot not in w.slots:
                    delta[self.frame_tokens(slot)] = target - table.position[slot]
                    table.position[slot] = target
            w.pool_before = table.pool_filled
            if layout.pool_tokens:
                w.pool_shift = self.positions.pool_shift(len(w.evicted))
                delta[self.pool_start :] = w.pool_shift
                table.pool_filled = min(layout.pool_tokens, w.pool_before + len(w.evicted) * layout.frame_tokens)
            w.token_delta = delta if bool(delta.any()) else None
        plan.mask = self._valid_mask(plan.rows)
        plan.placed = True

    def _write(self, layer: int, plan: WritePlan, q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor) -> None:
        k, v = self.k[layer], self.v[layer]
        for i, w in enumerate(plan.writes):
            if w.evicted and self.layout.pool_tokens:
                self.eviction.keep_evicted(self, layer, w.row, w.evicted, w.pool_before, q[i])
            if w.token_delta is not None:
                moved = w.token_delta.nonzero().squeeze(1)
                cos, sin = self.rope.temporal_cos_sin(w.token_delta[moved], self.device)
                index = moved.to(self.device)
                k[w.row][:, index] = apply_rotary(k[w.row][:, index], cos, sin)
                self.pool_position[layer, w.row] += w.pool_shift
            for j, slot in enumerate(w.slots):
                src, dst = self.frame_tokens(j), self.frame_tokens(slot)
                k[w.row, :, dst] = k_new[i, :, src]
                v[w.row, :, dst] = v_new[i, :, src]

    def _valid_mask(self, rows: range) -> torch.Tensor | None:
        n, layout = self.layout.frame_tokens, self.layout
        masks = []
        for row in rows:
            table = self.tables[row]
            frames = torch.tensor([f != EMPTY for f in table.frame]).repeat_interleave(n)
            pool = torch.arange(layout.pool_tokens) < table.pool_filled
            masks.append(torch.cat([frames, pool]))
        mask = torch.stack(masks)
        if bool(mask.all()):
            return None
        return mask[:, None, None, :].to(self.device)

    def attend(self, layer: int, plan: WritePlan, q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor) -> torch.Tensor:
        """Write the new frames' keys and values (rows, heads, frames*frame_tokens, head_dim) of
        this layer, then attend with q over everything the rows hold, the new frames included."""
        if not plan.placed:
            self._place(plan, k_new, v_new)
        self._write(layer, plan, q, k_new, v_new)
        rows = slice(plan.rows.start, plan.rows.stop)
        return F.scaled_dot_product_attention(q, self.k[layer, rows], self.v[layer, rows], attn_mask=plan.mask)
