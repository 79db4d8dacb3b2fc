"""The causal Wan transformer, the streaming VAEs, the presets and checkpoint loading.

The central check: streaming N latent frames through the rolling cache, one block at a time,
equals ONE full-sequence forward under the equivalent block-causal, sink-plus-window mask at the
same positions (with one step and keys written by that same pass, frame i's cached keys were
produced from exactly the window the mask gives it, in every layer).
"""

import pytest
import torch

from models.loading import ModelLoadError
from models.video.kv_cache import CacheLayout, RollingKVCache
from models.video.loading import build_from_configs, causal_state_dict, load_causal_checkpoint, load_video_models
from models.video.positions import AbsolutePositions, PeriodicReset
from models.video.presets import get_video_preset
from models.video.transformer import CachedRows, CausalWanTransformer, TextKV
from models.video.vae import TinyStreamingVAE, WanStreamingVAE

TINY = {"patch_size": (1, 2, 2), "num_attention_heads": 4, "attention_head_dim": 16, "in_channels": 4, "out_channels": 4,
            "text_dim": 32, "freq_dim": 32, "ffn_dim": 128, "num_layers": 2}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return CausalWanTransformer(**TINY).eval()


def new_cache(model, sinks, window, rows=1, positions=None):
    layout = CacheLayout(model.config.num_layers, model.heads, model.config.attention_head_dim, 16, sinks, window)
    return RollingKVCache(layout, rows, model.rope3d, positions=positions)


def block_mask(blocks, sinks, window):
    """allow(q, k) = k in a block up to q's own (block-causal), and k a sink or within the last
    `window` frames of q's block end (what the cache holds once q's block is written)."""
    frame_block = torch.tensor([b for b, size in enumerate(blocks) for _ in range(size)])
    ends = torch.cumsum(torch.tensor(blocks), 0)[frame_block] - 1  # last frame of each frame's block
    k = torch.arange(len(frame_block))[None]
    return (k <= ends[:, None]) & ((k < sinks) | (k > ends[:, None] - window))


@torch.no_grad()
def test_causal_path_without_mask_equals_diffusers_forward(model):
    """The re-written block (per-frame adaLN, our RoPE, cached cross-attention K/V) computes what
    diffusers' WanTransformer3DModel computes when every frame has the same timestep."""
    torch.manual_seed(1)
    x, text = torch.randn(2, 4, 3, 8, 8), torch.randn(2, 8, 32)
    t = torch.tensor([700.0, 300.0])
    expected = model(x, t, text, return_dict=False)[0]
    ours = model.forward_masked(x, t[:, None].expand(2, 3), model.text_kv(text), torch.arange(3).expand(2, 3), None)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("positions", [AbsolutePositions(), PeriodicReset(reset_at=7, reset_to=3)], ids=["absolute", "periodic-reset"])
@pytest.mark.parametrize("blocks", [[1] * 12, [2] + [1] * 10], ids=["single-frames", "first-block-of-2"])
@torch.no_grad()
def test_streaming_through_the_rolling_cache_equals_one_masked_full_sequence_forward(model, positions, blocks):
    sinks, window = 2, 3
    frames = sum(blocks)
    torch.manual_seed(2)
    x = torch.randn(1, 4, frames, 8, 8)
    t = torch.rand(1, frames) * 1000  # any timestep per frame, the same in both
    text = model.text_kv(torch.randn(1, 8, 32))
    cache = new_cache(model, sinks, window, positions=positions)
    outs, used = [], []
    start = 0
    for size in blocks:
        plan = cache.begin_write(range(1), [list(range(start, start + size))])
        used.extend(plan.writes[0].positions)
        outs.append(model.forward_cached(x[:, :, start : start + size], t[:, start : start + size], text, [CachedRows(cache, plan, 0)]))
        start += size
    mask = block_mask(blocks, sinks, window)
    full = model.forward_masked(x, t, text, torch.tensor([used]), mask)
    torch.testing.assert_close(torch.cat(outs, dim=2), full, atol=2e-5, rtol=1e-4)
    if isinstance(positions, PeriodicReset):
        assert max(used) < 7 and used[7] == 3  # the positions really restarted


