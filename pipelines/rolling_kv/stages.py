"""The rolling-KV video pipeline split across processes by transformer layers.

Rank 0 runs the pipeline as always (chunks, VAE, noise, stream batch) and the first layers; each
later rank runs the next layers and holds the KV cache of exactly those layers for every stream;
the last applies the head and sends the flow back to rank 0 (StreamDiffusionV2's ring). A
forward's rows are cut into micro-batches that follow each other through the ring, so rank 1
computes one while rank 0 computes the next (rows never depend on each other within a forward:
each attends over its own cache row).

Every rank keeps the caches' frame tables in step by replaying each write; the slot a new frame
takes is chosen on rank 0 only (adaptive sinks look at layer 0's keys) and sent along. Prompt K/V
travel once per prompt. When the block scheduler moves layers, their keys and values move with
them, so the output stays the same as on one process.
"""

from __future__ import annotations

import itertools
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from models.source import ModelSource
from models.video.kv_cache import CacheLayout, LayerBlock, RollingKVCache, RowWrite, WritePlan
from models.video.loading import load_video_models
from models.video.transformer import CachedRows, TextKV
from streaming.stages.balance import Rebalancer
from streaming.stages.group import Link, StageGroup


def layer_ranges(counts: Sequence[int]) -> list[range]:
    starts = list(itertools.accumulate(counts, initial=0))
    return [range(a, b) for a, b in zip(starts, starts[1:])]


class FollowPlacement:
    """A later stage's eviction: the slots rank 0 chose, and the real policy for what survives
    of evicted frames (the importance pool is decided per layer, so each stage does its own)."""

    def __init__(self, policy: Any):
        self.policy = policy
        self.pool_tokens = policy.pool_tokens
        self.slots: dict[int, list[int]] = {}

    def choose_slot(self, cache, row, k_new, v_new, chunk_frames) -> int:
        return self.slots[row].pop(0)

    def keep_evicted(self, cache, layer, row, evicted, pool_before, q) -> None:
        self.policy.keep_evicted(cache, layer, row, evicted, pool_before, q)


@dataclass(frozen=True)
class CacheSpec:
    """What a later stage needs to build its replica of a stream's cache."""

    layout: CacheLayout
    rows: int
    eviction: Any
    positions: Any


# ---- moving layers ------------------------------------------------------------------------------


def migrate(link: Link, old: Sequence[int], new: Sequence[int], caches: Sequence[tuple[int, RollingKVCache]]) -> None:
    """Move the layers that change stage, with every live cache's keys and values for them, then
    give every cache this rank's new layers. All ranks run this with the same arguments."""
    old_ranges, new_ranges = layer_ranges(old), layer_ranges(new)
    mine_old, mine_new = old_ranges[link.rank], new_ranges[link.rank]
    owner_old = {layer: r for r, layers in enumerate(old_ranges) for layer in layers}
    owner_new = {layer: r for r, layers in enumerate(new_ranges) for layer in layers}
    received: dict[int, list[LayerBlock]] = {}  # layer -> one block per cache, in `caches` order
    moves = [(layer, owner_old[layer], owner_new[layer]) for layer in sorted(owner_old) if owner_old[layer] != owner_new[layer]]
    for (src, dst), group in itertools.groupby(moves, key=lambda m: (m[1], m[2])):
        layers = [m[0] for m in group]
        if link.rank == src:
            local = range(layers[0] - mine_old.start, layers[-1] + 1 - mine_old.start)
            tensors = [t for _, cache in caches for t in _block_tensors(cache.layer_block(local.start, local.stop))]
            link.send({"op": "layers"}, tensors, dst)
            link.flush()
        elif link.rank == dst:
            _, tensors = link.recv(src)
            for i, _ in enumerate(caches):
                k, v, frame, position = tensors[4 * i : 4 * i + 4]
                for j, layer in enumerate(layers):
                    received.setdefault(layer, []).append(LayerBlock(k[j : j + 1], v[j : j + 1], frame[j : j + 1], position[j : j + 1]))
    for i, (_, cache) in enumerate(caches):
        blocks = [cache.layer_block(layer - mine_old.start, layer - mine_old.start + 1) if layer in mine_old else received[layer][i]
                  for layer in mine_new]
        cache.set_layers(blocks or [cache.empty_block(0)])


