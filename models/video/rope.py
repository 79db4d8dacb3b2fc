"""3-D rotary position embedding of Wan2.1, computed for arbitrary frame positions.

Each head's channels are split into complex pairs for time, height and width (for head size 128:
22, 21 and 21 pairs), pairs interleaved as (x[0::2], x[1::2]) like Wan and diffusers. Positions
are integers computed on the fly rather than read from a 1024-long table, so a stream that runs
for hours never runs off the end of it (what a position means is the position policy's call).

Rotations compose: rotating an already-rotated key by Δ on the temporal pairs equals rotating
the raw key at position + Δ. The cache relies on that to move stored keys to new positions
(`temporal_cos_sin`, then `apply_rotary`).
"""

from __future__ import annotations

import torch


class Rope3D:
    def __init__(self, head_dim: int, theta: float = 10000.0):
        if head_dim % 2:
            raise ValueError(f"head_dim must be even, got {head_dim}")
        self.head_dim = head_dim
        spatial = 2 * (head_dim // 6)
        self.axis_dims = (head_dim - 2 * spatial, spatial, spatial)
        # Inverse frequencies of each axis, float64 as in diffusers, so positions in the thousands
        # keep their precision; results are cast to float32 at the end.
        self.inv_freq = [
            1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d) for d in self.axis_dims
        ]

    def angles(self, t: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Rotation angles for every token of frames at temporal positions `t` (any shape S):
        (*S, height*width, head_dim/2), tokens in row-major (h, w) order within a frame."""
        t = t.to(torch.float64)
        f_t, f_h, f_w = self.inv_freq
        a_t = t[..., None] * f_t  # (*S, pt)
        a_h = torch.arange(height, dtype=torch.float64)[:, None] * f_h  # (h, ph)
        a_w = torch.arange(width, dtype=torch.float64)[:, None] * f_w  # (w, pw)
        spatial = torch.cat(
            [a_h[:, None, :].expand(height, width, -1), a_w[None, :, :].expand(height, width, -1)], dim=-1
        ).reshape(height * width, -1)
        lead = t.shape
        temporal = a_t[..., None, :].expand(*lead, height * width, a_t.shape[-1])
        return torch.cat([temporal, spatial.expand(*lead, *spatial.shape)], dim=-1)

    def cos_sin(self, t: torch.Tensor, height: int, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of `angles`, float32 on `device`."""
        a = self.angles(t, height, width)
        return a.cos().to(device, torch.float32), a.sin().to(device, torch.float32)

    def temporal_cos_sin(self, delta: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of a temporal shift by `delta` (any shape S) over all pairs: (*S, head_dim/2),
        the spatial pairs get angle 0 (they are left as they are)."""
        a = delta.to(torch.float64)[..., None] * self.inv_freq[0]
        a = torch.cat([a, torch.zeros(*a.shape[:-1], self.head_dim // 2 - a.shape[-1], dtype=torch.float64)], dim=-1)
        return a.cos().to(device, torch.float32), a.sin().to(device, torch.float32)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of the last dimension of `x` by the angles given as cos/sin
    (broadcast against x's shape with the last dimension halved). Computed in float32."""
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)
    return out.type_as(x)
