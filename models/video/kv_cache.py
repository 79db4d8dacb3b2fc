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

Two ways of writing that StreamDiffusionV2's loops need (docs/video.md):
- `mirror`: a write into one row is also made, identically, into other rows that hold the same
  (its `prepare` runs a stream's first chunk on one cache, then copies it to every stream-batch
  row). Every layer, and every stage of a split forward, mirrors its own keys.
- `step_copy`: a frame the row holds, written again once the row is full, goes to a second slot
  (its step copy, taken from the eviction policy like a new frame), and the next new frame takes
  that slot first. That is where `inference_wo_batch` writes a chunk's later steps: its ring
  queue is popped only every `steps` writes, so those steps land one ring slot further on.
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
    copy_slot: int | None = None
    """The slot holding a second, later-step copy of a frame (`step_copy` writes), if any."""

    def occupied(self) -> list[int]:
        return [s for s, f in enumerate(self.frame) if f != EMPTY]

    @property
    def full(self) -> bool:
        return EMPTY not in self.frame

    def slot_of(self, frame: int) -> int | None:
        """The frame's own slot (not its step copy)."""
        return next((s for s, f in enumerate(self.frame) if f == frame and s != self.copy_slot), None)


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
    mirror: range = range(0)
    """Rows that take the same write as the plan's one row (they hold what it holds)."""
    step_copy: bool = False
    """A frame the row holds is written, once the row is full, into its step copy's slot."""
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
        """The frames this row holds, oldest first (a step copy is not counted twice)."""
        table = self.tables[row]
        return sorted(f for s, f in enumerate(table.frame) if f != EMPTY and s != table.copy_slot)

    def copy_row(self, source: int, target: int) -> None:
        """Make row `target` hold exactly what row `source` holds: keys, values, tables, pool."""
        self.k[:, target] = self.k[:, source]
        self.v[:, target] = self.v[:, source]
        self.pool_frame[:, target] = self.pool_frame[:, source]
        self.pool_position[:, target] = self.pool_position[:, source]
        self.tables[target] = replace(self.tables[source], frame=list(self.tables[source].frame),
                                      position=list(self.tables[source].position))

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

    def begin_write(self, rows: range, frames: list[list[int]], mirror: range = range(0), step_copy: bool = False) -> WritePlan:
        """Plan writing `frames[i]` (increasing frame indices) into row rows[i]. A frame the row
        already holds is written again in its own slot at its own position (several denoising
        steps of one frame), or with `step_copy`, once the row is full, in its step copy's slot;
        a new frame gets its position from the position policy. `mirror`: rows that take the
        same write as the one row of `rows`."""
        if mirror and len(rows) != 1:
            raise ValueError(f"a mirrored write goes into one row, got {len(rows)}")
        writes = []
        for row, row_frames in zip(rows, frames):
            table = self.tables[row]
            new = [f for f in row_frames if table.slot_of(f) is None]
            after = min(len(table.occupied()) + len(new), self.layout.capacity_frames)
            positions = []
            for f in row_frames:
                slot = table.slot_of(f)
                if slot is not None:
                    positions.append(table.position[slot])
                else:  # the row holds `after` frames once the last new one is in, one fewer per new frame after f
                    later = len(new) - 1 - new.index(f)
                    positions.append(self.positions.position(f, after - later, self.layout))
            writes.append(RowWrite(row, list(row_frames), positions))
        return WritePlan(rows, writes, mirror, step_copy)

    def reused_slot(self, row: int, frame: int, step_copy: bool) -> int | None:
        """The slot a write of `frame` into `row` takes without asking the eviction policy, or
        None when the policy chooses it (a new frame, or a frame's first step copy)."""
        table = self.tables[row]
        own = table.slot_of(frame)
        if own is None:
            return table.copy_slot  # a step copy left by the previous frame goes first (None: none)
        if step_copy and table.full:
            copy = table.copy_slot
            return copy if copy is not None and table.frame[copy] == frame else None
        return own

    def _place(self, plan: WritePlan, k_new: torch.Tensor, v_new: torch.Tensor) -> None:
        """Choose the slot of every new frame (first layer only), update the tables and work out
        which stored keys the position policy moves."""
        layout = self.layout
        for i, w in enumerate(plan.writes):
            table = self.tables[w.row]
            for j, (frame, position) in enumerate(zip(w.frames, w.positions)):
                held = table.slot_of(frame) is not None
                copying = held and plan.step_copy and table.full
                slot = self.reused_slot(w.row, frame, plan.step_copy)
                if slot is None:
                    tokens = self.frame_tokens(j)
                    slot = self.eviction.choose_slot(self, w.row, k_new[i, :, tokens], v_new[i, :, tokens], len(w.frames))
                if table.frame[slot] != frame or slot == table.copy_slot:
                    leaving = table.frame[slot]
                    if leaving not in (EMPTY, frame) and slot >= layout.sink_frames and slot != table.copy_slot:
                        w.evicted.append(Evicted(slot, leaving, table.position[slot]))
                    table.frame[slot], table.position[slot] = frame, position
                    table.copy_slot = slot if copying else (None if slot == table.copy_slot else table.copy_slot)
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
        if plan.mirror:
            source = plan.writes[0]
            if source.evicted or source.token_delta is not None:
                raise ValueError("a mirrored write may neither evict nor move stored keys")
            for row in plan.mirror:
                self.tables[row] = replace(self.tables[source.row], frame=list(self.tables[source.row].frame),
                                           position=list(self.tables[source.row].position))
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
                for row in (w.row, *plan.mirror):
                    k[row, :, dst] = k_new[i, :, src]
                    v[row, :, dst] = v_new[i, :, src]

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
