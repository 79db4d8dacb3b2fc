"""Motion-aware noise for video-to-video (StreamDiffusionV2's `compute_noise_scale_and_step`).

A stream's first chunk gets the strength as it is. After that, the largest frame-to-frame RMS
difference in a chunk (pictures in [-1, 1], the previous chunk's last picture included) maps to
motion m in [0, 1] (a difference of 0.2 is full motion). More motion injects less noise, so fast
movement is edited conservatively instead of tearing or ghosting; an exponential average keeps
the level from jumping between chunks. Written in upstream's order of operations, so the level
and the timestep truncated from it (`sampler.condition_timestep`) come out the same:
    sigma = (strength - 0.1 * m) * 0.9 + sigma_previous * 0.1
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FULL_MOTION_RMS = 0.2
MOTION_RANGE = 0.1
SMOOTHING = 0.9
PREVIOUS_WEIGHT = 0.1  # 1 - SMOOTHING, written out: 1 - 0.9 is not 0.1 in floating point


@dataclass
class MotionNoiseController:
    sigma: float | None = None
    last_picture: torch.Tensor | None = None

    def next_sigma(self, pictures: torch.Tensor, strength: float, motion_aware: bool) -> float:
        """Noise level for a chunk of pictures (F, 3, H, W) in [-1, 1]."""
        first = self.last_picture is None
        frames = pictures if first else torch.cat([self.last_picture[None], pictures])
        self.last_picture = pictures[-1]
        if first or not motion_aware:
            self.sigma = strength
            return strength
        diffs = (frames[1:].float() - frames[:-1].float()).pow(2).mean(dim=(1, 2, 3)).sqrt()
        motion = float((diffs.max() / FULL_MOTION_RMS).clamp(0, 1))
        previous = strength if self.sigma is None else self.sigma
        self.sigma = (strength - MOTION_RANGE * motion) * SMOOTHING + previous * PREVIOUS_WEIGHT
        return self.sigma