@torch.no_grad()
def test_two_caches_in_one_forward_equal_each_alone(model):
    """Rows of different streams share every matmul; only attention runs per cache."""
    torch.manual_seed(3)
    texts = [model.text_kv(torch.randn(1, 8, 32)) for _ in range(2)]
    xs = [torch.randn(1, 4, 6, 8, 8) for _ in range(2)]
    alone = []
    for x, text in zip(xs, texts):
        cache = new_cache(model, 1, 2)
        alone.append([model.forward_cached(x[:, :, f : f + 1], torch.full((1, 1), 500.0), text,
                                           [CachedRows(cache, cache.begin_write(range(1), [[f]]), 0)]) for f in range(6)])
    caches = [new_cache(model, 1, 2) for _ in range(2)]
    for f in range(6):
        groups = [CachedRows(c, c.begin_write(range(1), [[f]]), i) for i, c in enumerate(caches)]
        out = model.forward_cached(torch.cat([x[:, :, f : f + 1] for x in xs]), torch.full((2, 1), 500.0), TextKV.cat(texts), groups)
        for i in range(2):
            torch.testing.assert_close(out[i : i + 1], alone[i][f], atol=1e-5, rtol=1e-5)


def test_real_presets_build_on_meta_with_the_published_shapes_and_sizes():
    expected = {
        # Wan2.1 transformers (1.42 B and 14.29 B parameters), the Wan VAE (127 M), umT5-XXL's encoder (5.68 B).
        "wan-causal-1.3b": (30, 1536, 12, 8960, 1_418_996_800),
        "wan-causal-14b": (40, 5120, 40, 13824, 14_288_491_584),
    }
    for name, (layers, dim, heads, ffn, params) in expected.items():
        transformer, vae, text_encoder, _ = build_from_configs(get_video_preset(name), device="meta")
        assert transformer.device.type == "meta"
        assert len(transformer.blocks) == layers and transformer.heads == heads
        assert transformer.blocks[0].attn1.to_q.weight.shape == (dim, dim)
        assert transformer.blocks[0].ffn.net[0].proj.weight.shape == (ffn, dim)
        assert sum(p.numel() for p in transformer.parameters()) == params
        assert sum(p.numel() for p in vae.parameters()) == 126_892_531
        assert sum(p.numel() for p in text_encoder.parameters()) == 5_680_910_336
        # 480x832: a 16x60x104 latent, 1560 tokens per latent frame.
        assert transformer.tokens_per_frame(60, 104) == 1560
    layout = CacheLayout(30, 12, 128, 1560, 3, 3)  # StreamDiffusionV2's 6-frame cache, 1.3B
    assert layout.tokens == 9360 and layout.bytes_per_row(torch.bfloat16) == pytest.approx(1.73e9, rel=0.01)


# ---- checkpoints ---------------------------------------------------------------------------------

# diffusers name -> original Wan name: the inverse of diffusers' Wan converter, which the loader uses.
TO_ORIGINAL = [
    ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
    ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
    ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
    ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
    ("condition_embedder.time_proj", "time_projection.1"),
    ("attn1", "self_attn"), ("attn2", "cross_attn"),
    (".to_q.", ".q."), (".to_k.", ".k."), (".to_v.", ".v."), (".to_out.0.", ".o."),
    ("ffn.net.0.proj", "ffn.0"), ("ffn.net.2", "ffn.2"),
    (".norm2.", ".norm3."),  # the cross-attention norm (the only one with weights)
]


def original_name(name: str) -> str:
    if name == "scale_shift_table":
        return "head.modulation"
    if name.startswith("proj_out"):
        return name.replace("proj_out", "head.head")
    for new, old in TO_ORIGINAL:
        name = name.replace(new, old)
    return name.replace("scale_shift_table", "modulation")


def test_self_forcing_style_checkpoint_with_original_wan_names_loads_exactly(model, tmp_path):
    originals = {"model." + original_name(k): v.clone() for k, v in model.state_dict().items()}
    assert "model.blocks.0.self_attn.q.weight" in originals and "model.head.modulation" in originals
    path = tmp_path / "self_forcing_dmd.pt"
    torch.save({"generator": {k: torch.zeros_like(v) for k, v in originals.items()}, "generator_ema": originals}, path)
    fresh = CausalWanTransformer(**TINY)
    load_causal_checkpoint(fresh, path)  # EMA weights by default
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[name], tensor, atol=0, rtol=0)


