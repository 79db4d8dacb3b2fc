"""The rolling KV cache on its own: attention over the ring equals dense attention over the key
set it should hold, RoPE re-rotation equals recomputation, and each policy keeps what it says.

Keys are written as the transformer writes them (already rotated at the position the cache
plans); the references rebuild every key from the raw values the test wrote, independently of
the cache's slots and tables.
"""

import pytest
import torch

from models.video.eviction import AdaptiveSinkRefresh, ImportanceKeep
from models.video.kv_cache import CacheLayout, RollingKVCache
from models.video.positions import CacheRelative, PeriodicReset, SinkRealign
from models.video.rope import Rope3D, apply_rotary

HEADS, HEAD_DIM, H, W = 2, 12, 2, 2
N = H * W  # tokens per frame


def make_cache(sinks=2, window=3, layers=1, rows=1, **policies):
    layout = CacheLayout(layers, HEADS, HEAD_DIM, N, sinks, window, getattr(policies.get("eviction"), "pool_tokens", 0))
    return RollingKVCache(layout, rows, Rope3D(HEAD_DIM), **policies)


def rotate(x, positions, rope):
    """x (heads, frames*N, D) rotated at temporal positions (frames,)."""
    cos, sin = rope.cos_sin(torch.as_tensor(positions), H, W, x.device)
    return apply_rotary(x, cos.flatten(0, 1), sin.flatten(0, 1))


def dense(q, k, v):
    weights = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
    return weights @ v


def write_frame(cache, frame, raw_k, raw_v, q, layer=0, row=0):
    """Write one frame (raw keys rotated at the planned position); return attention output and position."""
    plan = cache.begin_write(range(row, row + 1), [[frame]])
    position = plan.writes[0].positions[0]
    k = rotate(raw_k, [position], cache.rope)[None]
    qr = rotate(q, [position], cache.rope)[None]
    return cache.attend(layer, plan, qr, k, raw_v[None])[0], position, qr[0]


@pytest.mark.parametrize("sinks,window,frames", [(2, 3, 1), (2, 3, 5), (2, 3, 12), (0, 4, 9), (3, 3, 40)])
def test_ring_with_sinks_equals_dense_attention_over_sinks_and_last_window(sinks, window, frames):
    torch.manual_seed(frames)
    cache = make_cache(sinks, window)
    raw = [(torch.randn(HEADS, N, HEAD_DIM), torch.randn(HEADS, N, HEAD_DIM)) for _ in range(frames)]
    for f in range(frames):
        q = torch.randn(HEADS, N, HEAD_DIM)
        out, _, qr = write_frame(cache, f, *raw[f], q)
        kept = sorted(set(range(min(sinks, f + 1))) | set(range(max(0, f - window + 1), f + 1)))
        k = torch.cat([rotate(raw[j][0], [j], cache.rope) for j in kept], dim=1)
        v = torch.cat([raw[j][1] for j in kept], dim=1)
        torch.testing.assert_close(out, dense(qr, k, v), atol=1e-5, rtol=1e-5)
        assert cache.cached_frames(0) == kept


def test_slot_order_does_not_matter():
    torch.manual_seed(0)
    cache = make_cache(2, 3)
    for f in range(9):
        write_frame(cache, f, torch.randn(HEADS, N, HEAD_DIM), torch.randn(HEADS, N, HEAD_DIM), torch.randn(HEADS, N, HEAD_DIM))
    assert cache.tables[0].frame != sorted(cache.tables[0].frame)  # the ring has wrapped
    q = torch.randn(1, HEADS, N, HEAD_DIM)
    perm = torch.randperm(cache.layout.tokens)
    base = dense(q, cache.k[0], cache.v[0])
    torch.testing.assert_close(dense(q, cache.k[0][:, :, perm], cache.v[0][:, :, perm]), base, atol=1e-6, rtol=1e-6)


def test_rotating_stored_keys_by_delta_equals_recomputing_at_position_plus_delta():
    rope = Rope3D(128)
    torch.manual_seed(0)
    raw = torch.randn(3, 4 * 6, 128, dtype=torch.float64)
    for position, delta in [(7, 5), (50, -45), (0, 1000), (999, -999)]:
        stored = _rotate64(raw, position, rope)
        cos, sin = (t.double() for t in rope.temporal_cos_sin(torch.full((raw.shape[1],), delta), "cpu"))
        moved = apply_rotary(stored, cos, sin)
        torch.testing.assert_close(moved, _rotate64(raw, position + delta, rope), atol=1e-6, rtol=0)


