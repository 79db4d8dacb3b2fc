"""The flow-matching timestep table the causal Wan checkpoints were distilled and are run with.

CausVid, Self-Forcing and StreamDiffusionV2 all wrap the model with DiffSynth's flow-matching
scheduler set to 1000 training steps, `sigma_min=0`, one extra step, and a shift (8 for CausVid
and StreamDiffusionV2, 5 for Self-Forcing):

    s_k = linspace(1, 0, 1001)[k]          (float32, k < 1000)
    sigma_k = shift * s_k / (1 + (shift - 1) * s_k),   timestep_k = 1000 * sigma_k

Every sigma they use is looked up in that table: the entry whose timestep is nearest to the
step's timestep, both when a flow prediction is turned into x0 and when x0 is re-noised for the
next step. So sigma is t / 1000 only up to the table's spacing (about 1.2 timesteps near t=700
with shift 8), which is why we look it up the same way rather than divide.

Self-Forcing also warps its step list through the table (`warp_denoising_step`): step t becomes
the table's timestep at index 1000 - t, i.e. 1000 * shift(t / 1000), and that is the timestep the
model is told.
"""

from __future__ import annotations

from functools import lru_cache

import torch

TRAIN_STEPS = 1000


@lru_cache(maxsize=8)
def timestep_table(shift: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(timesteps, sigmas), float32, 1000 entries from noise to clean, with a 0 appended to both
    (the index warping reads one past the end for t = 0)."""
    s = torch.linspace(1.0, 0.0, TRAIN_STEPS + 1)[:-1]
    sigmas = shift * s / (1 + (shift - 1) * s)
    zero = torch.zeros(1)
    return torch.cat([sigmas * TRAIN_STEPS, zero]), torch.cat([sigmas, zero])


def sigma_at(timesteps: torch.Tensor | float | list[float], shift: float) -> torch.Tensor:
    """The sigma of each timestep: the table entry with the nearest timestep, as float64."""
    table_t, table_sigma = timestep_table(shift)
    t = torch.as_tensor(timesteps, dtype=torch.float64)
    nearest = (table_t[:-1].double()[None, :] - t.reshape(-1, 1)).abs().argmin(dim=1)
    return table_sigma[nearest].double().reshape(t.shape)


def warp_timesteps(steps: list[float] | tuple[float, ...], shift: float) -> list[float]:
    """Self-Forcing's warped step list: step t becomes the table's timestep at index 1000 - t."""
    table_t, _ = timestep_table(shift)
    return [float(table_t[TRAIN_STEPS - int(t)]) for t in steps]