def _block_tensors(block: LayerBlock) -> list[torch.Tensor]:
    return [block.k, block.v, block.pool_frame, block.pool_position]


# ---- rank 0 -------------------------------------------------------------------------------------


class StagedTransformer:
    """Stands in for the transformer's `forward_cached` on rank 0 (`RollingKVPipeline.denoiser`)."""

    def __init__(self, pipeline: Any, group: StageGroup, counts: list[int], program: str, max_in_flight: int | None = None,
                 rebalancer: Rebalancer | None = None):
        self.models = pipeline.models
        self.model = pipeline.models.transformer
        self.link = group.link
        self.program = program
        self.counts = list(counts)
        self.max_in_flight = max_in_flight or group.world
        self.rebalancer = rebalancer
        self.models.cache_layers = self.counts[0]
        self.last_stage_s: list[float] = []   # compute time of every stage in the last forward
        self._ids = itertools.count(1)
        self._cache_uid: dict[int, int] = {}   # id(cache) -> uid
        self._caches: dict[int, weakref.ref[RollingKVCache]] = {}
        self._text_uid: dict[int, int] = {}
        self._released: list[tuple[str, int]] = []

    def forward_cached(self, latents: torch.Tensor, timesteps: torch.Tensor, text: TextKV, groups: Sequence[CachedRows]) -> torch.Tensor:
        parts = _row_parts(latents.shape[0], self.max_in_flight)
        flows: dict[int, torch.Tensor] = {}
        stage_s = [0.0] * self.link.world
        for index, rows in enumerate(parts):
            started = time.perf_counter()
            header, tensors = self._first_stage(index, rows, latents[rows], timesteps[rows], text, groups)
            stage_s[0] += time.perf_counter() - started
            self.link.send(header, tensors, self.link.next)
            if index + 1 - len(flows) >= self.max_in_flight:
                self._receive(flows, stage_s)
        while len(flows) < len(parts):
            self._receive(flows, stage_s)
        self.last_stage_s = stage_s
        if self.rebalancer is not None:
            self._consider_rebalance(stage_s)
        return torch.cat([flows[i] for i in range(len(parts))])

    def _first_stage(self, index: int, rows: slice, latents: torch.Tensor, timesteps: torch.Tensor, text: TextKV,
                     groups: Sequence[CachedRows]) -> tuple[dict, list[torch.Tensor]]:
        part = _part_groups(groups, rows)
        for g in part:
            if g.cache.layout.layers != self.counts[0] and id(g.cache) not in self._cache_uid:
                g.cache.set_layers([g.cache.empty_block(self.counts[0])])  # made before a rebalance, never written
        positions = torch.cat([g.plan.positions for g in part])
        cond = self.model.conditioning(timesteps, positions, latents.shape[-3:], latents.device)

        def attend(layer, q, k, v):
            outs = [g.cache.attend(layer, g.plan, q[g.start : g.start + len(g.plan.rows)], k[g.start : g.start + len(g.plan.rows)],
                                   v[g.start : g.start + len(g.plan.rows)]) for g in part]
            return torch.cat(outs) if len(outs) > 1 else outs[0]

        part_text = TextKV([k[rows] for k in text.k], [v[rows] for v in text.v])
        x = self.model.run_blocks(self.model.embed(latents), cond, part_text, attend, range(self.counts[0]))
        texts: list[torch.Tensor] = []
        described = []
        for g in part:
            described.append(self._describe(g, texts))
        header = {"op": "forward", "program": self.program, "part": index, "latent_shape": tuple(latents.shape[-3:]),
                  "groups": described, "released": self._take_released()}
        return header, [x, timesteps, *texts]

    def _describe(self, g: CachedRows, texts: list[torch.Tensor]) -> dict[str, Any]:
        """One group of rows as later stages need it; new caches and prompts are sent in full once."""
        cache_uid, new_cache = self._uid(g.cache, self._cache_uid, "cache")
        if new_cache:
            self._caches[cache_uid] = weakref.ref(g.cache)
        text_uid, new_text = self._uid(g.text, self._text_uid, "text")
        text_index = None
        if new_text:
            text_index = len(texts) // 2
            texts += [torch.stack(g.text.k), torch.stack(g.text.v)]
        return {
            "cache": cache_uid,
            "spec": CacheSpec(g.cache.layout, g.cache.rows, g.cache.eviction, g.cache.positions) if new_cache else None,
            "rows": (g.plan.rows.start, g.plan.rows.stop),
            "start": g.start,
            "frames": [w.frames for w in g.plan.writes],
            "positions": [w.positions for w in g.plan.writes],
            "slots": [w.slots for w in g.plan.writes],
            "mirror": (g.plan.mirror.start, g.plan.mirror.stop),
            "step_copy": g.plan.step_copy,
            "text": text_uid,
            "text_index": text_index,
        }

    def _uid(self, obj: Any, ids: dict[int, int], kind: str) -> tuple[int, bool]:
        key = id(obj)
        if key in ids:
            return ids[key], False
        uid = ids[key] = next(self._ids)
        weakref.finalize(obj, self._release, ids, key, kind, uid)
        return uid, True

    def _release(self, ids: dict[int, int], key: int, kind: str, uid: int) -> None:
        ids.pop(key, None)
        self._caches.pop(uid, None)
        self._released.append((kind, uid))

    def _take_released(self) -> list[tuple[str, int]]:
        released, self._released = self._released, []
        return released

    def _receive(self, flows: dict[int, torch.Tensor], stage_s: list[float]) -> None:
        header, (flow,) = self.link.recv(self.link.prev)
        flows[header["part"]] = flow
        for rank, seconds in enumerate(header["times"], start=1):
            stage_s[rank] += seconds

    # ---- the block scheduler ---------------------------------------------------------------

    def _consider_rebalance(self, stage_s: list[float]) -> None:
        per_layer = [s / n for s, n in zip(stage_s, self.counts) if n]
        unit_s = [s / n if n else min(per_layer) for s, n in zip(stage_s, self.counts)]
        self.rebalancer.observe(unit_s, [0.0] * len(unit_s))
        proposal = self.rebalancer.propose()
        if proposal is not None:
            self.rebalance(proposal)

    def rebalance(self, counts: list[int]) -> None:
        """Move layers (and their cached keys and values) so that rank r holds counts[r]."""
        if counts[0] < 1 or sum(counts) != sum(self.counts):
            raise ValueError(f"a split needs at least one layer on rank 0 and {sum(self.counts)} in all, got {counts}")
        live = sorted(uid for uid, ref in self._caches.items() if ref() is not None)
        caches = [(uid, self._caches[uid]()) for uid in live]
        self.link.send({"op": "rebalance", "program": self.program, "counts": counts, "live": live,
                        "released": self._take_released()}, [], self.link.next)
        migrate(self.link, self.counts, counts, caches)
        header, _ = self.link.recv(self.link.prev)
        assert header["op"] == "rebalanced", header
        self.counts = list(counts)
        self.models.cache_layers = counts[0]
        if self.rebalancer is not None:
            self.rebalancer.moved(counts)


