"""The rolling-KV pipeline against the upstream inference loops, re-written here from their code.

Upstream: StreamDiffusionV2 c5a0f20 (`models/wan/causal_stream_inference.py`: `prepare`,
`inference_stream`, `inference_wo_batch`; `models/wan/causal_model.py`: its KV cache;
`streamv2v/inference.py`: the loop around them, the noise controller and the RoPE refresh),
CausVid ca21150 (`causvid/models/wan/causal_inference.py`) and Self-Forcing 33593df
(`pipeline/causal_inference.py`; `wan/modules/causal_model.py`: its rolling cache).

Each reference keeps upstream's own cache layout: per layer, one token buffer per row written at
the offsets its global and local end indices give, with StreamDiffusionV2's eviction queue and
step counter, or Self-Forcing's shift-left window with sinks; and upstream's timestep table, noise
controller, warm-up rows and loops. What it shares with the pipeline is only what is checked on
its own elsewhere: the transformer's layers (`forward_attending`), the VAE, the prompt encoder,
picture conversion, and the keyed noise (standing in for upstream's `randn_like`, so both draw
the same numbers).

The pipelines are tiny-video's architecture with a family preset's settings (step lists, shift,
blocks, latent convention, cache layout): what is checked is what a family's preset does with no
flags. The one setting changed is the eviction of StreamDiffusionV2's presets (adaptive sinks,
which we decide on the first layer for all layers: docs/video.md); the references run upstream's
`fast` configuration's FIFO (`adapt_sink_threshold: -1`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.video.loading import load_video_models
from models.video.presets import get_video_preset
from pipelines.pictures import picture_to_tensor, tensor_to_pictures
from pipelines.rolling_kv.pipeline import RollingKVPipeline
from pipelines.rolling_kv.sampler import keyed_noise
from streaming.frames import VideoFrame

SIZE = 64


class RecordingVAE:
    """A VAE that keeps every latent chunk it decodes: what a loop outputs, compared in float
    before pictures round it to uint8 (the tiny model's pictures move little with its context)."""

    def __init__(self, vae):
        self.vae = vae
        self.decoded: list[torch.Tensor] = []

    def __getattr__(self, name):
        return getattr(self.vae, name)

    def decode(self, latents, state):
        self.decoded.append(latents.clone())
        return self.vae.decode(latents, state)

    def take(self) -> torch.Tensor:
        latents, self.decoded = torch.cat(self.decoded, dim=2), []
        return latents


def family_pipeline(name: str) -> RollingKVPipeline:
    """tiny-video's models with the settings of the family preset `name`."""
    family = get_video_preset(name)
    preset = dataclasses.replace(family, name="tiny-video", architecture=None, base_model=None, checkpoint=None,
                                 offload_text_encoder=False, defaults={**family.defaults, "width": SIZE, "height": SIZE})
    models = load_video_models(preset, device="cpu")
    return RollingKVPipeline(dataclasses.replace(models, vae=RecordingVAE(models.vae)))


@pytest.fixture(scope="module")
def sdv2():
    return family_pipeline("wan-causal-1.3b")


@pytest.fixture(scope="module")
def causvid():
    return family_pipeline("causvid-1.3b")


@pytest.fixture(scope="module")
def self_forcing():
    return family_pipeline("self-forcing-1.3b")


def clip(n: int, seed: int = 0) -> list[np.ndarray]:
    """A square moving at changing speed over texture: the motion-aware noise level varies."""
    rng = np.random.default_rng(seed)
    base = (rng.integers(0, 256, (SIZE, SIZE, 3)) * 0.6).astype(np.uint8)
    frames, x = [], 4
    for k in range(n):
        x = (x + (k % 7)) % 40
        img = base.copy()
        img[10:30, x : x + 20] = (255, 200, 40)
        frames.append(img)
    return frames


# ---- upstream's arithmetic -----------------------------------------------------------------------


class FlowMatch:
    """DiffSynth's FlowMatchScheduler(shift, sigma_min=0, extra_one_step=True), 1000 training
    steps, as the upstream wrappers build it: sigmas are looked up at the nearest timestep."""

    def __init__(self, shift: float):
        sigmas = torch.linspace(1.0, 0.0, 1001)[:-1]
        self.sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
        self.timesteps = self.sigmas * 1000

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        index = torch.argmin((self.timesteps.double()[None] - t.double().reshape(-1, 1)).abs(), dim=1)
        return self.sigmas[index].double()

    def to_x0(self, flow: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The wrapper's `_convert_flow_pred_to_x0`, per row (in float64, as upstream)."""
        return (xt.double() - self.sigma(t).view(-1, 1, 1, 1, 1) * flow.double()).float()

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: float) -> torch.Tensor:
        sigma = self.sigma(torch.tensor([t])).float()
        return (1 - sigma) * x0 + sigma * noise


def noise_scale_and_step(previous_image: torch.Tensor, pictures: torch.Tensor, noise_scale: float, init_noise_scale: float):
    """streamv2v/inference.py `compute_noise_scale_and_step`; pictures (F, 3, H, W) in [-1, 1]."""
    video = torch.cat([previous_image[None], pictures])
    l2 = ((video[1:] - video[:-1]) ** 2).mean(dim=(1, 2, 3))
    l2 = (torch.sqrt(l2).max() / 0.2).clamp(0, 1)
    new_noise_scale = (init_noise_scale - 0.1 * l2.item()) * 0.9 + noise_scale * 0.1
    return new_noise_scale, int(1000 * new_noise_scale) - 100


class Model:
    """The upstream wrapper's forward: flow prediction turned into x0, over a given cache."""

    def __init__(self, pipe: RollingKVPipeline, params, cache):
        m = pipe.models
        self.transformer, self.cache = m.transformer, cache
        self.text = m.text_kv(m.prompt_states(params.prompt))
        self.scheduler = FlowMatch(m.preset.scheduler_shift)
        self.frame_tokens = m.transformer.tokens_per_frame(*m.latent_size(params.width, params.height))

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, timesteps: list[float], starts: list[int]) -> torch.Tensor:
        """x (R, C, F, h, w); one timestep and one start (in tokens) per row."""
        rows, frames = x.shape[0], x.shape[2]
        t = torch.tensor(timesteps, dtype=torch.float64)
        positions = torch.tensor([[s // self.frame_tokens + f for f in range(frames)] for s in starts])
        flow = self.transformer.forward_attending(
            x, t.float()[:, None].expand(rows, frames), self.text.expand(rows), positions,
            lambda layer, q, k, v: self.cache.attend(layer, q, k, v, starts))
        return self.scheduler.to_x0(flow, x, t)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q[None], k[None], v[None])[0]


class StreamDiffusionV2Cache:
    """causal_model.py's self-attention cache for every layer: per row a buffer of
    cache_frames * frame_tokens tokens, `global_end`/`local_end` per layer and row, the eviction
    queue of slot ends per layer and row, and the per-layer step counter that holds the queue
    while a single-row cache writes a chunk's later steps."""

    def __init__(self, layers, heads, head_dim, frame_tokens, cache_frames, sink_frames, steps):
        self.size, self.fsl, self.sink_tokens = cache_frames * frame_tokens, frame_tokens, sink_frames * frame_tokens
        self.k = torch.zeros(layers, 1, heads, self.size, head_dim)
        self.v = torch.zeros_like(self.k)
        self.global_end = [[0] for _ in range(layers)]
        self.local_end = [[0] for _ in range(layers)]
        self.queue: list[list[list[int]]] = [[[]] for _ in range(layers)]
        self.total_steps = steps
        self.current_step = [steps] * layers

    def repeat(self, rows: int) -> None:
        """The end of `prepare`: the one-row cache copied to `rows` rows (the queue is copied
        from row 0 at the first write with more rows)."""
        self.k, self.v = self.k.repeat(1, rows, 1, 1, 1), self.v.repeat(1, rows, 1, 1, 1)
        self.global_end = [ends * rows for ends in self.global_end]
        self.local_end = [ends * rows for ends in self.local_end]
        self.queue = [[list(q[0]) for _ in range(rows)] for q in self.queue]

    def attend(self, layer, q, k, v, starts):
        rows, new = q.shape[0], q.shape[2]
        outs = []
        for i, start in enumerate(starts):
            end, queue = start + new, self.queue[layer][i]
            if end > self.size or self.local_end[layer][i] >= self.size:
                target = queue[0]
                if rows == 1 and self.current_step[layer] > 1:
                    self.current_step[layer] -= 1  # the same frame's next step writes the same target
                else:
                    popped = queue.pop(0)
                    if popped > self.sink_tokens:
                        queue.append(popped)
                    self.current_step[layer] = self.total_steps
                local = self.size
                written = slice(target - new, target)
            else:
                local = self.local_end[layer][i] + end - self.global_end[layer][i]
                rolling_end = end + new
                if self.sink_tokens < rolling_end <= self.size and (not queue or queue[-1] != rolling_end):
                    queue.append(rolling_end)
                written = slice(local - new, local)
            self.k[layer, i, :, written], self.v[layer, i, :, written] = k[i], v[i]
            self.global_end[layer][i], self.local_end[layer][i] = end, local
            outs.append(_attend(q[i], self.k[layer, i, :, :local], self.v[layer, i, :, :local]))
        return torch.stack(outs)


class SelfForcingCache:
    """Self-Forcing's causal_model.py cache (one row): a buffer of `local_attn_size` frames; when
    a new block does not fit, everything after the sink frames shifts left by the overflow and the
    block goes at the end; attention over the last `local_attn_size` frames. CausVid's cache is the
    same while nothing overflows (21 frames, written at absolute offsets)."""

    def __init__(self, layers, heads, head_dim, frame_tokens, cache_frames, sink_frames):
        self.size, self.sink_tokens = cache_frames * frame_tokens, sink_frames * frame_tokens
        self.k = torch.zeros(layers, heads, self.size, head_dim)
        self.v = torch.zeros_like(self.k)
        self.global_end, self.local_end = [0] * layers, [0] * layers

    def attend(self, layer, q, k, v, starts):
        (start,), new = starts, q.shape[2]
        end, keys, values = start + new, self.k[layer], self.v[layer]
        if end > self.global_end[layer] and new + self.local_end[layer] > self.size:
            evicted = new + self.local_end[layer] - self.size
            rolled = self.local_end[layer] - evicted - self.sink_tokens
            src = slice(self.sink_tokens + evicted, self.sink_tokens + evicted + rolled)
            keys[:, self.sink_tokens : self.sink_tokens + rolled] = keys[:, src].clone()
            values[:, self.sink_tokens : self.sink_tokens + rolled] = values[:, src].clone()
            local = self.local_end[layer] + end - self.global_end[layer] - evicted
        else:
            local = self.local_end[layer] + end - self.global_end[layer]
        keys[:, local - new : local], values[:, local - new : local] = k[0], v[0]
        self.global_end[layer], self.local_end[layer] = end, local
        window = slice(max(0, local - self.size), local)
        return _attend(q[0], keys[:, window], values[:, window])[None]


# ---- upstream's loops ----------------------------------------------------------------------------


@torch.no_grad()
def streamdiffusionv2(pipe: RollingKVPipeline, params, chunks: int, pictures: list[np.ndarray] | None = None,
                      batch: bool = True) -> list[np.ndarray]:
    """streamv2v/inference.py (stream batch: `prepare` then `inference_stream`) or
    inference_wo_batch.py (`prepare(batch_denoise=False)` then `inference_wo_batch`): the first
    `chunks` chunks, decoded. txt2img feeds noise chunks, as `--t2v` does."""
    m = pipe.models
    listed = params.v2v_timesteps if params.mode == "img2img" else params.t2v_timesteps
    steps = [float(t) for t in listed[: params.steps]]
    tokens = m.transformer.tokens_per_frame(*m.latent_size(params.width, params.height))
    cache = StreamDiffusionV2Cache(m.transformer.config.num_layers, m.transformer.heads, m.transformer.config.attention_head_dim,
                                   tokens, params.kv_cache_frames, params.sink_frames, len(steps))
    model = Model(pipe, params, cache)
    vae_in, vae_out = m.vae.new_state(), m.vae.new_state()
    h, w = m.latent_size(params.width, params.height)
    seed, first_latents, chunk_latents = params.seed, params.first_chunk_latents, params.chunk_latents
    out: list[np.ndarray] = []

    def decode(x0):
        out.extend(tensor_to_pictures(m.vae.decode(x0, vae_out)[0].transpose(0, 1)))

    def to_tensor(images):
        return torch.stack([picture_to_tensor(p, params.width, params.height, m.device, m.dtype)[0] for p in images])

    # The first chunk: `prepare` runs every step on one row, starting at the list's first step.
    used = 1 + 4 * (first_latents - 1)
    if params.mode == "img2img":
        first = to_tensor(pictures[:used])
        latents = m.vae.encode(first.transpose(0, 1)[None], vae_in, normalise=m.preset.normalise_encoded)
        noisy = keyed_noise(seed, 0, 0, latents.shape, m.device, m.dtype) * params.strength + latents * (1 - params.strength)
        last_image, noise_scale = first[-1], params.strength
    else:
        noisy = keyed_noise(seed, 0, 0, (1, m.latent_channels, first_latents, h, w), m.device, m.dtype)
    for index, t in enumerate(steps):
        x0 = model(noisy, [t], [0])
        if index < len(steps) - 1:
            noisy = model.scheduler.add_noise(x0, keyed_noise(seed, 0, index + 1, x0.shape, m.device, m.dtype), steps[index + 1])
    decode(x0)
    rows = len(steps) if batch else 1
    if batch:
        cache.repeat(rows)
    hidden = torch.zeros(rows, m.latent_channels, chunk_latents, h, w)
    row_starts, row_frames = [first_latents * tokens] * rows, [-1] * rows  # warm-up rows: zeros at the next frame's place
    start, frame, processed = first_latents * tokens, first_latents, 0
    total = used + 4 * chunk_latents * (chunks - 1)
    while len(out) < total:
        real = frame < first_latents + chunk_latents * (chunks - 1)
        current_step = None
        if real and params.mode == "img2img":
            images = to_tensor(pictures[used : used + 4 * chunk_latents])
            used += 4 * chunk_latents
            noise_scale, current_step = noise_scale_and_step(last_image, images, noise_scale, params.strength)
            last_image = images[-1]
            latents = m.vae.encode(images.transpose(0, 1)[None], vae_in, normalise=m.preset.normalise_encoded)
            noisy = keyed_noise(seed, frame, 0, latents.shape, m.device, m.dtype) * noise_scale + latents * (1 - noise_scale)
        else:  # txt2img, or noise that flushes the stream batch at the end
            noisy = keyed_noise(seed, frame, 0, (1, m.latent_channels, chunk_latents, h, w), m.device, m.dtype)
        if start // tokens >= params.reset_at:  # the RoPE refresh (t_refresh)
            start = (params.kv_cache_frames - 1) * tokens
        timesteps = [float(current_step) if current_step is not None else steps[0], *steps[1:]]
        if batch:  # inference_stream
            hidden = torch.cat([noisy, hidden[:-1]])
            row_starts, row_frames = [start, *row_starts[:-1]], [frame, *row_frames[:-1]]
            x0 = model(hidden, timesteps, row_starts)
            hidden = torch.cat([*(model.scheduler.add_noise(x0[i : i + 1], keyed_noise(seed, row_frames[i], i + 1, x0[:1].shape,
                                                                                     m.device, m.dtype), steps[i + 1])
                                  for i in range(rows - 1)), x0[rows - 1 :]])
            processed += 1
            if processed >= rows and row_frames[-1] < first_latents + chunk_latents * (chunks - 1):
                decode(x0[-1:])
        else:  # inference_wo_batch
            for index, t in enumerate(timesteps):
                x0 = model(noisy, [t], [start])
                if index < len(steps) - 1:
                    noisy = model.scheduler.add_noise(x0, keyed_noise(seed, frame, index + 1, x0.shape, m.device, m.dtype), steps[index + 1])
            if real:
                decode(x0)
        start += chunk_latents * tokens
        frame += chunk_latents
    return out


@torch.no_grad()
def blockwise(pipe: RollingKVPipeline, params, blocks: int) -> list[np.ndarray]:
    """CausVid's and Self-Forcing's `inference` (text-to-video): per block every step one after
    another, the output, then the block re-run at t=0 (`context_noise`) to write clean keys."""
    m = pipe.models
    steps = [float(t) for t in params.t2v_timesteps[: params.steps]]
    tokens = m.transformer.tokens_per_frame(*m.latent_size(params.width, params.height))
    cache = SelfForcingCache(m.transformer.config.num_layers, m.transformer.heads, m.transformer.config.attention_head_dim,
                             tokens, params.kv_cache_frames, params.sink_frames)
    model = Model(pipe, params, cache)
    vae_out = m.vae.new_state()
    h, w = m.latent_size(params.width, params.height)
    out: list[np.ndarray] = []
    frame = 0
    for b in range(blocks):
        count = params.first_chunk_latents if b == 0 else params.chunk_latents
        noisy = keyed_noise(params.seed, frame, 0, (1, m.latent_channels, count, h, w), m.device, m.dtype)
        for index, t in enumerate(steps):
            x0 = model(noisy, [t], [frame * tokens])
            if index < len(steps) - 1:
                noisy = model.scheduler.add_noise(x0, keyed_noise(params.seed, frame, index + 1, x0.shape, m.device, m.dtype),
                                                  steps[index + 1])
        out.extend(tensor_to_pictures(m.vae.decode(x0, vae_out)[0].transpose(0, 1)))
        model(x0, [0.0], [frame * tokens])
        frame += count
    return out


# ---- running the pipeline -------------------------------------------------------------------------


def run_video(pipe, params, pictures) -> list[np.ndarray]:
    state = pipe.new_state(params)
    out = []
    for k, picture in enumerate(pictures):
        out.extend(f.image for f in pipe.step([(state, VideoFrame(picture, k, k / 16, "s"))])[0].frames)
    while pipe.in_flight(state):
        out.extend(f.image for f in pipe.step([(state, None)])[0].frames)
    return out


def run_text(pipe, params, count) -> list[np.ndarray]:
    state = pipe.new_state(params)
    out: list[np.ndarray] = []
    while len(out) < count:
        out.extend(f.image for f in pipe.step([(state, None)])[0].frames)
    return out[:count]


def assert_same_output(pipe, ours: Callable[[], list[np.ndarray]], reference: Callable[[], list[np.ndarray]]) -> None:
    """The pipeline's output equals the reference's: every decoded latent within float tolerance,
    and the pictures up to rounding at a uint8 boundary."""
    pipe.models.vae.decoded.clear()
    expected_pictures, expected = reference(), pipe.models.vae.take()
    pictures, latents = ours(), pipe.models.vae.take()
    assert len(pictures) == len(expected_pictures) and latents.shape == expected.shape
    torch.testing.assert_close(latents, expected, atol=2e-5, rtol=1e-4)
    diff = np.abs(np.stack(pictures).astype(int) - np.stack(expected_pictures).astype(int))
    assert diff.max() <= 1 and diff.mean() < 1e-3


def pictures_of(params, chunks: int) -> int:
    return 1 + 4 * (params.first_chunk_latents - 1) + 4 * params.chunk_latents * (chunks - 1)


# Chunks: 3 stay inside the 6-frame cache (first chunk and steady state, nothing evicted); 30
# evict for 24 chunks and pass the RoPE refresh (reset at frame 12, back to 5) twice.
LENGTHS = {"no eviction": 3, "eviction": 30}


@pytest.mark.parametrize("steps", [2, 3])
@pytest.mark.parametrize("length", LENGTHS)
def test_stream_batch_video_to_video_equals_streamdiffusionv2(sdv2, steps, length):
    params = sdv2.params_model(prompt="oil painting", steps=steps, eviction="fifo", reset_at=12)
    assert (params.kv_mode, params.first_chunk_latents, params.chunk_latents) == ("stream-batch", 2, 1)
    pictures = clip(pictures_of(params, LENGTHS[length]))
    assert_same_output(sdv2, lambda: run_video(sdv2, params, pictures), lambda: streamdiffusionv2(sdv2, params, LENGTHS[length], pictures))


@pytest.mark.parametrize("steps", [2, 3])
@pytest.mark.parametrize("length", LENGTHS)
def test_single_slot_video_to_video_equals_streamdiffusionv2_without_batch(sdv2, steps, length):
    params = sdv2.params_model(prompt="charcoal", steps=steps, kv_mode="single-slot", eviction="fifo", reset_at=12)
    assert params.step_rewrite == "next-slot"
    pictures = clip(pictures_of(params, LENGTHS[length]), seed=1)
    assert_same_output(sdv2, lambda: run_video(sdv2, params, pictures),
                       lambda: streamdiffusionv2(sdv2, params, LENGTHS[length], pictures, batch=False))


@pytest.mark.parametrize("kv_mode", ["stream-batch", "single-slot"])
@pytest.mark.parametrize("length", LENGTHS)
def test_text_to_video_equals_streamdiffusionv2(sdv2, kv_mode, length):
    params = sdv2.params_model(prompt="a koi pond", mode="txt2img", steps=2, kv_mode=kv_mode, eviction="fifo", reset_at=12, seed=3)
    assert_same_output(sdv2, lambda: run_text(sdv2, params, pictures_of(params, LENGTHS[length])),
                       lambda: streamdiffusionv2(sdv2, params, LENGTHS[length], batch=kv_mode == "stream-batch"))


def test_the_own_slot_single_slot_mode_is_upstream_until_the_cache_is_full_and_differs_after(sdv2):
    """`same-slot` keeps every chunk's last step in its own slot: the same as upstream while the
    cache has room, not once it is full."""
    params = sdv2.params_model(prompt="charcoal", steps=2, kv_mode="single-slot", step_rewrite="same-slot", eviction="fifo")
    pictures = clip(pictures_of(params, 12), seed=1)
    sdv2.models.vae.decoded.clear()
    streamdiffusionv2(sdv2, params, 12, pictures, batch=False)
    upstream = sdv2.models.vae.take()
    run_video(sdv2, params, pictures)
    ours = sdv2.models.vae.take()
    # Latent frames 0-4 agree; frame 5 fills the cache, and upstream's second step of it evicts frame 3.
    torch.testing.assert_close(ours[:, :, :5], upstream[:, :, :5], atol=2e-5, rtol=1e-4)
    assert (ours[:, :, 5:] - upstream[:, :, 5:]).abs().amax(dim=(0, 1, 3, 4)).min() > 1e-3


def test_causvid_text_to_video_equals_its_blockwise_loop(causvid):
    params = causvid.params_model(prompt="a red fox in snow")  # the preset's defaults: 3 steps, 3-frame blocks, t=0 pass
    assert (params.mode, params.kv_mode, params.t2v_timesteps, params.first_chunk_latents) == ("txt2img", "clean-context", [1000, 757, 522], 3)
    # 7 blocks, 21 latent frames (81 pictures): CausVid's whole cache, nothing evicted.
    assert_same_output(causvid, lambda: run_text(causvid, params, 81), lambda: blockwise(causvid, params, 7))


def test_self_forcing_text_to_video_equals_its_loop_with_a_rolling_window(self_forcing):
    params = self_forcing.params_model(prompt="a lighthouse at night", kv_cache_frames=9, sink_frames=3)
    assert params.steps == 4 and params.t2v_timesteps[1] == 937.5  # warped by shift 5
    # 8 blocks, 24 latent frames through a 9-frame window: it evicts from the 4th block on.
    assert_same_output(self_forcing, lambda: run_text(self_forcing, params, 9 + 12 * 7), lambda: blockwise(self_forcing, params, 8))


def test_the_first_stream_batch_chunk_runs_on_one_row_copied_to_every_row(sdv2):
    """`prepare`: every row holds the first chunk's last-step keys (before, row i held step i's)."""
    params = sdv2.params_model(prompt="x", steps=3, eviction="fifo")
    state = sdv2.new_state(params)
    for k, picture in enumerate(clip(5)):
        sdv2.step([(state, VideoFrame(picture, k))])
    cache = state.cache
    for row in range(1, 3):
        torch.testing.assert_close(cache.k[:, row], cache.k[:, 0], rtol=0, atol=0)
        assert cache.tables[row] == cache.tables[0]


def test_presets_carry_their_familys_upstream_settings():
    sdv2, sdv2_14b = get_video_preset("wan-causal-1.3b"), get_video_preset("wan-causal-14b")
    for preset, steps in ((sdv2, 2), (sdv2_14b, 1)):
        d = preset.defaults
        assert (preset.scheduler_shift, preset.normalise_encoded) == (8.0, False)
        assert d["v2v_timesteps"] == [700, 500, 400, 200] and d["steps"] == steps
        assert (d["first_chunk_latents"], d["chunk_latents"], d["kv_cache_frames"], d["sink_frames"]) == (2, 1, 6, 3)
        assert (d["kv_mode"], d["positions"], d["reset_at"], d["eviction"]) == ("stream-batch", "periodic-reset", 50, "adaptive-sink")
    sf, cv = get_video_preset("self-forcing-1.3b"), get_video_preset("causvid-1.3b")
    assert (sf.scheduler_shift, sf.normalise_encoded, cv.scheduler_shift) == (5.0, True, 8.0)
    assert sf.defaults["t2v_timesteps"] == pytest.approx([1000, 937.5, 833.333, 625], abs=1e-3)
    assert cv.defaults["t2v_timesteps"] == [1000, 757, 522]
    for preset in (sf, cv):
        d = preset.defaults
        assert (d["mode"], d["kv_mode"], d["first_chunk_latents"], d["chunk_latents"], d["positions"]) == (
            "txt2img", "clean-context", 3, 3, "absolute")
        assert preset.checkpoint is not None and preset.config_json("transformer")["num_layers"] == 30


@torch.no_grad()
def test_streamdiffusionv2_feeds_raw_latents_and_decodes_normalised_ones(sdv2):
    vae = sdv2.models.vae
    video = torch.rand(1, 3, 5, SIZE, SIZE) * 2 - 1
    raw, normalised = vae.encode(video, vae.new_state(), normalise=False), vae.encode(video, vae.new_state())
    mean, std = vae.latents_mean.view(1, -1, 1, 1, 1), vae.latents_std.view(1, -1, 1, 1, 1)
    torch.testing.assert_close(normalised, (raw - mean) / std)
    assert not torch.allclose(raw, normalised, atol=0.1)
    # The convention is the preset's: the same stream with normalised input latents looks different.
    params = sdv2.params_model(prompt="x", steps=1, eviction="fifo")
    pictures = clip(9)
    normalising = RollingKVPipeline(dataclasses.replace(sdv2.models, preset=dataclasses.replace(sdv2.models.preset, normalise_encoded=True)))
    vae.decoded.clear()
    run_video(sdv2, params, pictures)
    raw_output = sdv2.models.vae.take()
    run_video(normalising, params, pictures)
    assert (raw_output - sdv2.models.vae.take()).abs().mean() > 0.01
