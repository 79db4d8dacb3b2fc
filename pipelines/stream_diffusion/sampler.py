"""LCM timestep tables and the one-step denoising formula shared by every slot.

StreamDiffusion discretises the 1000 training timesteps into 50 LCM steps, so t_index i is
timestep 999 - 20*i. For each step of a stream's `t_index_list` we precompute √ᾱ (alpha),
√(1-ᾱ) (beta) and LCM's boundary-condition scalings; a slot j always uses row j.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipelines.stream_diffusion.params import NUM_T_INDICES

# LCM's boundary condition: sigma_data and the timestep scaling of LCMScheduler.
SIGMA_DATA = 0.5
TIMESTEP_SCALING = 10.0


def lcm_timestep(index: int, num_train_timesteps: int = 1000) -> int:
    stride = num_train_timesteps // NUM_T_INDICES
    return (NUM_T_INDICES - index) * stride - 1


@dataclass
class StepTables:
    """Per-step constants, each of shape (N, 1, 1, 1) except `timesteps` (N,)."""

    timesteps: torch.Tensor
    alpha: torch.Tensor
    beta: torch.Tensor
    c_skip: torch.Tensor
    c_out: torch.Tensor

    def __len__(self) -> int:
        return self.timesteps.shape[0]

    def rows(self, slots: torch.Tensor) -> StepTables:
        """The tables for a list of slot indices (a stream's rows in one call)."""
        return StepTables(*(t[slots] for t in (self.timesteps, self.alpha, self.beta, self.c_skip, self.c_out)))


def make_step_tables(
    t_index_list: list[int],
    alphas_cumprod: torch.Tensor,
    boundary_condition: str,
    device: torch.device,
    dtype: torch.dtype,
) -> StepTables:
    timesteps = torch.tensor([lcm_timestep(i, len(alphas_cumprod)) for i in t_index_list], dtype=torch.long)
    abar = alphas_cumprod[timesteps]
    if boundary_condition == "lcm":
        scaled = timesteps.double() * TIMESTEP_SCALING
        c_skip = SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2)
        c_out = scaled / (scaled**2 + SIGMA_DATA**2).sqrt()
    else:  # turbo models: plain x0 estimate
        c_skip, c_out = torch.zeros_like(abar), torch.ones_like(abar)

    def col(x: torch.Tensor) -> torch.Tensor:
        return x.view(-1, 1, 1, 1).to(device=device, dtype=dtype)

    return StepTables(
        timesteps=timesteps.to(device),
        alpha=col(abar.sqrt()),
        beta=col((1 - abar).sqrt()),
        c_skip=col(c_skip),
        c_out=col(c_out),
    )


def noise_from_model_output(output: torch.Tensor, x: torch.Tensor, tables: StepTables, prediction_type: str) -> torch.Tensor:
    """The model's prediction as ε, the space guidance and residual noise work in."""
    if prediction_type == "epsilon":
        return output
    if prediction_type == "v_prediction":
        return tables.alpha * output + tables.beta * x
    if prediction_type == "sample":  # the model predicts x0 directly
        return (x - tables.alpha * output) / tables.beta
    raise ValueError(f"unsupported prediction type {prediction_type!r}")


def denoised(x: torch.Tensor, eps: torch.Tensor, tables: StepTables) -> torch.Tensor:
    """x0 estimate of each row from its noisy latent and predicted noise, with LCM's c_skip/c_out."""
    return tables.c_out * (x - tables.beta * eps) / tables.alpha + tables.c_skip * x