def test_shifting_every_position_by_a_constant_leaves_scores_unchanged():
    rope = Rope3D(HEAD_DIM)
    torch.manual_seed(1)
    q, k = torch.randn(HEADS, N, HEAD_DIM), torch.randn(HEADS, 3 * N, HEAD_DIM)
    scores = rotate(q, [9], rope) @ rotate(k, [2, 5, 9], rope).transpose(-1, -2)
    shifted = rotate(q, [109], rope) @ rotate(k, [102, 105, 109], rope).transpose(-1, -2)
    torch.testing.assert_close(scores, shifted, atol=1e-4, rtol=1e-4)


def _rotate64(x, position, rope):
    angles = rope.angles(torch.tensor([position]), 4, 6)[0]
    return apply_rotary(x, angles.cos(), angles.sin())


def test_periodic_reset_restarts_positions_and_keeps_stored_rotations():
    policy = PeriodicReset(reset_at=8, reset_to=3)
    cache = make_cache(2, 3, positions=policy)
    positions = []
    for f in range(20):
        _, position, _ = write_frame(cache, f, torch.randn(HEADS, N, HEAD_DIM), torch.randn(HEADS, N, HEAD_DIM), torch.randn(HEADS, N, HEAD_DIM))
        positions.append(position)
    assert positions == [0, 1, 2, 3, 4, 5, 6, 7, 3, 4, 5, 6, 7, 3, 4, 5, 6, 7, 3, 4]
    table = cache.tables[0]
    assert {table.frame[s]: table.position[s] for s in range(5)} == {0: 0, 1: 1, 17: 7, 18: 3, 19: 4}


@pytest.mark.parametrize("policy", [CacheRelative(), SinkRealign()], ids=["cache-relative", "sink-realign"])
def test_moved_positions_equal_recomputed_keys_and_attention(policy):
    """After any number of writes every stored key equals the raw key rotated at the position the
    policy gives it now, and attention equals dense attention with those positions."""
    sinks, window = 2, 3
    torch.manual_seed(2)
    cache = make_cache(sinks, window, positions=policy)
    raw = {}
    for f in range(11):
        raw[f] = (torch.randn(HEADS, N, HEAD_DIM), torch.randn(HEADS, N, HEAD_DIM))
        out, position, qr = write_frame(cache, f, *raw[f], torch.randn(HEADS, N, HEAD_DIM))
        kept = cache.cached_frames(0)
        rolling = [j for j in kept if j >= sinks]
        if isinstance(policy, CacheRelative):
            expected = {j: rank for rank, j in enumerate(kept)}
        else:
            first = min(rolling) - sinks if len(kept) > sinks else 0
            expected = {j: (first + j if j < sinks else j) for j in kept}
        assert position == expected[f]
        table = cache.tables[0]
        assert {table.frame[s]: table.position[s] for s in table.occupied()} == expected
        k = torch.cat([rotate(raw[j][0], [expected[j]], cache.rope) for j in kept], dim=1)
        v = torch.cat([raw[j][1] for j in kept], dim=1)
        torch.testing.assert_close(out, dense(qr, k, v), atol=1e-4, rtol=1e-4)


def test_adaptive_sink_refresh_replaces_the_least_similar_sink():
    torch.manual_seed(3)
    cache = make_cache(2, 2, eviction=AdaptiveSinkRefresh(threshold=0.2))
    base = torch.randn(HEADS, N, HEAD_DIM)
    for f in range(4):  # similar frames fill the cache
        write_frame(cache, f, base + 0.01 * torch.randn_like(base), base.clone(), torch.randn_like(base))
    write_frame(cache, 4, base + 0.01 * torch.randn_like(base), base.clone(), torch.randn_like(base))
    assert cache.cached_frames(0) == [0, 1, 3, 4]  # similar: FIFO evicted frame 2
    write_frame(cache, 5, -base, -base, torch.randn_like(base))  # unlike every sink
    sinks = cache.tables[0].frame[:2]
    assert 5 in sinks and len({0, 1} & set(sinks)) == 1  # one sink refreshed by the new frame
    assert sorted(cache.tables[0].frame[2:]) == [3, 4]  # the rolling frames were left alone


