"""Flow-matching arithmetic of the causal video models, and counter-based noise.

x_t = (1 - sigma) * x0 + sigma * noise; the model predicts the flow v = noise - x0, so
x0 = x_t - sigma * v. The model is told a step's timestep as it is; its sigma is the nearest
entry of the checkpoint's timestep table (`models.video.flow_match.sigma_at`), as in the upstream loops.

A chunk's steps are the first `steps` timesteps of the mode's step list (`v2v_timesteps` or
`t2v_timesteps`, a preset's defaults), as upstream's `--step N` keeps the first N. Video-to-video
replaces the first one from the stream's second chunk on by the motion-aware noise level's
timestep; the others stay as listed whatever the strength (StreamDiffusionV2 keeps its list).

Noise is keyed by (seed, latent frame, step) rather than drawn from a running generator, so the
same chunk gets the same noise however the steps are batched: the stream batch and its sequential
reference draw identical numbers.
"""

from __future__ import annotations

import torch

from pipelines.rolling_kv.params import RollingKVParams

CONDITION_OFFSET = 100  # the conditioning timestep sits 0.1 (in sigma) below the injected noise


def condition_timestep(noise_sigma: float) -> float:
    """The timestep the model is told for a latent injected with noise level `noise_sigma`:
    StreamDiffusionV2's `int(1000 * sigma) - 100` (truncated, as it does), at least 1."""
    return float(max(1, int(1000 * noise_sigma) - CONDITION_OFFSET))


def step_timesteps(params: RollingKVParams) -> list[float]:
    """Nominal timesteps of a chunk's steps; for img2img the first is replaced per chunk after the first."""
    listed = params.v2v_timesteps if params.mode == "img2img" else params.t2v_timesteps
    return [float(t) for t in listed[: params.steps]]


def predicted_x0(x: torch.Tensor, flow: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x0 from the flow prediction; sigma broadcast per row and frame, shape (R, 1, F, 1, 1)."""
    return (x.float() - sigma * flow.float()).to(x.dtype)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    return ((1 - sigma) * x0.float() + sigma * noise.float()).to(x0.dtype)


def keyed_noise(seed: int, frame: int, step: int, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Gaussian noise that depends only on (seed, latent frame, step)."""
    generator = torch.Generator("cpu").manual_seed((seed * 1_000_003 + frame * 131 + step) % 2**63)
    return torch.randn(shape, generator=generator).to(device, dtype)
