"""Control images from pictures, for every stream of a step at once.

Each preprocessor takes the stream-sized pictures of all the streams that asked for it in this
step and returns one control image per picture, (3, H, W) in [0, 1] (what diffusers'
ControlNets take). `soft_edge` and `input` run as one tensor operation over the whole group;
`canny` runs OpenCV per picture (it has no batched form; it releases the GIL). The
`previous_output` control is the `input` preprocessor applied to the stream's last generated
picture instead of its input (the pipeline picks the picture).

No preprocessor needs weights: the model-based ones that ship inside a package (MediaPipe pose
and selfie segmentation) were not usable here (docs/control.md, "Preprocessors").
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def control_images(kind: str, pictures: torch.Tensor, low: list[int] | None = None, high: list[int] | None = None) -> torch.Tensor:
    """(B, 3, H, W) pictures in [-1, 1] -> (B, 3, H, W) control images in [0, 1]. `low`/`high`:
    canny's thresholds per picture."""
    if kind in ("input", "previous_output"):
        return ((pictures.float() + 1) / 2).clamp(0, 1)
    if kind == "soft_edge":
        return soft_edges(pictures)
    if kind == "canny":
        return canny(pictures, low or [100] * len(pictures), high or [200] * len(pictures))
    raise ValueError(f"unknown preprocessor {kind!r}")


def canny(pictures: torch.Tensor, low: list[int], high: list[int]) -> torch.Tensor:
    gray = _to_uint8(pictures)
    edges = np.stack([cv2.Canny(g, lo, hi) for g, lo, hi in zip(gray, low, high)])
    return torch.from_numpy(edges).to(pictures.device, torch.float32).div_(255).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()


def soft_edges(pictures: torch.Tensor) -> torch.Tensor:
    """Gradient magnitude of the luma (Sobel), each picture scaled to its own maximum: soft edges
    with no thresholds to tune, for softedge/HED-style ControlNets."""
    luma = (0.299 * pictures[:, 0] + 0.587 * pictures[:, 1] + 0.114 * pictures[:, 2]).float().unsqueeze(1)
    kernel_x = _SOBEL_X.to(pictures.device).view(1, 1, 3, 3)
    padded = F.pad(luma, (1, 1, 1, 1), mode="replicate")
    gx = F.conv2d(padded, kernel_x)
    gy = F.conv2d(padded, kernel_x.transpose(2, 3))
    magnitude = (gx.square() + gy.square()).sqrt()
    peak = magnitude.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
    return (magnitude / peak).expand(-1, 3, -1, -1).contiguous()


def _to_uint8(pictures: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W) uint8 luma, what OpenCV's edge detectors take."""
    rgb = ((pictures.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return np.stack([cv2.cvtColor(np.ascontiguousarray(p), cv2.COLOR_RGB2GRAY) for p in rgb])
