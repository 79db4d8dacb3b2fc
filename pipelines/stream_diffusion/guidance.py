"""Residual classifier-free guidance (RCFG), as StreamDiffusion defines it.

The negative ("unconditional") noise either comes from a real UNet pass with the negative
prompt (`full` every step, `onetime` once per frame) or is approximated by the stream's
*residual noise* S: the noise that would explain the current latent if the clean image were the
input frame. Steering away from S steers away from "reproduce the input" for free (`self`).
"""

from __future__ import annotations

import torch

from pipelines.stream_diffusion.sampler import StepTables, denoised


def cfg_active(cfg_type: str, guidance_scale: float) -> bool:
    return cfg_type != "none" and guidance_scale > 1.0


def guided_noise(eps_cond: torch.Tensor, eps_uncond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    return eps_uncond + guidance_scale * (eps_cond - eps_uncond)


def next_residual_noise(
    residual: torch.Tensor, eps: torch.Tensor, tables: StepTables, next_alpha: torch.Tensor,
    next_beta: torch.Tensor, next_noise: torch.Tensor,
) -> torch.Tensor:
    """S for the next step of each row: the new noise plus what the step left of the residual.

    Applying the denoising step to β·S instead of x gives how far the prediction moved the
    residual; rescaled by α_next/β_next it is expressed at the next noise level.
    """
    moved = denoised(tables.beta * residual, eps, tables)
    return next_noise + moved * next_alpha / next_beta
