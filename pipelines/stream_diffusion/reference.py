"""Plain sequential denoising of one frame: N UNet calls one after another.

This is what Stream Batch must equal: the equivalence tests compare the pipeline's output for
frame k with this function applied to frame k alone (same tables, noise and embeddings), and
the benchmark times it against the pipelined version. With creative controls the frame is
denoised under its own control images at every step, with the stream's image prompt and LoRAs
(docs/control.md), through the same per-row UNet call the pipeline makes.
"""

from __future__ import annotations

import numpy as np
import torch

from pipelines.pictures import picture_to_tensor
from pipelines.stream_diffusion import control
from pipelines.stream_diffusion.guidance import cfg_active, guided_noise, next_residual_noise
from pipelines.stream_diffusion.pipeline import StreamDiffusionPipeline
from pipelines.stream_diffusion.sampler import denoised, noise_from_model_output
from pipelines.stream_diffusion.state import StreamState


@torch.no_grad()
def denoise_sequential(
    pipeline: StreamDiffusionPipeline, state: StreamState, image: np.ndarray | None = None, start: torch.Tensor | None = None,
    control_images: control.FrameImages | None = None,
) -> torch.Tensor:
    """x0 latent of one frame after the stream's N steps. img2img takes `image`; txt2img takes
    `start`, the noise latent at the first step; `control_images` are the frame's ControlNet
    images. Reads the state, never changes it."""
    m, p, n = pipeline.models, state.params, state.num_steps

    def predict(x, t, embeds, guidance):
        rows = control.row_controls(p, state.controls, [control_images], control_images, guidance) if control.active(p) else None
        return pipeline.predict_rows(x, t, embeds, rows) if rows else m.predict(x, t, embeds)

    if image is not None:
        z = m.encode_images(picture_to_tensor(image, p.width, p.height, m.device, m.dtype))
        x = state.tables.alpha[0] * z + state.tables.beta[0] * state.init_noise[0:1]
    else:
        x = start
    residual = state.init_noise[0:1]
    x0 = x
    for j in range(n):
        tables = state.tables.rows(torch.tensor([j]))
        t = tables.timesteps
        eps = noise_from_model_output(predict(x, t, state.cond, False), x, tables, m.prediction_type)
        if cfg_active(p.cfg_type, p.guidance_scale):
            if p.cfg_type == "full" or (p.cfg_type == "onetime" and j == 0):
                eps_uncond = noise_from_model_output(predict(x, t, state.uncond, True), x, tables, m.prediction_type)
                if p.cfg_type == "onetime":
                    residual = eps_uncond
                    eps_uncond = p.delta * residual
            else:
                eps_uncond = p.delta * residual
            eps = guided_noise(eps, eps_uncond, p.guidance_scale)
        x0 = denoised(x, eps, tables)
        if j == n - 1:
            break
        next_alpha, next_beta = state.tables.alpha[j + 1], state.tables.beta[j + 1]
        next_noise = state.init_noise[j + 1 : j + 2]
        residual = next_residual_noise(residual, eps, tables, next_alpha, next_beta, next_noise)
        x = next_alpha * x0 + (next_beta * next_noise if p.add_noise else 0)
    return x0