def test_checkpoint_with_fsdp_prefixes_and_diffusers_names_is_unwrapped(model):
    raw = {"generator": {"model._fsdp_wrapped_module." + k: v for k, v in model.state_dict().items()}}
    assert causal_state_dict(raw).keys() == model.state_dict().keys()


def test_checkpoint_that_does_not_fit_names_what_is_wrong(model, tmp_path):
    weights = {k: v for k, v in model.state_dict().items() if not k.startswith("blocks.1.")}
    path = tmp_path / "model.pt"
    torch.save({"generator": weights}, path)
    with pytest.raises(ModelLoadError, match="missing .*blocks.1"):
        load_causal_checkpoint(CausalWanTransformer(**TINY), path)


def test_model_folder_with_a_diffusers_transformer_or_a_checkpoint_file(tmp_path):
    built = load_video_models("tiny-video", device="cpu", seed=5)
    (tmp_path / "a").mkdir()
    built.transformer.save_pretrained(tmp_path / "a" / "transformer")
    (tmp_path / "b").mkdir()
    torch.save({"generator": {"model." + original_name(k): v for k, v in built.transformer.state_dict().items()}}, tmp_path / "b" / "model.pt")
    for folder in ("a", "b"):
        loaded = load_video_models("tiny-video", device="cpu", model_dir=tmp_path / folder)
        for name, tensor in built.transformer.state_dict().items():
            torch.testing.assert_close(loaded.transformer.state_dict()[name], tensor, atol=0, rtol=0)
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_video_models("tiny-video", device="cpu", model_dir=tmp_path / "missing")


# ---- streaming VAEs ------------------------------------------------------------------------------


@torch.no_grad()
def test_wan_vae_streamed_in_chunks_equals_whole_video_encode_and_decode():
    from diffusers import AutoencoderKLWan

    torch.manual_seed(4)
    vae = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[2.0, 1.5, 1.0, 0.5]).eval()
    streaming = WanStreamingVAE(vae)
    video = torch.rand(1, 3, 13, 32, 32) * 2 - 1
    mean, std = torch.tensor([0.1, -0.2, 0.3, 0.0]).view(1, 4, 1, 1, 1), torch.tensor([2.0, 1.5, 1.0, 0.5]).view(1, 4, 1, 1, 1)
    whole = (vae.encode(video).latent_dist.mode() - mean) / std
    state = streaming.new_state()
    chunks = [streaming.encode(video[:, :, s], state) for s in (slice(0, 5), slice(5, 9), slice(9, 13))]
    torch.testing.assert_close(torch.cat(chunks, dim=2), whole, atol=1e-6, rtol=1e-5)
    decoded_whole = vae.decode(whole * std + mean).sample
    state = streaming.new_state()
    decoded = [streaming.decode(whole[:, :, s], state) for s in (slice(0, 2), slice(2, 3), slice(3, 4))]
    assert [d.shape[2] for d in decoded] == [5, 4, 4]
    torch.testing.assert_close(torch.cat(decoded, dim=2), decoded_whole, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_tiny_vae_carries_its_causal_state_between_calls():
    torch.manual_seed(5)
    vae = TinyStreamingVAE()
    video = torch.rand(1, 3, 9, 32, 32) * 2 - 1
    whole = vae.encode(video, vae.new_state())
    state = vae.new_state()
    streamed = torch.cat([vae.encode(video[:, :, :5], state), vae.encode(video[:, :, 5:], state)], dim=2)
    torch.testing.assert_close(streamed, whole)
    assert not torch.allclose(vae.encode(video[:, :, 5:], _first_call(vae, video)), whole[:, :, 2:])
    state = vae.new_state()
    pictures = torch.cat([vae.decode(whole[:, :, :2], state), vae.decode(whole[:, :, 2:], state)], dim=2)
    torch.testing.assert_close(pictures, vae.decode(whole, vae.new_state()))
    assert pictures.shape == (1, 3, 9, 32, 32)


def _first_call(vae, video):
    """A state that has seen a different first chunk: the next chunk must encode differently."""
    state = vae.new_state()
    vae.encode(-video[:, :, :5], state)
    return state
