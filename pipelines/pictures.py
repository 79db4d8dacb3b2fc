"""Pictures between transports (uint8 HWC RGB arrays) and models (float tensors in [-1, 1])."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

MIN_SIDE = 8


def picture_to_tensor(image: np.ndarray, width: int, height: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """uint8 HWC RGB -> (1, 3, height, width) in [-1, 1] on `device`: centre-cropped to the target
    aspect ratio, then resized (antialiased) when the sizes differ. ValueError names a bad input."""
    if not (isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8):
        raise ValueError(f"input frame must be an (H, W, 3) uint8 RGB array, got {getattr(image, 'shape', type(image))}")
    h, w = image.shape[:2]
    if h < MIN_SIDE or w < MIN_SIDE:
        raise ValueError(f"input frame {w}x{h} is too small")
    x = torch.from_numpy(image).to(device).permute(2, 0, 1).unsqueeze(0).float()
    if (h, w) != (height, width):
        crop_h, crop_w = (h, round(h * width / height)) if w * height > h * width else (round(w * height / width), w)
        top, left = (h - crop_h) // 2, (w - crop_w) // 2
        x = F.interpolate(x[..., top : top + crop_h, left : left + crop_w], size=(height, width),
                          mode="bilinear", antialias=True, align_corners=False)
    return (x / 127.5 - 1.0).to(dtype)


def tensor_to_pictures(images: torch.Tensor) -> list[np.ndarray]:
    """(B, 3, H, W) in [-1, 1] -> B arrays (H, W, 3) uint8, with one device-to-host copy."""
    pixels = ((images.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return list(pixels)


def picture_render_params(given: Mapping[str, Any], has_input: bool, size: tuple[int, int] | None) -> dict[str, Any]:
    """An offline render's parameters for a picture pipeline with both modes (`mode`: img2img on
    an input video, txt2img without one) and an output size (`width`, `height`)."""
    params = {**given, "mode": "img2img" if has_input else "txt2img"}
    if size is not None:
        params["width"], params["height"] = size
    return params
