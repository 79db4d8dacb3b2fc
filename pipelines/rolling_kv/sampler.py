"""Flow-matching arithmetic of the causal video models, and counter-based noise.

x_t = (1 - sigma) * x0 + sigma * noise; the model predicts the flow v = noise - x0, so
x0 = x_t - sigma * v. A timestep t in [0, 1000] maps to sigma = t / 1000, warped by the preset's
shift when its checkpoint was distilled that way.

Noise is keyed by (seed, latent frame, step) rather than drawn from a running generator, so the
same chunk gets the same noise however the steps are batched: the stream batch and its sequential
reference draw identical numbers.
"""

from __future__ import annotations

import torch

# StreamDiffusionV2's step lists: after the first step (adaptive for video-to-video) the rest
# follow these, scaled to the stream's strength (0.8 gives them exactly).
V2V_STEPS = (700, 500, 400, 200)
V2V_REFERENCE_STRENGTH = 0.8
T2V_STEPS = (1000, 750, 500, 250)
CONDITION_OFFSET = 100  # the conditioning timestep sits 0.1 (in sigma) below the injected noise


def sigma_of(t: torch.Tensor | float, shift: float = 1.0) -> torch.Tensor:
    s = torch.as_tensor(t, dtype=torch.float64) / 1000.0
    return shift * s / (1 + (shift - 1) * s)


def condition_timestep(noise_sigma: float) -> float:
    """The timestep the model is told for a latent injected with noise level `noise_sigma`."""
    return max(1.0, 1000.0 * noise_sigma - CONDITION_OFFSET)


def step_timesteps(mode: str, steps: int, strength: float) -> list[float]:
    """Nominal timesteps of a chunk's steps; for img2img the first is replaced per chunk."""
    if mode == "txt2img":
        return [float(t) for t in T2V_STEPS[:steps]]
    scale = condition_timestep(strength) / V2V_STEPS[0]
    return [float(t) * scale for t in V2V_STEPS[:steps]]


def predicted_x0(x: torch.Tensor, flow: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x0 from the flow prediction; sigma broadcast per row and frame, shape (R, 1, F, 1, 1)."""
    return (x.float() - sigma * flow.float()).to(x.dtype)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    return ((1 - sigma) * x0.float() + sigma * noise.float()).to(x0.dtype)


def keyed_noise(seed: int, frame: int, step: int, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Gaussian noise that depends only on (seed, latent frame, step)."""
    generator = torch.Generator("cpu").manual_seed((seed * 1_000_003 + frame * 131 + step) % 2**63)
    return torch.randn(shape, generator=generator).to(device, dtype)