def _row_parts(rows: int, parts: int) -> list[slice]:
    """`rows` cut into at most `parts` contiguous micro-batches of nearly equal size."""
    parts = max(1, min(parts, rows))
    bounds = [round(i * rows / parts) for i in range(parts + 1)]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:])]


def _part_groups(groups: Sequence[CachedRows], rows: slice) -> list[CachedRows]:
    """The groups' rows that fall in a micro-batch, with plans for just those rows (a cache's
    rows are independent sequences, so a write splits by rows)."""
    part = []
    for g in groups:
        lo, hi = max(g.start, rows.start), min(g.start + len(g.plan.rows), rows.stop)
        if lo >= hi:
            continue
        first = g.plan.rows.start + lo - g.start
        writes = g.plan.writes[lo - g.start : hi - g.start]
        plan = WritePlan(range(first, first + hi - lo), writes, g.plan.mirror, g.plan.step_copy)
        part.append(CachedRows(g.cache, plan, lo - rows.start, g.text))
    return part


# ---- ranks 1..N-1 -------------------------------------------------------------------------------


class LayerStageHost:
    """A later stage: its layers, and its replica of every stream's cache for those layers."""

    def __init__(self, link: Link, source: ModelSource, counts: list[int]):
        self.models = load_video_models(**source.on_device(str(link.device)))
        self.model = self.models.transformer
        self.link = link
        self.counts = list(counts)
        self.caches: dict[int, RollingKVCache] = {}
        self.texts: dict[int, TextKV] = {}

    @property
    def layers(self) -> range:
        return layer_ranges(self.counts)[self.link.rank]

    def handle(self, header: dict[str, Any], tensors: list[torch.Tensor]) -> None:
        for kind, uid in header.get("released", ()):
            (self.caches if kind == "cache" else self.texts).pop(uid, None)
        if header["op"] == "forward":
            self._forward(header, tensors)
        elif header["op"] == "rebalance":
            last = self.link.next == 0
            if not last:
                self.link.send(header, [], self.link.next)
            migrate(self.link, self.counts, header["counts"], [(uid, self.caches[uid]) for uid in header["live"]])
            self.counts = list(header["counts"])
            if last:
                self.link.send({"op": "rebalanced"}, [], 0)

    def _forward(self, header: dict[str, Any], tensors: list[torch.Tensor]) -> None:
        started = time.perf_counter()
        x, timesteps, *text_tensors = tensors
        groups, texts = [], []
        for g in header["groups"]:
            if g["spec"] is not None:
                self.caches[g["cache"]] = self._new_cache(g["spec"])
            if g["text_index"] is not None:
                k, v = text_tensors[2 * g["text_index"] : 2 * g["text_index"] + 2]
                self.texts[g["text"]] = TextKV(list(k), list(v))
            cache = self.caches[g["cache"]]
            writes = [RowWrite(row, frames, positions) for row, frames, positions in zip(range(*g["rows"]), g["frames"], g["positions"])]
            for w, slots in zip(writes, g["slots"]):  # rank 0's choice wherever its eviction policy chose
                cache.eviction.slots[w.row] = [slot for frame, slot in zip(w.frames, slots)
                                               if cache.reused_slot(w.row, frame, g["step_copy"]) is None]
            plan = WritePlan(range(*g["rows"]), writes, range(*g["mirror"]), g["step_copy"])
            groups.append(CachedRows(cache, plan, g["start"]))
            texts.append(self.texts[g["text"]].expand(len(writes)))
        positions = torch.cat([g.plan.positions for g in groups])
        cond = self.model.conditioning(timesteps, positions, header["latent_shape"], x.device)
        first = self.layers.start

        def attend(layer, q, k, v):
            outs = [g.cache.attend(layer - first, g.plan, q[g.start : g.start + len(g.plan.rows)], k[g.start : g.start + len(g.plan.rows)],
                                   v[g.start : g.start + len(g.plan.rows)]) for g in groups]
            return torch.cat(outs) if len(outs) > 1 else outs[0]

        with torch.no_grad():
            x = self.model.run_blocks(x, cond, TextKV.cat(texts), attend, self.layers)
            for g in groups:
                g.cache.follow(g.plan)  # a stage without layers still keeps its tables in step
            times = [*header.get("times", []), 0.0]
            if self.link.next == 0:
                flow = self.model.head(x, cond)
                times[-1] = time.perf_counter() - started
                self.link.send({"part": header["part"], "times": times}, [flow], 0)
            else:
                times[-1] = time.perf_counter() - started
                self.link.send({**header, "times": times}, [x, timesteps, *text_tensors], self.link.next)

    def _new_cache(self, spec: CacheSpec) -> RollingKVCache:
        layout = replace(spec.layout, layers=len(self.layers))
        return RollingKVCache(layout, spec.rows, self.model.rope3d, self.models.device, self.models.dtype,
                              FollowPlacement(spec.eviction), spec.positions)


def split_across(pipeline: Any, group: StageGroup, counts: list[int], program: str,
                 rebalancer: Rebalancer | None = None) -> StagedTransformer:
    """Run `pipeline`'s transformer split over `group` (rank r: counts[r] layers)."""
    staged = StagedTransformer(pipeline, group, counts, program, rebalancer=rebalancer)
    pipeline.denoiser = staged
    return staged
