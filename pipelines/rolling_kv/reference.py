"""Plain sequential generation of a stream, chunk after chunk, step after step.

What the stream batch must equal: the first chunk runs all its steps on cache row 0, which is
then copied to every row (StreamDiffusionV2's `prepare`); every later chunk runs its steps one
after another, step i attending over (and writing into) its own cache row i, with the same keyed
noise. No slots, no batching, no warm-up: the equivalence test compares the pipeline's pictures
with these, and the benchmark times them side by side. (tests/test_video_upstream.py compares the
pipeline with the upstream loops themselves, in upstream's own cache layout.)
"""

from __future__ import annotations

import numpy as np
import torch

from models.video.flow_match import sigma_at
from models.video.transformer import CachedRows
from models.video.vae import pixel_frames
from pipelines.pictures import picture_to_tensor, tensor_to_pictures
from pipelines.rolling_kv.noise_controller import MotionNoiseController
from pipelines.rolling_kv.params import RollingKVParams
from pipelines.rolling_kv.pipeline import RollingKVPipeline, eviction_policy, position_policy
from pipelines.rolling_kv.sampler import add_noise, condition_timestep, keyed_noise, predicted_x0, step_timesteps


@torch.no_grad()
def generate_sequential(
    pipeline: RollingKVPipeline, params: RollingKVParams, chunks: int, pictures: list[np.ndarray] | None = None
) -> list[np.ndarray]:
    """The first `chunks` chunks of a stream with `params` in stream-batch semantics, as uint8
    pictures. img2img takes `pictures` (already at the stream's size); txt2img takes none."""
    m = pipeline.models
    shift = m.preset.scheduler_shift
    frame_tokens = m.transformer.tokens_per_frame(*m.latent_size(params.width, params.height))
    cache = m.new_cache(params.steps, params.width, params.height, params.sink_frames, params.window_frames,
                        eviction_policy(params, frame_tokens), position_policy(params))
    text = m.text_kv(m.prompt_states(params.prompt))
    vae_in, vae_out = m.vae.new_state(), m.vae.new_state()
    controller = MotionNoiseController()
    timesteps = step_timesteps(params)
    h, w = m.latent_size(params.width, params.height)
    out: list[np.ndarray] = []
    frame, used = 0, 0
    for k in range(chunks):
        latents_count = params.first_chunk_latents if k == 0 else params.chunk_latents
        frames = list(range(frame, frame + latents_count))
        frame += latents_count
        if params.mode == "txt2img":
            x = keyed_noise(params.seed, frames[0], 0, (1, m.latent_channels, latents_count, h, w), m.device, m.dtype)
            first_t = timesteps[0]
        else:
            count = pixel_frames(latents_count, k == 0)
            chunk = torch.stack([picture_to_tensor(p, params.width, params.height, m.device, m.dtype)[0] for p in pictures[used : used + count]])
            used += count
            z = m.vae.encode(chunk.transpose(0, 1)[None], vae_in, normalise=m.preset.normalise_encoded)
            sigma = controller.next_sigma(chunk, params.strength, params.motion_aware)
            x = add_noise(z, keyed_noise(params.seed, frames[0], 0, tuple(z.shape), m.device, m.dtype), sigma)
            first_t = timesteps[0] if k == 0 else condition_timestep(sigma)
        for i in range(params.steps):
            t = first_t if i == 0 else timesteps[i]
            row = 0 if k == 0 else i
            plan = cache.begin_write(range(row, row + 1), [frames])
            model_t = torch.full((1, latents_count), float(t))
            flow = m.transformer.forward_cached(x, model_t, text, [CachedRows(cache, plan, 0)])
            x0 = predicted_x0(x, flow, float(sigma_at(t, shift)))
            if i < params.steps - 1:
                noise = keyed_noise(params.seed, frames[0], i + 1, tuple(x0.shape), m.device, m.dtype)
                x = add_noise(x0, noise, float(sigma_at(timesteps[i + 1], shift)))
        if k == 0:
            for row in range(1, params.steps):
                cache.copy_row(0, row)
        out.extend(tensor_to_pictures(m.vae.decode(x0, vae_out)[0].transpose(0, 1)))
    return out
