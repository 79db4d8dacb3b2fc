"""Which frame slot a new frame takes when the cache is full, and what survives of the evicted.

- `FifoEviction`: the first frames written become the sinks and stay; the rolling slots form a
  ring and the oldest rolling frame is overwritten (StreamDiffusionV2's ring buffer).
- `AdaptiveSinkRefresh`: as FIFO, but when the new frame looks unlike a sink frame (mean key and
  value cosine similarity below a threshold) it replaces the least similar sink instead, so the
  sinks follow a scene that has changed (StreamDiffusionV2's adaptive sink). The choice is made
  once per frame on the first layer's keys and every layer follows it, so one position table
  serves all layers (upstream decides per layer).
- `ImportanceKeep`: as FIFO, plus a pool of `pool_tokens` tokens: when a rolling frame is evicted,
  its tokens and the pool's compete, and the ones the current frame's queries attend to most stay
  (Deep Forcing's participative compression, decided per layer; no recomputation).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from models.video.kv_cache import Evicted, RollingKVCache


class EvictionPolicy(Protocol):
    pool_tokens: int

    def choose_slot(self, cache: RollingKVCache, row: int, k_new: torch.Tensor, v_new: torch.Tensor, chunk_frames: int) -> int:
        """The frame slot of row `row` that one new frame (its first-layer keys and values,
        (heads, frame_tokens, head_dim)) is written to."""

    def keep_evicted(self, cache: RollingKVCache, layer: int, row: int, evicted: list[Evicted], pool_before: int, q: torch.Tensor) -> None:
        """Move what should survive of the evicted frames into the pool (policies with a pool)."""


class FifoEviction:
    pool_tokens = 0

    def choose_slot(self, cache, row, k_new, v_new, chunk_frames) -> int:
        table = cache.tables[row]
        empty = [s for s, f in enumerate(table.frame) if f < 0]
        if empty:
            return empty[0]
        sinks = cache.layout.sink_frames
        rolling = range(sinks, cache.layout.capacity_frames)
        return min(rolling, key=lambda s: table.frame[s])

    def keep_evicted(self, cache, layer, row, evicted, pool_before, q) -> None:
        return None


class AdaptiveSinkRefresh(FifoEviction):
    def __init__(self, threshold: float = 0.2):
        self.threshold = threshold

    def choose_slot(self, cache, row, k_new, v_new, chunk_frames) -> int:
        table = cache.tables[row]
        sinks = cache.layout.sink_frames
        full = all(f >= 0 for f in table.frame)
        if not full or sinks == 0 or chunk_frames != 1:
            return super().choose_slot(cache, row, k_new, v_new, chunk_frames)
        k_mean, v_mean = k_new.float().mean(dim=1).flatten(), v_new.float().mean(dim=1).flatten()
        similarity = []
        for slot in range(sinks):
            tokens = cache.frame_tokens(slot)
            k_sink = cache.k[0, row, :, tokens].float().mean(dim=1).flatten()
            v_sink = cache.v[0, row, :, tokens].float().mean(dim=1).flatten()
            similarity.append(0.5 * (F.cosine_similarity(k_sink, k_mean, dim=0) + F.cosine_similarity(v_sink, v_mean, dim=0)))
        least = int(torch.stack(similarity).argmin())
        if float(similarity[least]) < self.threshold:
            return least
        return super().choose_slot(cache, row, k_new, v_new, chunk_frames)


class ImportanceKeep(FifoEviction):
    def __init__(self, pool_tokens: int):
        if pool_tokens < 1:
            raise ValueError(f"pool_tokens must be at least 1, got {pool_tokens}")
        self.pool_tokens = pool_tokens

    def keep_evicted(self, cache, layer, row, evicted, pool_before, q) -> None:
        """Score each candidate token (evicted frames' and the pool's) by the attention the
        current frame's queries (heads, tokens, head_dim) give it among the candidates, summed
        over queries and heads, and keep the top ones in the pool, in their original order."""
        k, v = cache.k[layer, row], cache.v[layer, row]
        start = cache.pool_start
        token_index = [torch.arange(start, start + pool_before)]
        frames = [cache.pool_frame[layer, row, :pool_before]]
        positions = [cache.pool_position[layer, row, :pool_before]]
        for e in evicted:
            tokens = cache.frame_tokens(e.slot)
            token_index.append(torch.arange(tokens.start, tokens.stop))
            frames.append(torch.full((cache.layout.frame_tokens,), e.frame))
            positions.append(torch.full((cache.layout.frame_tokens,), e.position))
        index = torch.cat(token_index)
        keys = k[:, index.to(k.device)]
        scores = torch.softmax(q.float() @ keys.float().transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1).sum(dim=(0, 1))
        keep = scores.topk(min(self.pool_tokens, len(index))).indices.sort().values.cpu()
        kept = index[keep].to(k.device)
        n = len(keep)
        k[:, start : start + n], v[:, start : start + n] = k[:, kept], v[:, kept]
        cache.pool_frame[layer, row, :n] = torch.cat(frames)[keep]
        cache.pool_position[layer, row, :n] = torch.cat(positions)[keep]