def test_importance_pool_keeps_the_evicted_tokens_the_queries_attend_to():
    torch.manual_seed(4)
    eviction = ImportanceKeep(pool_tokens=2)
    cache = make_cache(1, 2, eviction=eviction)
    q = torch.zeros(HEADS, N, HEAD_DIM)
    # Queries look along channel 2: the slowest temporal pair, which rotation barely turns over a few frames.
    q[..., 2] = 10.0
    keys = {}
    for f in range(3):
        keys[f] = torch.randn(HEADS, N, HEAD_DIM) * 0.1
    keys[1][:, 2, 2] = 5.0  # tokens 2 and 3 of frame 1 are what the queries want
    keys[1][:, 3, 2] = 4.0
    for f in range(3):
        write_frame(cache, f, keys[f], torch.randn(HEADS, N, HEAD_DIM), q)
    write_frame(cache, 3, torch.randn(HEADS, N, HEAD_DIM) * 0.1, torch.randn(HEADS, N, HEAD_DIM), q)  # evicts frame 1
    assert cache.pool_frame[0, 0].tolist() == [1, 1]
    pool = cache.k[0, 0, :, cache.pool_start :]
    assert torch.all(pool[:, :, 2] > 1.0)  # the two strong tokens, not the weak ones
    assert cache.tables[0].pool_filled == 2 and cache._valid_mask(range(1)) is None


def test_cache_is_preallocated_and_never_grows():
    cache = make_cache(2, 3, layers=2, rows=2)
    pointers = (cache.k.data_ptr(), cache.v.data_ptr())
    for f in range(300):
        plan = cache.begin_write(range(2), [[f], [f]])
        q = torch.randn(2, HEADS, N, HEAD_DIM)
        for layer in range(2):
            cache.attend(layer, plan, q, torch.randn(2, HEADS, N, HEAD_DIM), torch.randn(2, HEADS, N, HEAD_DIM))
    assert (cache.k.data_ptr(), cache.v.data_ptr()) == pointers
    assert cache.k.shape == (2, 2, HEADS, 5 * N, HEAD_DIM)
    assert cache.cached_frames(1) == [0, 1, 297, 298, 299]


def test_a_block_of_new_frames_gets_one_position_each():
    """A first chunk of 2 frames under cache-relative positions: ranks 0 and 1, not 1 and 1."""
    cache = make_cache(2, 3, positions=CacheRelative())
    assert cache.begin_write(range(1), [[0, 1]]).writes[0].positions == [0, 1]


def write_step(cache, frame, value, step_copy):
    """Write one step of `frame` whose keys are all `value` (so a slot tells which write it holds)."""
    plan = cache.begin_write(range(1), [[frame]], step_copy=step_copy)
    k = torch.full((1, HEADS, N, HEAD_DIM), float(value))
    cache.attend(0, plan, torch.zeros_like(k), k, k)
    return plan.writes[0].slots[0]


def test_step_copies_put_later_steps_one_ring_slot_on_once_the_cache_is_full():
    """StreamDiffusionV2's single-slot loop with 2 steps (sinks 0-2, ring 3-5): before the cache
    is full every step rewrites its frame's slot; after, step 2 of frame f goes to the next ring
    slot (evicting the oldest frame), and frame f+1's first step takes that slot back."""
    cache = make_cache(3, 3)
    written = []
    for frame in range(9):
        written.append((write_step(cache, frame, 10 * frame + 1, True), write_step(cache, frame, 10 * frame + 2, True)))
    assert written[:5] == [(0, 0), (1, 1), (2, 2), (3, 3), (4, 4)]
    assert written[5:] == [(5, 3), (3, 4), (4, 5), (5, 3)]  # frame 5 fills the cache; its step 2 evicts frame 3
    held = sorted(int(cache.k[0, 0, 0, cache.frame_tokens(s)][0, 0]) for s in range(6))
    assert held == [2, 12, 22, 71, 81, 82]  # sinks (their last step: written before the cache was full), frame 7's first step, frame 8 twice
    assert cache.cached_frames(0) == [0, 1, 2, 7, 8] and cache.tables[0].copy_slot == 3


def test_a_mirrored_write_lands_in_every_row_with_the_same_table():
    cache = make_cache(2, 3, layers=2, rows=3)
    plan = cache.begin_write(range(1), [[0, 1]], mirror=range(1, 3))
    k = torch.randn(1, HEADS, 2 * N, HEAD_DIM)
    for layer in range(2):
        cache.attend(layer, plan, torch.randn_like(k), k, k)
    for row in (1, 2):
        torch.testing.assert_close(cache.k[:, row], cache.k[:, 0], rtol=0, atol=0)
        assert cache.tables[row] == cache.tables[0] and cache.tables[row] is not cache.tables[0]
    with pytest.raises(ValueError, match="one row"):
        cache.begin_write(range(2), [[2], [2]], mirror=range(2, 3))
