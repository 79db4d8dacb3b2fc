"""Motion-aware noise for video-to-video (StreamDiffusionV2's noise controller).

The largest frame-to-frame RMS difference in a chunk (pictures in [-1, 1], the previous chunk's
last picture included) maps to motion m in [0, 1] (a difference of 0.2 is full motion). More
motion injects less noise, so fast movement is edited conservatively instead of tearing or
ghosting; an exponential average keeps the level from jumping between chunks:
    sigma = 0.9 * (strength - 0.1 * m) + 0.1 * sigma_previous
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FULL_MOTION_RMS = 0.2
MOTION_RANGE = 0.1
SMOOTHING = 0.9


@dataclass
class MotionNoiseController:
    sigma: float | None = None
    last_picture: torch.Tensor | None = None

    def next_sigma(self, pictures: torch.Tensor, strength: float, motion_aware: bool) -> float:
        """Noise level for a chunk of pictures (F, 3, H, W) in [-1, 1]."""
        frames = pictures if self.last_picture is None else torch.cat([self.last_picture[None], pictures])
        self.last_picture = pictures[-1]
        if not motion_aware:
            self.sigma = strength
            return strength
        diffs = (frames[1:].float() - frames[:-1].float()).pow(2).mean(dim=(1, 2, 3)).sqrt()
        motion = min(1.0, float(diffs.max()) / FULL_MOTION_RMS) if len(diffs) else 0.0
        previous = strength if self.sigma is None else self.sigma
        self.sigma = SMOOTHING * (strength - MOTION_RANGE * motion) + (1 - SMOOTHING) * previous
        return self.sigma
